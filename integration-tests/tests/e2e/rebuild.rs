//! Catalog rebuild (issue 5, "Catalog rebuild", test item 4): real controller, lifeboatctl and
//! agent processes. The catalog is deleted and `lifeboat-controller rebuild-catalog` recreates
//! it from the bucket alone: a following backup of unchanged data uploads nothing new, old
//! snapshots restore byte-identical, agent and admin certificates still work (a revoked one stays
//! refused), a snapshot whose pack is gone is flagged and never listed, the rebuild from the
//! secondary (a local directory, or s3s-fs) works, and what a region lacks is re-queued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use lifeboat_common::exit;
use lifeboat_integration_tests::process::{bin, describe, master_key, parse_json, run};
use lifeboat_integration_tests::regions;
use lifeboat_integration_tests::s3::S3Server;
use lifeboat_integration_tests::tree::{
    assert_same_tree, copy_tree, restored_root, walk, write_data,
};
use lifeboat_integration_tests::{Agent, Controller};

struct Fleet {
    tmp: tempfile::TempDir,
    ctl: Controller,
    key: PathBuf,
}

fn init(dir: &Path, secondary: Option<&Path>) {
    regions::init(dir);
    if let Some(s) = secondary {
        regions::local_secondary(dir, s);
    }
}

impl Fleet {
    fn new(with_secondary: bool) -> Fleet {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("controller");
        let secondary = tmp.path().join("region-2");
        init(&dir, with_secondary.then_some(secondary.as_path()));
        let ctl = Controller::serve(&dir);
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

    fn agent(&self, name: &str, root: &Path) -> Agent {
        Agent::enroll(
            &self.ctl,
            &self.path(name),
            name,
            None,
            &self.key,
            &sources(root),
        )
    }

    /// Points an agent at the restarted controller (a new port).
    fn repoint(&self, agent: &Agent, root: &Path) {
        agent.write_config(&self.ctl.url(), &sources(root));
    }

    fn wait_caught_up(&self) {
        self.ctl.wait_caught_up();
    }

    /// Stops the controller and deletes its catalog (and WAL files).
    fn lose_catalog(&mut self) {
        self.ctl.stop();
        for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
            let _ = fs::remove_file(self.ctl.dir.join(f));
        }
        assert!(!self.ctl.dir.join("catalog.db").exists());
    }

    fn rebuild(&self, extra: &[&str]) -> Output {
        run(Command::new(bin("lifeboat-controller"))
            .arg("rebuild-catalog")
            .arg("--config")
            .arg(self.ctl.dir.join("controller.toml"))
            .arg("--json")
            .args(extra))
    }

    fn rebuild_ok(&self, extra: &[&str]) -> serde_json::Value {
        let out = self.rebuild(extra);
        assert!(out.status.success(), "rebuild-catalog: {}", describe(&out));
        parse_json(&out)
    }

    fn serve_again(&mut self) {
        self.ctl = Controller::serve(&self.ctl.dir);
    }

    fn snapshot_ids(&self, agent: &str) -> Vec<String> {
        let v = self
            .ctl
            .ctl_json(&["snapshots", "list", "--agent", agent, "--json"]);
        v.as_array()
            .unwrap_or_else(|| panic!("not a list: {v}"))
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn sources(root: &Path) -> String {
    format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
        root.to_str().unwrap()
    )
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn files(dir: &Path) -> BTreeSet<String> {
    walk(dir)
        .into_iter()
        .filter(|(_, m)| m.is_file())
        .map(|(p, _)| p.display().to_string())
        .collect()
}

fn tree(root: &Path, n: u64, seed: u64) {
    fs::create_dir_all(root).unwrap();
    for i in 0..n {
        write_data(&root.join(format!("f{i:03}.bin")), 100_000, seed + i, false);
    }
}

/// Backs up twice, loses the catalog, rebuilds it from the primary, and serves again: the admin
/// certificate lists both snapshots, the agent's certificate backs up unchanged data uploading
/// nothing new, both snapshots restore byte-identical, a revoked agent stays refused, a restore
/// grant survives; a pack the secondary lost is re-queued and copied again.
#[test]
fn rebuilt_catalog_restores_service() {
    let mut f = Fleet::new(true);
    let www = f.path("www");
    tree(&www, 30, 0);
    let agent = f.agent("web-01", &www);
    let first = agent.backup("web");
    let www_v1 = f.path("www-v1");
    copy_tree(&www, &www_v1);
    write_data(&www.join("f000.bin"), 100_000, 777, false);
    let second = agent.backup("web");
    let unchanged_before = agent.backup("web");
    let spare_root = f.path("spare-www");
    tree(&spare_root, 2, 50);
    let spare = f.agent("spare-01", &spare_root);
    let out = f
        .ctl
        .ctl(&["agent", "allow-restore", "spare-01", "--from", "web-01"]);
    assert!(out.status.success(), "allow-restore: {}", describe(&out));
    let revoked_root = f.path("revoked-www");
    tree(&revoked_root, 2, 90);
    let revoked = f.agent("old-01", &revoked_root);
    revoked.backup("web");
    let out = f.ctl.ctl(&["agent", "revoke", "old-01"]);
    assert!(out.status.success(), "revoke: {}", describe(&out));
    f.wait_caught_up();
    let ids = f.snapshot_ids("web-01");
    assert_eq!(ids.len(), 3, "{ids:?}");

    // The secondary loses one pack; the rebuild must notice and re-queue it.
    let secondary = f.path("region-2");
    let lost = files(&secondary.join("packs")).into_iter().next().unwrap();
    fs::remove_file(secondary.join("packs").join(&lost)).unwrap();

    f.lose_catalog();
    // With a catalog in place the rebuild refuses (unless --force, which keeps it aside).
    fs::write(f.ctl.dir.join("catalog.db"), b"not a catalog").unwrap();
    let refused = f.rebuild(&[]);
    assert_eq!(
        refused.status.code(),
        Some(exit::ERROR),
        "{}",
        describe(&refused)
    );
    assert!(
        describe(&refused).contains("--force"),
        "{}",
        describe(&refused)
    );
    let r = f.rebuild_ok(&["--force"]);
    let aside = r["moved_aside"].as_str().expect("moved aside");
    assert_eq!(
        fs::read(aside).unwrap(),
        b"not a catalog",
        "kept, not deleted"
    );

    assert_eq!(u(&r, "snapshots"), 4, "{r}");
    assert_eq!(r["flagged_snapshots"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(u(&r, "agents"), 3, "{r}");
    assert_eq!(u(&r, "revoked_agents"), 1, "{r}");
    assert_eq!(u(&r, "admins"), 1, "{r}");
    assert_eq!(u(&r, "grants"), 1, "{r}");
    assert!(
        u(&r, "objects_read") > 0 && u(&r, "objects_listed") > 10,
        "{r}"
    );
    assert!(u(&r, "already_replicated") > 10, "{r}");
    assert_eq!(u(&r, "requeued"), 1, "only the lost pack: {r}");
    assert_eq!(u(&r, "invalid_objects"), 0, "{r}");

    f.serve_again();
    f.repoint(&agent, &www);
    f.repoint(&spare, &spare_root);
    f.repoint(&revoked, &revoked_root);
    assert_eq!(
        f.snapshot_ids("web-01"),
        ids,
        "admin certificate works, same snapshots"
    );
    // Unchanged data: nothing new is uploaded (same as before the rebuild).
    let after = agent.backup("web");
    assert_eq!(u(&after, "files"), 30);
    assert!(u(&after, "uploaded_bytes") < 16_000, "{after}");
    assert!(
        u(&after, "uploaded_bytes") <= u(&unchanged_before, "uploaded_bytes") + 4_096,
        "before {unchanged_before}, after {after}"
    );
    // Both old snapshots restore byte-identical.
    for (snap, expected) in [(&first, &www_v1), (&second, &www)] {
        let id = snap["snapshot_id"].as_str().unwrap();
        let to = f.path(&format!("restored-{id}"));
        agent.restore("web", &["--snapshot", id, "--to", to.to_str().unwrap()]);
        assert_same_tree(expected, &restored_root(&to, &www));
    }
    // The grant survived: spare-01 may restore web-01's latest snapshot.
    let to = f.path("restored-by-spare");
    spare.restore(
        "web",
        &["--from-agent", "web-01", "--to", to.to_str().unwrap()],
    );
    assert_same_tree(&www, &restored_root(&to, &www));
    // The revocation survived.
    let out = revoked.run(&["backup", "--source", "web", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(exit::CERTIFICATE_REFUSED),
        "{}",
        describe(&out)
    );
    // The lost pack is copied to the secondary again.
    f.wait_caught_up();
    assert!(
        secondary.join("packs").join(&lost).is_file(),
        "{lost} re-copied"
    );
}

/// A snapshot whose pack was deleted from the bucket is flagged by the rebuild and never listed
/// or restored as the latest; the older, complete snapshot still is.
#[test]
fn snapshot_with_a_deleted_pack_is_flagged() {
    let mut f = Fleet::new(false);
    let www = f.path("www");
    tree(&www, 10, 0);
    let agent = f.agent("web-01", &www);
    let first = agent.backup("web");
    let packs_before = files(&f.primary().join("packs"));
    let www_v1 = f.path("www-v1");
    copy_tree(&www, &www_v1);
    write_data(&www.join("new.bin"), 200_000, 4242, false);
    let second = agent.backup("web");
    let new_packs: Vec<String> = files(&f.primary().join("packs"))
        .difference(&packs_before)
        .cloned()
        .collect();
    assert!(!new_packs.is_empty(), "the second backup wrote a pack");
    for p in &new_packs {
        fs::remove_file(f.primary().join("packs").join(p)).unwrap();
    }
    f.lose_catalog();
    let r = f.rebuild_ok(&[]);
    let second_id = second["snapshot_id"].as_str().unwrap();
    assert_eq!(
        r["flagged_snapshots"],
        serde_json::json!([second_id]),
        "{r}"
    );
    assert_eq!(u(&r, "snapshots"), 2, "{r}");
    f.serve_again();
    f.repoint(&agent, &www);
    let first_id = first["snapshot_id"].as_str().unwrap();
    assert_eq!(f.snapshot_ids("web-01"), vec![first_id.to_owned()]);
    let out = agent.run(&[
        "restore",
        "--source",
        "web",
        "--snapshot",
        second_id,
        "--json",
    ]);
    assert!(
        !out.status.success(),
        "flagged snapshot restored: {}",
        describe(&out)
    );
    let to = f.path("restored");
    agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www_v1, &restored_root(&to, &www));
}

/// The primary bucket and the catalog are both lost: the rebuild reads the secondary, the
/// snapshot restores byte-identical, and the objects the primary lacks are queued and copied
/// back to it.
#[test]
fn rebuild_from_the_secondary_refills_the_primary() {
    let mut f = Fleet::new(true);
    let www = f.path("www");
    tree(&www, 20, 7);
    let agent = f.agent("web-01", &www);
    let b = agent.backup("web");
    f.wait_caught_up();
    f.lose_catalog();
    for d in [
        "packs",
        "refs",
        "snapshots",
        "registry/agents",
        "registry/admins",
    ] {
        fs::remove_dir_all(f.primary().join(d)).unwrap();
    }
    let no_secondary = {
        // Without a [secondary] the region flag is refused with a clear message.
        let cfg = f.path("no-secondary.toml");
        let text = fs::read_to_string(f.ctl.dir.join("controller.toml")).unwrap();
        let cut = text.find("[secondary]").unwrap();
        let text = text[..cut].replace("\"ca.pem\"", &format!("{:?}", f.ctl.dir.join("ca.pem")));
        fs::write(&cfg, text).unwrap();
        run(Command::new(bin("lifeboat-controller"))
            .args(["rebuild-catalog", "--region", "secondary", "--config"])
            .arg(&cfg))
    };
    assert!(!no_secondary.status.success());
    assert!(
        describe(&no_secondary).contains("[secondary]"),
        "{}",
        describe(&no_secondary)
    );
    let r = f.rebuild_ok(&["--region", "secondary"]);
    assert_eq!(r["region"], "secondary", "{r}");
    assert_eq!(u(&r, "snapshots"), 1, "{r}");
    assert_eq!(u(&r, "agents"), 1, "{r}");
    assert_eq!(u(&r, "admins"), 1, "{r}");
    assert!(
        u(&r, "requeued") > 3,
        "everything the primary lost is queued back: {r}"
    );
    f.serve_again();
    f.repoint(&agent, &www);
    let to = f.path("restored");
    agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
    f.wait_caught_up();
    let id = b["snapshot_id"].as_str().unwrap();
    assert!(
        f.primary().join("snapshots/web-01").join(id).is_file(),
        "record copied back to the primary"
    );
    assert_eq!(
        files(&f.primary().join("packs")),
        files(&f.path("region-2").join("packs")),
        "every pack copied back"
    );
}

/// The same from an S3-compatible secondary (s3s-fs, under a key prefix): rebuilt from the
/// bucket, the snapshot restores and the primary's lost objects are copied back.
#[test]
fn rebuild_from_an_s3_secondary() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), "dr-bucket");
    let dir = tmp.path().join("controller");
    init(&dir, None);
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
    let mut f = Fleet { tmp, ctl, key };
    let www = f.path("www");
    tree(&www, 8, 3);
    let agent = f.agent("web-01", &www);
    agent.backup("web");
    f.wait_caught_up();
    f.lose_catalog();
    for d in ["packs", "refs", "snapshots"] {
        fs::remove_dir_all(f.primary().join(d)).unwrap();
    }
    let r = f.rebuild_ok(&["--region", "secondary"]);
    assert_eq!(u(&r, "snapshots"), 1, "{r}");
    assert_eq!(u(&r, "agents"), 1, "{r}");
    assert_eq!(u(&r, "invalid_objects"), 0, "{r}");
    assert!(u(&r, "requeued") >= 3, "{r}");
    f.serve_again();
    f.repoint(&agent, &www);
    let to = f.path("restored");
    agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
    f.wait_caught_up();
    assert_eq!(
        files(&f.primary().join("packs")),
        files(&server.object_path("region-2/packs")),
        "every pack copied back to the primary"
    );
}

/// Rebuild time and objects read for a bucket of at least 10,000 objects, written directly in
/// the real formats (packs with index footers, reference segments, snapshot records, registry).
/// Run: `cargo test -p lifeboat-integration-tests --test e2e rebuild::rebuild_bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: writes 10,000+ objects"]
fn rebuild_bench_10k_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("controller");
    init(&dir, None);
    let objects = dir.join("objects");
    let written = bench::write_bucket(&objects, 50, 70, 3);
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = fs::remove_file(dir.join(f));
    }
    let started = Instant::now();
    let out = run(Command::new(bin("lifeboat-controller"))
        .arg("rebuild-catalog")
        .arg("--config")
        .arg(dir.join("controller.toml"))
        .arg("--json"));
    let wall = started.elapsed();
    assert!(out.status.success(), "{}", describe(&out));
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.contains("rebuild step done") || line.contains("catalog rebuilt") {
            eprintln!("{line}");
        }
    }
    let r = parse_json(&out);
    eprintln!(
        "REBUILD BENCH: {written} objects written, {} listed, {} read ({} bytes), {} packs, {} chunks, {} snapshots in {} ms (process wall {:?})",
        u(&r, "objects_listed"),
        u(&r, "objects_read"),
        u(&r, "bytes_read"),
        u(&r, "packs"),
        u(&r, "chunks"),
        u(&r, "snapshots"),
        u(&r, "duration_ms"),
        wall
    );
    assert!(u(&r, "objects_listed") >= 10_000, "{r}");
    assert_eq!(r["flagged_snapshots"].as_array().unwrap().len(), 0, "{r}");
    assert!(wall < Duration::from_secs(600));
}

mod bench {
    use std::fs;
    use std::path::Path;

    use lifeboat_common::ids::{ChunkId, SnapshotId};
    use lifeboat_controller::pack::PackBuilder;
    use lifeboat_controller::record::{RECORD_FORMAT, SnapshotRecord, record_key};
    use lifeboat_controller::refset;
    use lifeboat_controller::registry::{Change, Pending};

    fn put(root: &Path, key: &str, bytes: &[u8]) {
        let p = root.join(key);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    fn id(agent: usize, n: usize) -> ChunkId {
        ChunkId(*blake3::hash(format!("{agent}/{n}").as_bytes()).as_bytes())
    }

    /// `agents` agents, each with `snapshots` snapshots; every snapshot adds `new_chunks`
    /// chunks in a new pack and references all of the agent's chunks so far. Returns objects.
    pub fn write_bucket(root: &Path, agents: usize, snapshots: usize, new_chunks: usize) -> usize {
        let mut n = 0;
        for a in 0..agents {
            let name = format!("bench-{a:03}");
            let ev = Pending::agent(
                &name,
                1_700_000_000_000,
                Change::Added {
                    group: name.clone(),
                    cert_sha256: hex(&blake3::hash(name.as_bytes()).as_bytes()[..]),
                    not_after_unix_ms: 1_900_000_000_000,
                },
            );
            put(root, &ev.key, &ev.bytes);
            n += 1;
            let mut all: Vec<ChunkId> = Vec::new();
            for s in 0..snapshots {
                let mut b = PackBuilder::new();
                for c in 0..new_chunks {
                    let cid = id(a, s * new_chunks + c);
                    b.push(cid, &[c as u8; 64]);
                    all.push(cid);
                }
                let pack = b.finish();
                put(root, &pack.key, &pack.bytes);
                n += 1;
                let mut sorted = all.clone();
                sorted.sort();
                let segments = refset::segments(&sorted);
                for seg in &segments {
                    if !root.join(&seg.key).exists() {
                        put(root, &seg.key, &seg.bytes);
                        n += 1;
                    }
                }
                let at = 1_700_000_000_000 + (s as i64) * 1000;
                let sid = SnapshotId::generate(at).to_string();
                let rec = SnapshotRecord {
                    format: RECORD_FORMAT,
                    id: sid.clone(),
                    agent: name.clone(),
                    source: "web".into(),
                    started_at_unix_ms: at,
                    finished_at_unix_ms: at,
                    committed_at_unix_ms: at,
                    stats: Default::default(),
                    stored_bytes: 0,
                    manifest_ids: vec![],
                    ref_segments: segments.iter().map(|s| s.key.clone()).collect(),
                    reference_count: sorted.len() as u64,
                };
                put(root, &record_key(&name, &sid), &rec.to_bytes());
                n += 1;
            }
        }
        n
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
