//! Replication to a secondary store (issue 5, first half), with two local directories as the two
//! regions: catch-up, restore with the primary gone, a damaged primary served from the
//! secondary, a queue that survives a controller restart, a secondary that is the primary
//! refused, `/metrics` agreeing with `lifeboatctl replication status --json`, and an
//! S3-compatible (s3s-fs) secondary. Second half: restores report which region served them and
//! `--region` forces one; a damaged secondary object is found by `replication scrub` and
//! re-copied; delayed deletes are listed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lifeboat_common::exit;
use lifeboat_integration_tests::process::{bin, describe, master_key, metric, parse_json, run};
use lifeboat_integration_tests::regions;
use lifeboat_integration_tests::s3::S3Server;
use lifeboat_integration_tests::tree::{assert_same_tree, restored_root, walk, write_data};
use lifeboat_integration_tests::{Agent, Controller};

struct Fleet {
    tmp: tempfile::TempDir,
    ctl: Controller,
    key: PathBuf,
}

fn init_with_secondary(dir: &Path, secondary: &str) {
    regions::init(dir);
    regions::local_secondary(dir, Path::new(secondary));
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

    fn wait_for(&self, condition: &str) -> serde_json::Value {
        self.ctl.wait_replication(condition)
    }

    /// Waits until nothing is pending.
    fn wait_caught_up(&self) -> serde_json::Value {
        self.ctl.wait_caught_up()
    }

    /// A small site (a 3 MiB binary and a page) backed up by agent web-01 and replicated.
    fn replicated_site(&self, seed: u64) -> (PathBuf, Agent) {
        let www = self.path("www");
        fs::create_dir(&www).unwrap();
        write_data(&www.join("data.bin"), 3 << 20, seed, false);
        write_data(&www.join("index.html"), 4_000, seed + 1, true);
        let agent = self.agent("web-01", &www);
        agent.backup("web");
        self.wait_caught_up();
        (www, agent)
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

    let m = f.ctl.scrape_metrics();
    assert_eq!(metric(&m, "lifeboat_replication_pending_objects"), 0.0);
    assert_eq!(metric(&m, "lifeboat_replication_pending_bytes"), 0.0);
    assert_eq!(metric(&m, "lifeboat_replication_lag_seconds"), 0.0);
    assert_eq!(
        metric(&m, "lifeboat_replication_replicated_objects"),
        s["replicated_objects"].as_f64().unwrap()
    );

    // The primary region is gone. (Only one restore here: its reads queue repairs that put the
    // objects back into the primary, so a second restore would find them there.)
    fs::remove_dir_all(f.primary()).unwrap();
    let to = f.path("restored");
    let out = agent.run(&["restore", "--source", "web", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_same_tree(&www, &restored_root(&to, &www));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| {
            l.contains("chunks served from the secondary region (the primary failed for them")
        })
        .unwrap_or_else(|| panic!("the restore says the secondary served it: {text}"));
    // Repairs queued by the first failed reads may put a pack back into the primary before the
    // restore reads its other chunks, so "some of all" is what is certain.
    let counts: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .take(2)
        .collect();
    assert!(
        counts.len() == 2 && counts[0] > 0 && counts[0] <= counts[1],
        "the secondary served chunks: {line}"
    );
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
    let r = agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
    let from_secondary = r["chunks_from_secondary"].as_u64().unwrap();
    assert!(
        from_secondary >= 1 && from_secondary < r["chunks_read"].as_u64().unwrap(),
        "only the damaged chunk comes from the secondary: {r}"
    );
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
    let m = f.ctl.scrape_metrics();
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
    let mut f = Fleet::new(&[]);
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("a.bin"), 3 << 20, 6, false);
    let agent = f.agent("web-01", &www);
    let sources = format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
        www.to_str().unwrap()
    );
    // Enrollment writes registry objects, which are replicated too: let them through first, so
    // that the first copy after the restart is one of the backup's.
    f.wait_caught_up();
    f.ctl.stop();
    let dir = f.ctl.dir.clone();
    f.ctl = Controller::serve_with_env(
        &dir,
        &[("LIFEBOAT_FAILPOINTS", "replication.before_copy=1:abort")],
    );
    agent.write_config(&f.ctl.url(), &sources);
    // The backup may or may not finish before the worker's first copy aborts the controller.
    let first = agent.run(&["backup", "--source", "web", "--json"]);
    let status = f.ctl.wait_exit().expect("controller exit status");
    assert!(!status.success(), "the failpoint aborts the controller");
    assert!(
        f.ctl.log().contains("replication.before_copy hit 1: abort"),
        "{}",
        f.ctl.log()
    );
    f.ctl = Controller::serve(&dir);
    agent.write_config(&f.ctl.url(), &sources);
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

    // A flipped byte in the bucket's largest pack: the scrub reads it back, finds it, and the
    // worker overwrites it with the primary's bytes.
    let pack = largest_pack(&server.object_path("region-2"));
    flip_byte(&server.object_path("region-2/packs").join(&pack));
    let out = f
        .ctl
        .ctl(&["replication", "scrub", "--sample", "1000", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let r = parse_json(&out);
    assert_eq!(
        r["damaged"],
        serde_json::json!([format!("packs/{}", pack.display())]),
        "{r}"
    );
    f.wait_caught_up();
    assert_replicated(&f.primary(), &server.object_path("region-2"));

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

/// The primary fails every read (its directory replaced by a file) instead of missing objects:
/// a restore with the default region reads a stream's first failed span from the secondary and
/// the rest of that stream there too, and restores everything.
#[test]
fn a_failing_primary_turns_restore_streams_to_the_secondary() {
    let f = Fleet::new(&[]);
    let (www, agent) = f.replicated_site(31);

    fs::rename(f.primary(), f.path("region-1.away")).unwrap();
    fs::write(f.primary(), b"the primary region is down").unwrap();
    let to = f.path("restored");
    let r = agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
    assert!(r["chunks_read"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["chunks_from_secondary"], r["chunks_read"], "{r}");
    assert!(
        f.ctl
            .log()
            .contains("this restore stream reads the rest of its blobs from the secondary"),
        "the switch is logged: {}",
        f.ctl.log()
    );
}

/// The largest pack file under `root/packs`: its path relative to `packs/`.
fn largest_pack(root: &Path) -> PathBuf {
    walk(&root.join("packs"))
        .into_iter()
        .filter(|(_, m)| m.is_file())
        .max_by_key(|(_, m)| m.len())
        .expect("a pack")
        .0
}

fn flip_byte(path: &Path) -> Vec<u8> {
    let good = fs::read(path).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 3] ^= 0x01;
    fs::write(path, &bad).unwrap();
    good
}

/// `restore --region secondary` reads every chunk from the secondary even with a healthy
/// primary; `--region primary` never falls back, so a damaged primary pack fails it while the
/// default (any) still restores.
#[test]
fn region_flag_forces_a_region() {
    let f = Fleet::new(&[]);
    let (www, agent) = f.replicated_site(21);

    let to = f.path("from-secondary");
    let r = agent.restore(
        "web",
        &["--to", to.to_str().unwrap(), "--region", "secondary"],
    );
    assert_same_tree(&www, &restored_root(&to, &www));
    assert_eq!(r["region"], "secondary", "{r}");
    assert!(r["chunks_read"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["chunks_from_secondary"], r["chunks_read"], "{r}");

    flip_byte(&f.primary().join("packs").join(largest_pack(&f.primary())));
    let to = f.path("primary-only");
    let out = agent.run(&[
        "restore",
        "--source",
        "web",
        "--to",
        to.to_str().unwrap(),
        "--region",
        "primary",
    ]);
    assert!(
        !out.status.success(),
        "no fallback with --region primary: {}",
        describe(&out)
    );
    let to = f.path("any");
    let r = agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
    assert!(r["chunks_from_secondary"].as_u64().unwrap() >= 1, "{r}");
}

/// Without a secondary: `--region secondary` is refused with a clear message, and
/// `snapshots list` shows "-" in REPLICATED; scrub says replication is not configured.
#[test]
fn no_secondary_region_is_refused_and_listed_as_dash() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(&tmp.path().join("controller"));
    let key = tmp.path().join("fleet-master.key");
    master_key(&ctl, &key);
    let f = Fleet { tmp, ctl, key };
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("a.txt"), 10_000, 23, true);
    let agent = f.agent("web-01", &www);
    agent.backup("web");

    let to = f.path("restored");
    let out = agent.run(&[
        "restore",
        "--source",
        "web",
        "--to",
        to.to_str().unwrap(),
        "--region",
        "secondary",
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no secondary region is configured"),
        "{}",
        describe(&out)
    );

    let out = f.ctl.ctl(&["snapshots", "list"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().nth(1).expect("a snapshot row");
    assert!(row.trim_end().ends_with(" -"), "REPLICATED is -: {text}");

    let out = f.ctl.ctl(&["replication", "scrub"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not configured"),
        "{}",
        describe(&out)
    );
}

/// A damaged pack and a missing snapshot record in the secondary: `replication scrub` finds both
/// (exit 1, keys listed, counted on /metrics), re-queues them, and once replication has caught up
/// the secondary holds the primary's bytes again and a second scrub is clean (exit 0).
#[test]
fn scrub_finds_damage_in_the_secondary_and_recopies() {
    let f = Fleet::new(&[]);
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("big.bin"), 4 << 20, 24, false);
    let agent = f.agent("web-01", &www);
    agent.backup("web");
    f.wait_caught_up();

    let pack = largest_pack(&f.secondary());
    let pack_key = format!("packs/{}", pack.display());
    flip_byte(&f.secondary().join("packs").join(&pack));
    let (record, _) = walk(&f.secondary().join("snapshots"))
        .into_iter()
        .find(|(_, m)| m.is_file())
        .expect("a record");
    let record_key = format!("snapshots/{}", record.display());
    fs::remove_file(f.secondary().join("snapshots").join(&record)).unwrap();

    let out = f
        .ctl
        .ctl(&["replication", "scrub", "--sample", "1000", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "damage found: {}",
        describe(&out)
    );
    let r = parse_json(&out);
    let mut damaged: Vec<String> = r["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    damaged.sort();
    let mut want = vec![pack_key.clone(), record_key.clone()];
    want.sort();
    assert_eq!(damaged, want, "{r}");
    let checked = r["checked"].as_u64().unwrap();
    assert!(checked >= 3, "packs, refs and the record: {r}");
    assert!(
        f.ctl
            .log()
            .lines()
            .any(|l| l.contains("scrub: secondary object damaged") && l.contains(&pack_key)),
        "{}",
        f.ctl.log()
    );

    f.wait_caught_up();
    assert_replicated(&f.primary(), &f.secondary());
    let out = f.ctl.ctl(&["replication", "scrub", "--sample", "1000"]);
    assert!(
        out.status.success(),
        "clean after the re-copy: {}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 damaged or missing"),
        "{}",
        describe(&out)
    );
    let list = f.ctl.ctl_json(&["snapshots", "list", "--json"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|j| j["replicated"] == true),
        "{list}"
    );

    let m = f.ctl.scrape_metrics();
    assert_eq!(metric(&m, "lifeboat_replication_scrub_damaged_total"), 2.0);
    assert_eq!(
        metric(&m, "lifeboat_replication_scrub_checked_total"),
        (2 * checked) as f64
    );
    // Nothing produces deletes yet (no GC): the listing is empty and well-formed.
    let d = f.ctl.ctl_json(&["replication", "deletes", "--json"]);
    assert_eq!(d["deletes"], serde_json::json!([]), "{d}");

    // A delete queued as the producers' API does (a row with its not-before time) is listed
    // with its times, as done by the controller (deletes are on by default); it is not due, so
    // the object stays in the secondary.
    let not_before: i64 = 4_102_444_800_000; // 2100-01-01
    let db = rusqlite::Connection::open(f.ctl.dir.join("catalog.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute(
        "INSERT INTO replication_queue (key, op, kind, enqueued_at, not_before)
         VALUES (?1, 'delete', 'pack', 1, ?2)",
        rusqlite::params![pack_key, not_before],
    )
    .unwrap();
    drop(db);
    let d = f.ctl.ctl_json(&["replication", "deletes", "--json"]);
    assert_eq!(
        d["deletes"],
        serde_json::json!([{
            "key": pack_key,
            "enqueued_at_unix_ms": 1,
            "not_before_unix_ms": not_before,
            "manual": false,
        }]),
        "{d}"
    );
    let out = f.ctl.ctl(&["replication", "deletes"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&pack_key),
        "{}",
        describe(&out)
    );
    assert!(f.secondary().join("packs").join(&pack).is_file());
}
