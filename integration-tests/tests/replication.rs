//! Replication to a secondary store (issue 5, first half), with two local directories as the two
//! regions: catch-up, restore with the primary gone, a damaged primary served from the
//! secondary, a queue that survives a controller restart, a secondary that is the primary
//! refused, `/metrics` agreeing with `lifeboatctl replication status --json`, and an
//! S3-compatible (s3s-fs) secondary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lifeboat_common::exit;
use lifeboat_integration_tests::process::{bin, describe, master_key, parse_json, run};
use lifeboat_integration_tests::s3::S3Server;
use lifeboat_integration_tests::tree::{assert_same_tree, restored_root, walk, write_data};
use lifeboat_integration_tests::{Agent, Controller};

/// How long replication may take to catch up on loopback before a test fails.
const CATCH_UP: Duration = Duration::from_secs(60);

struct Fleet {
    tmp: tempfile::TempDir,
    ctl: Controller,
    key: PathBuf,
}

fn init_with_secondary(dir: &Path, secondary: &str) {
    let out = run(Command::new(bin("lifeboat-controller"))
        .arg("init")
        .arg("--dir")
        .arg(dir));
    assert!(out.status.success(), "init: {}", describe(&out));
    let cfg = dir.join("controller.toml");
    let mut text = fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[secondary]\nkind = \"local\"\npath = {secondary:?}\n"
    ));
    fs::write(&cfg, text).unwrap();
}

impl Fleet {
    fn new(env: &[(&str, &str)]) -> Fleet {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("controller");
        let secondary = tmp.path().join("region-2");
        init_with_secondary(&dir, secondary.to_str().unwrap());
        let ctl = Controller::serve_with_env(&dir, env);
        let key = tmp.path().join("fleet-master.key");
        master_key(&ctl, &key);
        Fleet { tmp, ctl, key }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn primary(&self) -> PathBuf {
        self.ctl.dir.join("objects")
    }

    fn secondary(&self) -> PathBuf {
        self.path("region-2")
    }

    fn agent(&self, name: &str, root: &Path) -> Agent {
        let sources = format!(
            "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
            root.to_str().unwrap()
        );
        Agent::enroll(&self.ctl, &self.path(name), name, None, &self.key, &sources)
    }

    fn status(&self) -> serde_json::Value {
        self.ctl.ctl_json(&["replication", "status", "--json"])
    }

    /// `replication status --wait CONDITION`: the controller answers once the condition holds
    /// (re-checked after each copy attempt of its worker), or fails after [`CATCH_UP`].
    fn wait_for(&self, condition: &str) -> serde_json::Value {
        let timeout = format!("{}s", CATCH_UP.as_secs());
        let out = self.ctl.ctl(&[
            "replication",
            "status",
            "--json",
            "--wait",
            condition,
            "--timeout",
            &timeout,
        ]);
        assert!(
            out.status.success(),
            "replication never reached {condition}: {}\n{}",
            describe(&out),
            self.ctl.log()
        );
        parse_json(&out)
    }

    /// Waits until nothing is pending.
    fn wait_caught_up(&self) -> serde_json::Value {
        let s = self.wait_for("caught-up");
        assert_eq!(s["pending_objects"], 0, "{s}");
        s
    }
}

/// Every object of the primary (packs, refs, snapshot records) is in the secondary with the
/// same bytes.
fn assert_replicated(primary: &Path, secondary: &Path) -> usize {
    assert_replicated_except(primary, secondary, &[])
}

/// Like [`assert_replicated`], skipping `orphans` (objects a crash left before the catalog
/// recorded them: no snapshot needs them, so they are never queued).
fn assert_replicated_except(primary: &Path, secondary: &Path, orphans: &[String]) -> usize {
    let mut n = 0;
    for prefix in ["packs", "refs", "snapshots"] {
        for (rel, m) in walk(&primary.join(prefix)) {
            let key = format!("{prefix}/{}", rel.display());
            // `name#N`: the local store's staging file of a put a crash interrupted.
            if !m.is_file() || orphans.contains(&key) || key.contains('#') {
                continue;
            }
            let a = fs::read(primary.join(prefix).join(&rel)).unwrap();
            let b = fs::read(secondary.join(prefix).join(&rel))
                .unwrap_or_else(|e| panic!("{prefix}/{} not in the secondary: {e}", rel.display()));
            assert!(
                a == b,
                "{prefix}/{} differs in the secondary",
                rel.display()
            );
            n += 1;
        }
    }
    n
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The key test: backups are replicated (status 0 pending, every object identical in the
/// secondary, snapshots flagged replicated, /metrics agreeing), and a restore works after the
/// primary directory is deleted entirely.
#[test]
fn replication_catches_up_and_restore_survives_primary_loss() {
    let f = Fleet::new(&[]);
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("index.html"), 5_000, 1, true);
    write_data(&www.join("big.bin"), 5 << 20, 2, false);
    let agent = f.agent("web-01", &www);
    agent.backup("web");
    write_data(&www.join("new.txt"), 70_000, 3, true);
    agent.backup("web");

    let s = f.wait_caught_up();
    assert_eq!(s["configured"], true, "{s}");
    assert_eq!(s["pending_bytes"], 0, "{s}");
    assert_eq!(s["lag_seconds"], 0.0, "{s}");
    assert!(s["last_error"].is_null(), "{s}");
    let newest = &s["newest_replicated"][0];
    assert_eq!(newest["agent"], "web-01", "{s}");
    let objects = assert_replicated(&f.primary(), &f.secondary());
    assert!(objects >= 4, "packs, refs and two records: {objects}");
    assert!(
        s["replicated_objects"].as_u64().unwrap() >= objects as u64,
        "{s}"
    );

    let list = f.ctl.ctl_json(&["snapshots", "list", "--json"]);
    let snaps = list.as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{list}");
    assert!(snaps.iter().all(|j| j["replicated"] == true), "{list}");
    assert_eq!(newest["snapshot"], snaps[1]["id"], "{s} vs {list}");
    let id = snaps[1]["id"].as_str().unwrap();
    let shown = f.ctl.ctl_json(&["snapshots", "show", id, "--json"]);
    assert_eq!(shown["replicated"], true, "{shown}");

    let m = scrape(f.ctl.metrics.expect("METRICS line"));
    assert_eq!(metric(&m, "lifeboat_replication_pending_objects"), 0.0);
    assert_eq!(metric(&m, "lifeboat_replication_pending_bytes"), 0.0);
    assert_eq!(metric(&m, "lifeboat_replication_lag_seconds"), 0.0);
    assert_eq!(
        metric(&m, "lifeboat_replication_replicated_objects"),
        s["replicated_objects"].as_f64().unwrap()
    );

    // The primary region is gone.
    fs::remove_dir_all(f.primary()).unwrap();
    let to = f.path("restored");
    agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
    assert!(
        f.ctl.log().contains("served from the secondary"),
        "the fallback is logged: {}",
        f.ctl.log()
    );
}

/// A flipped byte in a primary pack: the restore is served from the secondary, the damage is
/// logged with the key, and the primary's pack is repaired from the secondary.
#[test]
fn damaged_primary_is_served_from_secondary_and_repaired() {
    let f = Fleet::new(&[]);
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("victim.bin"), 6 << 20, 2, false);
    let agent = f.agent("web-01", &www);
    agent.backup("web");
    f.wait_caught_up();

    let (rel, _) = walk(&f.primary().join("packs"))
        .into_iter()
        .filter(|(_, m)| m.is_file())
        .max_by_key(|(_, m)| m.len())
        .expect("a pack");
    let pack = f.primary().join("packs").join(&rel);
    let good = fs::read(&pack).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 3] ^= 0x01;
    fs::write(&pack, &bad).unwrap();

    let to = f.path("restored");
    agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
    let key = format!("packs/{}", rel.display());
    assert!(
        f.ctl
            .log()
            .lines()
            .any(|l| l.contains("served from the secondary") && l.contains(&key)),
        "the damage is reported with the key {key}: {}",
        f.ctl.log()
    );
    // The repair was queued by the read itself; once the queue is empty it has been copied.
    f.wait_caught_up();
    assert!(
        fs::read(&pack).unwrap() == good,
        "primary pack not repaired"
    );
}

/// Copies fail (a failpoint stands for an unreachable secondary): backups still succeed, the lag
/// and the last error are reported. The controller is SIGKILLed and restarted without the
/// failpoint: the queue survived and replication catches up with nothing missing.
#[test]
fn queue_survives_a_controller_restart() {
    let mut f = Fleet::new(&[("LIFEBOAT_FAILPOINTS", "replication.before_copy=error")]);
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("a.bin"), 3 << 20, 4, false);
    let agent = f.agent("web-01", &www);
    agent.backup("web");
    write_data(&www.join("b.txt"), 20_000, 5, true);
    agent.backup("web");

    let stuck = f.wait_for("error");
    assert!(
        stuck["last_error"].is_object(),
        "no copy error reported: {stuck}"
    );
    // While every copy fails, waiting to catch up ends at its timeout with a clear failure.
    let out = f.ctl.ctl(&[
        "replication",
        "status",
        "--wait",
        "caught-up",
        "--timeout",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not met after 1000 ms"), "{}", describe(&out));
    assert!(stuck["pending_objects"].as_u64().unwrap() >= 4, "{stuck}");
    assert!(
        stuck["pending_bytes"].as_u64().unwrap() > 3 << 20,
        "{stuck}"
    );
    assert!(
        stuck["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("replication.before_copy"),
        "{stuck}"
    );
    assert!(stuck["newest_replicated"].as_array().unwrap().is_empty());
    let m = scrape(f.ctl.metrics.expect("METRICS line"));
    assert_eq!(
        metric(&m, "lifeboat_replication_pending_objects"),
        stuck["pending_objects"].as_f64().unwrap(),
        "/metrics and status agree"
    );
    assert!(metric(&m, "lifeboat_replication_lag_seconds") > 0.0, "{m}");
    let list = f.ctl.ctl_json(&["snapshots", "list", "--json"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|j| j["replicated"] == false),
        "{list}"
    );

    f.ctl.kill();
    let dir = f.ctl.dir.clone();
    f.ctl = Controller::serve(&dir);
    let s = f.wait_caught_up();
    assert!(s["last_error"].is_null(), "{s}");
    assert_replicated(&f.primary(), &f.secondary());
    let list = f.ctl.ctl_json(&["snapshots", "list", "--json"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|j| j["replicated"] == true),
        "{list}"
    );
}

/// A secondary that is the primary under another name (a symlink to the same directory) is
/// refused at start-up, naming both and what to do; nothing is served.
#[test]
fn secondary_that_is_the_primary_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("controller");
    let alias = tmp.path().join("alias");
    init_with_secondary(&dir, alias.to_str().unwrap());
    std::os::unix::fs::symlink(dir.join("objects"), &alias).unwrap();
    let out = run(Command::new(bin("lifeboat-controller"))
        .arg("serve")
        .arg("--config")
        .arg(dir.join("controller.toml"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]));
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "nothing served: {}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is the primary store") && err.contains("[secondary]"),
        "{err}"
    );
}

/// The controller aborts (a crash) the first time the worker is about to copy an object; after a
/// restart the queue rows written before the crash are still there, the backup is re-run, and
/// replication completes with every object identical and every snapshot flagged replicated.
#[test]
fn crash_before_first_copy_then_catch_up() {
    let mut f = Fleet::new(&[("LIFEBOAT_FAILPOINTS", "replication.before_copy=1:abort")]);
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("a.bin"), 3 << 20, 6, false);
    let agent = f.agent("web-01", &www);
    // The backup may or may not finish before the worker's first copy aborts the controller.
    let first = agent.run(&["backup", "--source", "web", "--json"]);
    let status = f.ctl.wait_exit().expect("controller exit status");
    assert!(!status.success(), "the failpoint aborts the controller");
    assert!(
        f.ctl.log().contains("replication.before_copy hit 1: abort"),
        "{}",
        f.ctl.log()
    );
    let dir = f.ctl.dir.clone();
    f.ctl = Controller::serve(&dir);
    agent.write_config(
        &f.ctl.url(),
        &format!(
            "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
            www.to_str().unwrap()
        ),
    );
    agent.backup("web");
    let s = f.wait_caught_up();
    assert!(s["last_error"].is_null(), "{s}");
    let orphans: Vec<String> = f.ctl.ctl_json(&["storage", "orphans", "--json"])["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_owned())
        .collect();
    assert_replicated_except(&f.primary(), &f.secondary(), &orphans);
    let list = f.ctl.ctl_json(&["snapshots", "list", "--json"]);
    let snaps = list.as_array().unwrap();
    // A failed first backup may still have committed (the crash can lose only the answer).
    let expected = if first.status.success() { 2..=2 } else { 1..=2 };
    assert!(expected.contains(&snaps.len()), "{list}");
    assert!(snaps.iter().all(|j| j["replicated"] == true), "{list}");
}

/// The secondary is an S3-compatible bucket (in-process s3s-fs) while the primary is a local
/// directory: replication catches up, every object is in the bucket with the same bytes, and a
/// restore works with the primary directory deleted.
#[test]
fn s3_secondary_catches_up_and_serves_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), "dr-bucket");
    let dir = tmp.path().join("controller");
    let out = run(Command::new(bin("lifeboat-controller"))
        .arg("init")
        .arg("--dir")
        .arg(&dir));
    assert!(out.status.success(), "init: {}", describe(&out));
    let cfg = dir.join("controller.toml");
    let mut text = fs::read_to_string(&cfg).unwrap();
    text.push('\n');
    text.push_str(
        &server
            .store_toml("region-2", "auto")
            .replace("[store]", "[secondary]"),
    );
    fs::write(&cfg, text).unwrap();
    server.write_credentials(&dir.join("s3.credentials"));
    let ctl = Controller::serve(&dir);
    let key = tmp.path().join("fleet-master.key");
    master_key(&ctl, &key);
    let f = Fleet {
        tmp,
        ctl,
        key: key.clone(),
    };
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("big.bin"), 4 << 20, 7, false);
    write_data(&www.join("page.html"), 9_000, 8, true);
    let agent = f.agent("web-01", &www);
    agent.backup("web");
    let s = f.wait_caught_up();
    assert!(
        s["secondary"].as_str().unwrap().contains("dr-bucket"),
        "{s}"
    );
    let objects = assert_replicated(&f.primary(), &server.object_path("region-2"));
    assert!(objects >= 3, "{objects}");
    assert!(server.object_path("region-2/registry/role").is_file());

    fs::remove_dir_all(f.primary()).unwrap();
    let to = f.path("restored");
    agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
}

/// The secondary is unavailable (its directory replaced by a file, so every write fails) during
/// several backups: backups keep succeeding, pending objects grow and the lag and the error are
/// reported; once the secondary is back it catches up with nothing missing.
#[test]
fn secondary_outage_grows_lag_then_catches_up() {
    let f = Fleet::new(&[]);
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("a.bin"), 1 << 20, 9, false);
    let agent = f.agent("web-01", &www);
    agent.backup("web");
    f.wait_caught_up();

    let away = f.path("region-2.away");
    fs::rename(f.secondary(), &away).unwrap();
    fs::write(f.secondary(), b"the secondary region is down").unwrap();
    let mut pending = Vec::new();
    for i in 0..3u64 {
        write_data(&www.join(format!("new-{i}.bin")), 300_000, 10 + i, false);
        agent.backup("web");
        pending.push(f.status()["pending_objects"].as_u64().unwrap());
    }
    assert!(
        pending.windows(2).all(|w| w[0] < w[1]),
        "pending grows with each backup: {pending:?}"
    );
    let down = f.wait_for("error");
    assert!(down["last_error"].is_object(), "no error reported: {down}");
    assert!(down["lag_seconds"].as_f64().unwrap() > 0.0, "{down}");
    let list = f.ctl.ctl_json(&["snapshots", "list", "--json"]);
    let flags: Vec<bool> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["replicated"].as_bool().unwrap())
        .collect();
    assert_eq!(flags, [true, false, false, false], "{list}");

    fs::remove_file(f.secondary()).unwrap();
    fs::rename(&away, f.secondary()).unwrap();
    let s = f.wait_caught_up();
    assert!(s["last_error"].is_null(), "{s}");
    assert_replicated(&f.primary(), &f.secondary());
    let newest = f.ctl.ctl_json(&["snapshots", "list", "--json"]);
    assert!(
        newest
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["replicated"] == true),
        "{newest}"
    );
}
