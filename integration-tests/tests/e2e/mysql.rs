//! MySQL/MariaDB sources end to end against a private MariaDB: failed dumps are failed backups,
//! a 110,000-row database restores with identical counts and checksums (`--as`,
//! `--drop-existing`, a failed verification that leaves the existing database untouched), users
//! and grants come back, and a ~1% change uploads a small fraction of the dump.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;

use lifeboat_integration_tests::mariadb::MariaDb;
use lifeboat_integration_tests::process::{describe, master_key, parse_json};
use lifeboat_integration_tests::{Agent, Controller};

struct Setup {
    tmp: tempfile::TempDir,
    ctl: Controller,
    db: MariaDb,
    agent: Agent,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let ctl = Controller::start(&tmp.path().join("controller"));
        let key = tmp.path().join("fleet-master.key");
        master_key(&ctl, &key);
        let db = MariaDb::start(&tmp.path().join("db"), true);
        let agent = Agent::enroll(&ctl, &tmp.path().join("agent"), "db-01", None, &key, "");
        let s = Setup {
            tmp,
            ctl,
            db,
            agent,
        };
        s.configure(extra);
        s
    }

    /// Rewrites the agent's config with one mysql source "db" plus `extra` lines.
    fn configure(&self, extra: &str) {
        let src = format!(
            "[[source]]\nname = \"db\"\nkind = \"mysql\"\nsocket = \"{}\"\nuser = \"root\"\n{extra}\n",
            self.db.socket.display()
        );
        self.agent.write_config(&self.ctl.url(), &src);
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn snapshots(&self) -> Vec<serde_json::Value> {
        let v = self
            .ctl
            .ctl_json(&["snapshots", "list", "--agent", "db-01", "--json"]);
        v.as_array().unwrap().clone()
    }

    fn latest_ok(&self) -> String {
        self.snapshots()
            .iter()
            .rev()
            .find(|s| s["status"] == "ok")
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    fn restore(&self, extra: &[&str]) -> Output {
        let mut args = vec!["restore", "--source", "db", "--json"];
        args.extend_from_slice(extra);
        self.agent.run(&args)
    }
}

fn checksum(db: &MariaDb, table: &str) -> String {
    db.sql(&format!("CHECKSUM TABLE {table}"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

fn count(db: &MariaDb, table: &str) -> u64 {
    db.sql(&format!("SELECT COUNT(*) FROM {table}"))
        .trim()
        .parse()
        .unwrap()
}

/// Each broken dump is a failed backup: exit 1, a readable reason, reported to the controller
/// (`snapshots list` shows it), and `latest` still the previous good snapshot.
#[test]
fn failed_dumps_are_failed_backups() {
    let s = Setup::new("databases = [\"app\"]\nusers = false");
    s.db.sql(
        "CREATE DATABASE app; USE app; CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(200)); \
         INSERT INTO app.t SELECT seq, REPEAT(MD5(seq), 6) FROM seq_1_to_200000; CREATE TABLE app.other (id INT);",
    );
    s.agent.backup("db");
    let good = s.latest_ok();
    assert!(!good.is_empty());

    let cnf = s.tmp.path().join("backup.cnf");
    fs::write(&cnf, "[client]\nuser=backup\npassword=wrong-password\n").unwrap();
    fs::set_permissions(&cnf, fs::Permissions::from_mode(0o600)).unwrap();
    s.db.sql("CREATE USER backup@localhost IDENTIFIED BY 'right-password'; GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, RELOAD ON *.* TO backup@localhost;");
    let no_trailer = s.script(
        "no-trailer.sh",
        "set -o pipefail\nmariadb-dump \"$@\" | grep -v '^-- Dump completed'",
    );
    let empty = s.script("empty.sh", "exit 0");
    let killed = s.script(
        "killed.sh",
        "mariadb-dump \"$@\" | head -c 100000\nkill -9 $$",
    );
    let only_t = s.script(
        "only-t.sh",
        "set -o pipefail\nmariadb-dump \"$@\" | sed 's/^CREATE TABLE `other`/CREATE TABLE `renamed`/'",
    );
    let pid = s.db.dir.join("mariadb.pid");
    let server_killed = s.script(
        "server-killed.sh",
        &format!(
            "set -o pipefail\nmariadb-dump \"$@\" | {{ head -c 300000; kill -9 $(cat {}); cat; }}",
            pid.display()
        ),
    );
    let socket_line = format!("socket = \"{}\"", s.db.socket.display());
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "databases = [\"app\"]\nusers = false\ndefaults_file = \"{}\"",
                cnf.display()
            ),
            "Access denied",
        ),
        (
            format!(
                "databases = [\"app\"]\nusers = false\ndump_command = \"{}\"",
                no_trailer.display()
            ),
            "trailer",
        ),
        (
            format!(
                "databases = [\"app\"]\nusers = false\ndump_command = \"{}\"",
                empty.display()
            ),
            "output is empty",
        ),
        (
            format!(
                "databases = [\"app\"]\nusers = false\ndump_command = \"{}\"",
                killed.display()
            ),
            "killed by signal 9",
        ),
        (
            format!(
                "databases = [\"app\"]\nusers = false\ndump_command = \"{}\"",
                only_t.display()
            ),
            "lacks 1 of the 2 tables the server lists: other",
        ),
        (
            format!(
                "databases = [\"app\"]\nusers = false\ndump_command = \"{}\"",
                server_killed.display()
            ),
            "failed (exit code",
        ),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        // The defaults-file case connects as `backup` through the file, not as root.
        let extra = if extra.contains("defaults_file") {
            let src =
                format!("[[source]]\nname = \"db\"\nkind = \"mysql\"\n{socket_line}\n{extra}\n");
            s.agent.write_config(&s.ctl.url(), &src);
            None
        } else {
            Some(extra)
        };
        if let Some(e) = extra {
            s.configure(e);
        }
        let out = s.agent.run(&["backup", "--source", "db"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "case {want}: {}",
            describe(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want) && err.contains("nothing was committed"),
            "case {want}: {}",
            describe(&out)
        );
        assert_eq!(s.latest_ok(), good, "latest must not move (case {want})");
        let failures: Vec<_> = s
            .snapshots()
            .into_iter()
            .filter(|x| x["status"] == "failed")
            .collect();
        assert_eq!(failures.len(), i + 1, "case {want}");
        assert!(
            failures[i]["reason"].as_str().unwrap().contains(want),
            "{}",
            failures[i]
        );
    }
    let table = s.ctl.ctl(&["snapshots", "list", "--agent", "db-01"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("FAILED") && text.contains("trailer"),
        "{text}"
    );
}

fn create_shop(db: &MariaDb) {
    db.sql(
        "CREATE DATABASE shop CHARACTER SET utf8mb4; USE shop; \
         CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100), note TEXT NULL) CHARACTER SET utf8mb4; \
         CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT, amount DECIMAL(12,2), data BLOB NULL); \
         CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(200)); \
         INSERT INTO customers SELECT seq, CONCAT('名前 ', seq, ' é ''quoted'' (x); \\\\ '), IF(seq % 7 = 0, NULL, REPEAT(CONCAT('note ', seq, ' '), seq % 40)) FROM seq_1_to_60000; \
         INSERT INTO orders SELECT seq, seq % 60000 + 1, seq * 1.5, IF(seq % 5 = 0, NULL, UNHEX(SHA2(seq, 256))) FROM seq_1_to_50000; \
         CREATE VIEW big_orders AS SELECT id, amount FROM orders WHERE amount > 1000; \
         CREATE TRIGGER customers_audit AFTER INSERT ON customers FOR EACH ROW INSERT INTO audit (msg) VALUES (CONCAT('new customer ', NEW.id)); \
         CREATE PROCEDURE count_orders() SELECT COUNT(*) FROM orders; \
         CREATE EVENT purge_audit ON SCHEDULE EVERY 1 DAY DO DELETE FROM audit WHERE id < 0; \
         INSERT INTO customers VALUES (60001, 'triggered', NULL);",
    );
}

const TABLES: [&str; 3] = ["customers", "orders", "audit"];

fn fingerprint(db: &MariaDb, schema: &str) -> Vec<(u64, String)> {
    TABLES
        .iter()
        .map(|t| {
            let q = format!("{schema}.{t}");
            (count(db, &q), checksum(db, &q))
        })
        .collect()
}

/// 110,000 rows with BLOBs, NULLs, unicode, a view, a trigger, a procedure and an event:
/// restored with `--as`, then over a modified copy with `--drop-existing`; a restore that fails
/// verification leaves the existing database untouched. Then a ~1% change uploads a fraction.
#[test]
fn large_database_restores_verified_and_small_changes_upload_little() {
    let s = Setup::new("databases = [\"shop\"]\nverify = \"checksums\"\nusers = false");
    create_shop(&s.db);
    let original = fingerprint(&s.db, "shop");
    assert!(original.iter().map(|(n, _)| n).sum::<u64>() >= 110_000);
    let first = s.agent.backup("db");
    assert_eq!(first["databases"][0]["tables"], 3, "{first}");

    // --as: a new database beside the original, identical counts and checksums.
    let out = s.restore(&["--database", "shop", "--as", "shop_copy"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(fingerprint(&s.db, "shop_copy"), original);
    assert_eq!(
        s.db.sql("SELECT COUNT(*) FROM shop_copy.big_orders").trim(),
        s.db.sql("SELECT COUNT(*) FROM shop.big_orders").trim()
    );
    assert!(
        s.db.sql("SHOW PROCEDURE STATUS WHERE Db = 'shop_copy'")
            .contains("count_orders")
    );
    assert!(
        s.db.sql("SHOW TRIGGERS FROM shop_copy")
            .contains("customers_audit")
    );
    assert!(
        s.db.sql("SHOW EVENTS FROM shop_copy")
            .contains("purge_audit")
    );

    // Without --drop-existing an existing database is refused.
    let out = s.restore(&["--database", "shop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--drop-existing"),
        "{}",
        describe(&out)
    );

    // A restore that fails verification (the client loses the orders rows) leaves shop untouched.
    s.db.sql("DELETE FROM shop.orders WHERE id % 10 = 0; UPDATE shop.customers SET name = 'changed' WHERE id < 100;");
    let modified = fingerprint(&s.db, "shop");
    assert_ne!(modified, original);
    let lossy = s.script(
        "lossy-client.sh",
        "sed '/^INSERT INTO `orders`/,/;$/d' | mariadb \"$@\"",
    );
    s.configure(&format!(
        "databases = [\"shop\"]\nverify = \"checksums\"\nusers = false\nclient_command = \"{}\"",
        lossy.display()
    ));
    let out = s.restore(&["--database", "shop", "--drop-existing"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("table orders has 0 rows") && err.contains("not touched"),
        "{err}"
    );
    assert_eq!(
        fingerprint(&s.db, "shop"),
        modified,
        "existing database must be untouched"
    );
    assert!(
        !s.db.sql("SHOW DATABASES").contains("lbtmp"),
        "temporary database dropped"
    );

    // --drop-existing over the modified copy brings back the snapshot exactly.
    s.configure("databases = [\"shop\"]\nverify = \"checksums\"\nusers = false");
    let out = s.restore(&["--database", "shop", "--drop-existing"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(parse_json(&out)["databases"][0]["replaced"], true);
    assert_eq!(fingerprint(&s.db, "shop"), original);

    // ~1% of rows changed (a contiguous range per table, as recent rows are updated, plus a few
    // scattered rows): the next backup uploads a small fraction of the dump.
    s.db.sql("UPDATE shop.customers SET note = CONCAT('edited ', id) WHERE id BETWEEN 30000 AND 30600 OR id % 5000 = 11; \
              UPDATE shop.orders SET amount = amount + 1 WHERE id BETWEEN 20000 AND 20500 OR id % 5000 = 13;");
    let second = s.agent.backup("db");
    let (up1, up2) = (
        first["uploaded_bytes"].as_u64().unwrap(),
        second["uploaded_bytes"].as_u64().unwrap(),
    );
    let fraction = up2 as f64 / up1 as f64;
    eprintln!(
        "1% change: first backup uploaded {up1} bytes, second {up2} bytes ({:.1}%); dump {} bytes",
        fraction * 100.0,
        second["logical_bytes"]
    );
    assert!(
        fraction < 0.15,
        "second backup uploaded {:.1}% of the first",
        fraction * 100.0
    );
}

/// Users dropped after the backup come back with their grants and password; users the backup
/// does not know are reported and left alone. A replacement agent restores with a grant only.
#[test]
fn users_and_grants_come_back_and_unknown_users_are_reported() {
    let s = Setup::new("databases = [\"app\"]");
    s.db.sql(
        "CREATE DATABASE app; CREATE TABLE app.t (id INT); INSERT INTO app.t VALUES (1); \
         CREATE USER app@localhost IDENTIFIED BY 'app-secret'; GRANT SELECT, INSERT ON app.* TO app@localhost;",
    );
    s.agent.backup("db");
    s.db.sql("DROP USER app@localhost; CREATE USER intruder@localhost IDENTIFIED BY 'x';");
    let out = s.restore(&["--users-only"]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = parse_json(&out);
    assert_eq!(r["users_restored"], true);
    let unknown: Vec<&str> = r["users_not_in_backup"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(unknown, vec!["'intruder'@'localhost'"], "{r}");
    assert!(
        s.db.sql("SELECT User FROM mysql.user").contains("intruder"),
        "never removed"
    );
    let grants = s.db.sql("SHOW GRANTS FOR app@localhost");
    assert!(grants.contains("SELECT, INSERT ON `app`.*"), "{grants}");
    // The password works again.
    let out = lifeboat_integration_tests::run(
        std::process::Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", s.db.socket.display()))
            .args([
                "--user=app",
                "--password=app-secret",
                "-N",
                "-e",
                "SELECT COUNT(*) FROM app.t",
            ]),
    );
    assert!(out.status.success(), "{}", describe(&out));
}

/// A replacement VM restores a lost VM's database only once an operator allows it.
#[test]
fn replacement_agent_restores_with_a_grant_only() {
    let s = Setup::new("databases = [\"app\"]\nusers = false");
    s.db.sql("CREATE DATABASE app; CREATE TABLE app.t (id INT); INSERT INTO app.t VALUES (1),(2);");
    s.agent.backup("db");
    let key = s.tmp.path().join("fleet-master.key");
    let new = Agent::enroll(&s.ctl, &s.tmp.path().join("new"), "db-02", None, &key, "");
    new.write_config(
        &s.ctl.url(),
        &format!(
            "[[source]]\nname = \"db\"\nkind = \"mysql\"\nsocket = \"{}\"\nuser = \"root\"\nusers = false\n",
            s.db.socket.display()
        ),
    );
    let args = [
        "restore",
        "--source",
        "db",
        "--from-agent",
        "db-01",
        "--as",
        "app_new",
        "--json",
    ];
    let out = new.run(&args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allow-restore"),
        "{}",
        describe(&out)
    );
    let out = s
        .ctl
        .ctl(&["agent", "allow-restore", "db-02", "--from", "db-01"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = new.run(&args);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(count(&s.db, "app_new.t"), 2);
    // The grant is one way: the old agent still cannot read the new one's snapshots.
    let out = s.agent.run(&[
        "restore",
        "--source",
        "db",
        "--from-agent",
        "db-02",
        "--as",
        "x",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not read"),
        "{}",
        describe(&out)
    );
}
