//! Secrets never reach logs or output: the real binaries run at `RUST_LOG=trace` (controller on an
//! s3s-fs bucket, `lifeboatctl`, an agent that enrolls from a join token, backs up files and a
//! MariaDB database through a password in a defaults file, restores, renews, is revoked), and
//! every stdout, stderr and log file is scanned for: the fleet master key (raw, hex, base64), the
//! join token and its secret, the private keys' PEM bodies (agent, admin, CA, server), the S3
//! secret access key, the MySQL password and the key-escrow passphrase. `--help` texts are
//! scanned too (defaults must not show one). Along the way, `lifeboatctl agent list` must show
//! the revoked agent as revoked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lifeboat_common::join_token::JoinToken;
use lifeboat_integration_tests::Agent;
use lifeboat_integration_tests::mariadb::MariaDb;
use lifeboat_integration_tests::process::{Controller, bin, describe, run};
use lifeboat_integration_tests::s3::{S3Server, SECRET_KEY};
use lifeboat_integration_tests::tree::write_data;

const MYSQL_PASSWORD: &str = "Mysql-Pw-7f3a9c1e5b";
const ESCROW_PASSPHRASE: &str = "correct horse escrow passphrase 4d1c8b";

/// Every output captured so far, labelled by the command that produced it.
#[derive(Default)]
struct Transcript(Vec<(String, Vec<u8>)>);

impl Transcript {
    /// Runs `cmd` at trace level, records its stdout and stderr, returns its output.
    fn run(&mut self, label: &str, cmd: &mut Command) -> Output {
        let out = run(cmd.env("RUST_LOG", "trace"));
        self.0
            .push((format!("{label} (stdout)"), out.stdout.clone()));
        self.0
            .push((format!("{label} (stderr)"), out.stderr.clone()));
        out
    }

    fn ok(&mut self, label: &str, cmd: &mut Command) -> Output {
        let out = self.run(label, cmd);
        assert!(out.status.success(), "{label}: {}", describe(&out));
        out
    }

    fn file(&mut self, path: &Path) {
        self.0.push((
            path.display().to_string(),
            fs::read(path).unwrap_or_default(),
        ));
    }
}

fn ctl_cmd(ctl: &Controller, args: &[&str]) -> Command {
    let mut c = Command::new(bin("lifeboatctl"));
    c.arg("--config")
        .arg(ctl.dir.join("lifeboatctl.toml"))
        .arg("--address")
        .arg(ctl.url())
        .args(args);
    c
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn base64(b: &[u8], alphabet: &[u8; 64]) -> String {
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | (u32::from(x) << (16 - 8 * i)));
        for i in 0..=c.len() {
            s.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    s
}

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The forms a 32-byte secret could be printed in (base64 without padding matches padded too).
fn encodings(name: &str, secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    vec![
        (format!("{name} (raw)"), secret.to_vec()),
        (format!("{name} (hex)"), hex(secret).into_bytes()),
        (
            format!("{name} (HEX)"),
            hex(secret).to_uppercase().into_bytes(),
        ),
        (format!("{name} (base64)"), base64(secret, STD).into_bytes()),
        (
            format!("{name} (base64url)"),
            base64(secret, URL).into_bytes(),
        ),
    ]
}

/// The base64 lines of a PEM private key (each 64 characters but possibly the last).
fn pem_body(name: &str, path: &Path) -> Vec<(String, Vec<u8>)> {
    let text = fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(!lines.is_empty(), "{} holds no PEM body", path.display());
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("{name} PEM line {i}"), l.as_bytes().to_vec()))
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The scanner's encoders against RFC 4648 vectors, and a planted leak is found.
#[test]
fn the_scanner_finds_every_encoding() {
    let vectors = [
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, b64) in vectors {
        assert_eq!(base64(plain.as_bytes(), STD), b64);
    }
    assert_eq!(base64(&[0xfb, 0xff], URL), "-_8");
    assert_eq!(hex(&[0x00, 0xab]), "00ab");
    let secret = [0xfau8; 32];
    for (name, form) in encodings("k", &secret) {
        let mut log = b"2026-11-26 TRACE key=".to_vec();
        log.extend_from_slice(&form);
        assert!(find(&log, &form), "{name}");
    }
    assert!(!find(b"anything", b""));
}

fn log_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            log_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "log") {
            out.push(p);
        }
    }
}

fn sources(root: &Path, db: &MariaDb, cnf: &Path) -> String {
    format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n\n\
         [[source]]\nname = \"db\"\nkind = \"mysql\"\nsocket = {:?}\ndefaults_file = {:?}\n\
         databases = [\"app\"]\nusers = false\n",
        root.to_str().unwrap(),
        db.socket.to_str().unwrap(),
        cnf.to_str().unwrap(),
    )
}

#[test]
fn secrets_never_reach_logs_or_output_and_revoked_agents_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Transcript::default();
    let s3 = S3Server::start(&tmp.path().join("s3"), "lifeboat");
    let cdir = tmp.path().join("controller");
    t.ok(
        "controller init",
        Command::new(bin("lifeboat-controller"))
            .arg("init")
            .arg("--dir")
            .arg(&cdir),
    );
    s3.configure_controller(&cdir, "dr", "auto");
    let mut ctl = Controller::serve_with_env(&cdir, &[("RUST_LOG", "trace")]);

    let key = tmp.path().join("master.key");
    let pass = tmp.path().join("escrow.pass");
    fs::write(&pass, format!("{ESCROW_PASSPHRASE}\n")).unwrap();
    fs::set_permissions(&pass, fs::Permissions::from_mode(0o600)).unwrap();
    t.ok(
        "key init",
        &mut ctl_cmd(
            &ctl,
            &[
                "key",
                "init",
                "--passphrase-file",
                pass.to_str().unwrap(),
                "--out",
                key.to_str().unwrap(),
            ],
        ),
    );
    let out = t.run(
        "token create",
        &mut ctl_cmd(&ctl, &["token", "create", "--ttl", "10m"]),
    );
    assert!(out.status.success(), "token create: {}", describe(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // The token is that command's intended output: drop it from the scan.
    t.0.retain(|(l, _)| l != "token create (stdout)");
    let secret = JoinToken::decode(&token).expect("token decodes").secret;

    let vm = tmp.path().join("vm");
    t.ok(
        "agent enroll",
        Command::new(bin("lifeboat-agent"))
            .args(["enroll", "--name", "web-01", "--dir"])
            .arg(&vm)
            .env("LIFEBOAT_JOIN_TOKEN", &token),
    );
    let first_key = vm.join("agent.key.first");
    fs::copy(vm.join("agent.key"), &first_key).unwrap();
    // The used token again: refused, and the refusal must not echo it.
    let out = t.run(
        "agent enroll (used token)",
        Command::new(bin("lifeboat-agent"))
            .args(["enroll", "--name", "web-02", "--dir"])
            .arg(tmp.path().join("vm2"))
            .env("LIFEBOAT_JOIN_TOKEN", &token),
    );
    assert!(!out.status.success(), "{}", describe(&out));

    let db = MariaDb::start(&tmp.path().join("db"), true);
    db.sql(&format!(
        "CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY, v TEXT); \
         INSERT INTO app.t VALUES (1, 'one'), (2, 'two'); \
         CREATE USER backup@localhost IDENTIFIED BY '{MYSQL_PASSWORD}'; \
         GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, RELOAD ON *.* TO backup@localhost;"
    ));
    let cnf = tmp.path().join("backup.cnf");
    fs::write(
        &cnf,
        format!("[client]\nuser=backup\npassword={MYSQL_PASSWORD}\n"),
    )
    .unwrap();
    fs::set_permissions(&cnf, fs::Permissions::from_mode(0o600)).unwrap();

    let root = tmp.path().join("www");
    fs::create_dir(&root).unwrap();
    write_data(&root.join("index.html"), 300_000, 3, true);
    fs::copy(&key, vm.join("master.key")).unwrap();
    let agent = Agent {
        name: "web-01".into(),
        dir: vm.clone(),
    };
    agent.write_config(&ctl.url(), &sources(&root, &db, &cnf));
    let restored = tmp.path().join("restored");
    for (label, args) in [
        ("backup web", vec!["backup", "--source", "web"]),
        ("backup db", vec!["backup", "--source", "db"]),
        (
            "restore web",
            vec![
                "restore",
                "--source",
                "web",
                "--to",
                restored.to_str().unwrap(),
            ],
        ),
        ("snapshots", vec!["snapshots", "--source", "web"]),
        ("renew", vec!["renew"]),
        ("backup web after renew", vec!["backup", "--source", "web"]),
    ] {
        t.ok(&format!("agent {label}"), &mut agent.command(&args));
    }
    // A wrong MySQL password fails the backup; the error must not show either password.
    fs::write(&cnf, "[client]\nuser=backup\npassword=Wrong-Pw-0b9d2e\n").unwrap();
    let out = t.run(
        "agent backup db (wrong password)",
        &mut agent.command(&["backup", "--source", "db"]),
    );
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(!find(&out.stderr, b"Wrong-Pw-0b9d2e"), "{}", describe(&out));

    for args in [
        vec!["agent", "list"],
        vec!["snapshots", "list", "--json"],
        vec!["agent", "revoke", "web-01"],
    ] {
        t.ok(&format!("lifeboatctl {args:?}"), &mut ctl_cmd(&ctl, &args));
    }
    let out = t.run(
        "agent backup after revoke",
        &mut agent.command(&["backup", "--source", "web"]),
    );
    assert!(!out.status.success(), "{}", describe(&out));

    // `agent list` shows the revocation (table and JSON).
    let out = t.ok("agent list", &mut ctl_cmd(&ctl, &["agent", "list"]));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("STATE"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("web-01"))
        .expect("row");
    assert!(row.contains("revoked"), "{table}");
    let out = t.ok(
        "agent list --json",
        &mut ctl_cmd(&ctl, &["agent", "list", "--json"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web = &v.as_array().unwrap()[0];
    assert_eq!(web["id"], "web-01", "{v}");
    assert_eq!(web["state"], "revoked", "{v}");
    assert!(web["revoked_at_unix_ms"].as_i64().unwrap() > 0, "{v}");

    // --help texts (defaults included) of every binary and the commands that take secrets.
    for (b, args) in [
        ("lifeboat-agent", vec!["--help"]),
        ("lifeboat-agent", vec!["enroll", "--help"]),
        ("lifeboat-agent", vec!["backup", "--help"]),
        ("lifeboat-controller", vec!["--help"]),
        ("lifeboat-controller", vec!["serve", "--help"]),
        ("lifeboatctl", vec!["--help"]),
        ("lifeboatctl", vec!["token", "create", "--help"]),
        ("lifeboatctl", vec!["key", "init", "--help"]),
    ] {
        t.ok(
            &format!("{b} {args:?}"),
            Command::new(bin(b)).args(&args).current_dir(&vm),
        );
    }

    ctl.stop();
    let mut logs = Vec::new();
    log_files(&cdir, &mut logs);
    log_files(&vm, &mut logs);
    assert!(logs.contains(&cdir.join("controller.log")), "{logs:?}");
    for l in &logs {
        t.file(l);
    }
    let ctl_log = fs::read_to_string(cdir.join("controller.log")).unwrap();
    assert!(
        ctl_log.contains("TRACE") || ctl_log.contains("DEBUG"),
        "the controller did not log at trace level"
    );

    let master: Vec<u8> = fs::read(&key).unwrap();
    assert_eq!(master.len(), 32);
    let mut secrets = encodings("master key", &master);
    secrets.extend(encodings("join token secret", &secret));
    secrets.push(("join token".into(), token.clone().into_bytes()));
    secrets.extend(pem_body("agent key (enrolled)", &first_key));
    secrets.extend(pem_body("agent key (renewed)", &vm.join("agent.key")));
    secrets.extend(pem_body("admin key", &cdir.join("admin.key")));
    secrets.extend(pem_body("CA key", &cdir.join("ca.key")));
    secrets.extend(pem_body("server key", &cdir.join("server.key")));
    secrets.push((
        "S3 secret access key".into(),
        SECRET_KEY.as_bytes().to_vec(),
    ));
    secrets.push(("MySQL password".into(), MYSQL_PASSWORD.as_bytes().to_vec()));
    secrets.push((
        "escrow passphrase".into(),
        ESCROW_PASSPHRASE.as_bytes().to_vec(),
    ));

    let total: usize = t.0.iter().map(|(_, b)| b.len()).sum();
    assert!(total > 10_000, "too little output captured ({total} bytes)");
    let mut leaks = Vec::new();
    for (label, text) in &t.0 {
        for (name, s) in &secrets {
            if find(text, s) {
                leaks.push(format!("{name} found in {label}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}
