//! Crash safety, proven with real processes: the controller and the agent are killed (abort at
//! a failpoint, see `lifeboat_common::failpoint`) at many points of a backup; after every crash
//! the catalog and the object store are checked from the outside ([`catalog_check`]), the backup
//! is run again and must succeed re-sending only what was not acknowledged, and at the end every
//! committed snapshot must restore byte for byte.
//!
//! Seeded (`LIFEBOAT_CRASH_SEED`, default below) and bounded: each iteration replaces a
//! ~6 MiB generation of files in the tree, chunked small (avg 1 KiB) so one backup makes several
//! upload batches (4096 ids each) and so several packs (one per UploadChunks call at least; the
//! 16 MiB pack limit itself is covered by the Foundation's 50 MiB test). Run with
//! `-- --nocapture` to see the counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lifeboat_integration_tests::catalog_check::{self, CatalogState};
use lifeboat_integration_tests::process::{describe, master_key, parse_json};
use lifeboat_integration_tests::tree::{
    Node, Rng, build_sample_tree, describe_tree, restored_root, write_data,
};
use lifeboat_integration_tests::{Agent, Controller};

const DEFAULT_SEED: u64 = 0x11fe_b0a7;
/// New bytes per iteration: with ~1 KiB chunks, more than one 4096-id upload batch, so one
/// backup makes at least three UploadChunks calls and three packs (two data, one manifest).
const GENERATION_BYTES: usize = 6 << 20;
/// Allowed excess of re-sent bytes over "total minus acknowledged before the crash".
const SLACK: u64 = 64 << 10;
const SIGABRT: i32 = 6;

/// Controller failpoints and how many hits one backup reaches at least.
const CONTROLLER_POINTS: [(&str, u64); 6] = [
    ("ingest.before_pack_put", 3),
    ("ingest.after_pack_put", 3),
    ("ingest.after_catalog", 3),
    ("commit.after_refs", 1),
    ("commit.after_record", 1),
    ("commit.after_catalog", 1),
];

fn seed() -> u64 {
    std::env::var("LIFEBOAT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

type Tree = BTreeMap<PathBuf, Node>;

/// One controller directory, one agent, one tree, and what every snapshot should restore to.
struct Rig {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    www: PathBuf,
    agent: Agent,
    expected: Vec<(String, Tree)>,
}

fn sources(www: &Path) -> String {
    format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\nchunker = {{ min = 512, avg = 1024, max = 4096 }}\n",
        www.to_str().unwrap()
    )
}

impl Rig {
    /// Inits a controller, enrolls an agent, backs up a base tree; leaves the controller running.
    fn new() -> (Rig, Controller) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("controller");
        let ctl = Controller::start(&dir);
        let key = tmp.path().join("fleet.key");
        master_key(&ctl, &key);
        let www = tmp.path().join("www");
        build_sample_tree(&www, 1 << 20);
        let agent = Agent::enroll(
            &ctl,
            &tmp.path().join("agent"),
            "web-01",
            None,
            &key,
            &sources(&www),
        );
        let mut rig = Rig {
            tmp,
            dir,
            www,
            agent,
            expected: Vec::new(),
        };
        let b = rig.agent.backup("web");
        rig.record(&b);
        (rig, ctl)
    }

    /// Points the agent at `ctl` (its port changes on every start).
    fn use_controller(&self, ctl: &Controller) {
        self.agent.write_config(&ctl.url(), &sources(&self.www));
    }

    /// Replaces the previous generation of files with fresh random data.
    fn next_generation(&self, generation: u64) {
        let d = self.www.join("html/generation");
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("mkdir generation");
        let mut rng = Rng::new(generation);
        let (mut left, mut i) = (GENERATION_BYTES, 0u64);
        while left > 0 {
            let n = ((32 << 10) + rng.below(400 << 10) as usize).min(left);
            write_data(
                &d.join(format!("g{generation}-{i}.bin")),
                n,
                generation.wrapping_mul(1_000_003) + i,
                false,
            );
            left -= n;
            i += 1;
        }
    }

    /// Remembers the tree as the expected content of every snapshot committed since the last call.
    fn record_new(&mut self, state: &CatalogState) {
        let tree = describe_tree(&self.www);
        for id in &state.snapshots {
            if !self.expected.iter().any(|(known, _)| known == id) {
                self.expected.push((id.clone(), tree.clone()));
            }
        }
    }

    fn record(&mut self, backup: &serde_json::Value) {
        let id = backup["snapshot_id"]
            .as_str()
            .expect("snapshot id")
            .to_owned();
        self.expected.push((id, describe_tree(&self.www)));
    }

    /// Backs up (must succeed) and checks the rerun re-sent only what was not acknowledged.
    fn rerun_and_check(&mut self, acked_before: u64, what: &str) {
        let b = self.agent.backup("web");
        let uploaded = b["uploaded_bytes"].as_u64().expect("uploaded_bytes");
        let after = catalog_check::check(&self.dir);
        let unacked = after.chunk_bytes - acked_before;
        assert!(
            uploaded <= unacked + SLACK,
            "{what}: the rerun uploaded {uploaded} bytes but only {unacked} were not acknowledged before the crash"
        );
        self.record_new(&after);
    }

    /// Restores every committed snapshot and compares it with the tree it was taken from.
    fn verify_restores(&self, ctl: &Controller) -> usize {
        for i in 0..self.expected.len() {
            self.verify_restore(ctl, i);
        }
        self.expected.len()
    }

    /// Restores the `i`th committed snapshot and compares it with the tree it was taken from
    /// (panics naming the first differences).
    fn verify_restore(&self, ctl: &Controller, i: usize) -> bool {
        self.use_controller(ctl);
        let (id, tree) = &self.expected[i];
        let to = self.tmp.path().join(format!("restore-{i}"));
        let out = self.agent.run(&[
            "restore",
            "--source",
            "web",
            "--snapshot",
            id,
            "--to",
            to.to_str().unwrap(),
            "--json",
        ]);
        assert!(out.status.success(), "restore {id}: {}", describe(&out));
        let got = describe_tree(&restored_root(&to, &self.www));
        if &got != tree {
            let diff: Vec<_> = tree
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .map(|(k, _)| k.display().to_string())
                .take(10)
                .collect();
            panic!("snapshot {id} does not restore to its tree; first differences: {diff:?}");
        }
        fs::remove_dir_all(&to).expect("clean restore");
        true
    }
}

/// ≥ 30 controller kill points (6 failpoints × hit numbers, seeded): after each abort the
/// invariant holds before restart, the rerun succeeds re-sending only what was not
/// acknowledged, and every committed snapshot restores byte-identically.
#[test]
fn controller_crash_points() {
    let t = Instant::now();
    let seed = seed();
    let (mut rig, mut ctl) = Rig::new();
    ctl.stop();
    let mut rng = Rng::new(seed);
    let mut kills = 0;
    for i in 0..30u64 {
        let (point, max) = CONTROLLER_POINTS[(i % 6) as usize];
        let hit = 1 + rng.below(max);
        rig.next_generation(seed ^ (i + 1));
        let spec = format!("{point}={hit}:abort");
        let mut crashing =
            Controller::serve_with_env(&rig.dir, &[("LIFEBOAT_FAILPOINTS", spec.as_str())]);
        rig.use_controller(&crashing);
        let out = rig.agent.run(&["backup", "--source", "web", "--json"]);
        let status = crashing.wait_exit().expect("controller status");
        assert_eq!(
            status.signal(),
            Some(SIGABRT),
            "iteration {i}: {spec} must abort the controller (status {status:?}); agent: {}",
            describe(&out)
        );
        assert!(
            crashing
                .log()
                .contains(&format!("failpoint {point} hit {hit}: abort")),
            "iteration {i}: the abort must come from {spec}"
        );
        assert!(
            matches!(out.status.code(), Some(1) | Some(4)),
            "iteration {i}: the agent must fail when the controller dies at {spec}: {}",
            describe(&out)
        );
        kills += 1;
        let before = catalog_check::check(&rig.dir);
        rig.record_new(&before);
        let mut ctl = Controller::serve(&rig.dir);
        rig.use_controller(&ctl);
        rig.rerun_and_check(before.chunk_bytes, &spec);
        ctl.stop();
    }
    let ctl = Controller::serve(&rig.dir);
    let restores = rig.verify_restores(&ctl);
    println!(
        "CRASH controller: seed {seed}, kill points {kills}, restores verified {restores}, {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(kills >= 30 && restores > kills);
}

/// ≥ 20 agent kill points (abort after upload batch k, or just before the commit): the rerun
/// succeeds, uploads only what the crashed run had not had acknowledged, and restores exactly.
#[test]
fn agent_crash_points() {
    let t = Instant::now();
    let seed = seed().rotate_left(17);
    let (mut rig, ctl) = Rig::new();
    let mut kills = 0;
    for i in 0..20u64 {
        let spec = match i % 4 {
            3 => "agent.before_commit=1:abort".to_owned(),
            k => format!("agent.after_upload_batch={}:abort", k + 1),
        };
        rig.next_generation(seed ^ (i + 1));
        let out = rig
            .agent
            .command(&["backup", "--source", "web", "--json"])
            .env("LIFEBOAT_FAILPOINTS", &spec)
            .output()
            .expect("run agent");
        assert_eq!(
            out.status.signal(),
            Some(SIGABRT),
            "iteration {i}: {spec} must abort the agent: {}",
            describe(&out)
        );
        kills += 1;
        let before = catalog_check::check(&rig.dir);
        assert_eq!(
            before.snapshots.len(),
            rig.expected.len(),
            "an agent crash before its commit must not add a snapshot"
        );
        rig.rerun_and_check(before.chunk_bytes, &spec);
    }
    let restores = rig.verify_restores(&ctl);
    println!(
        "CRASH agent: seed {seed}, kill points {kills}, restores verified {restores}, {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(kills >= 20 && restores > kills);
}

/// A rig that backed up a generation, with its controller stopped and the catalog rows of its
/// largest pack deleted (the object left: a catalog restored from an older copy).
fn backed_up_then_a_pack_forgotten() -> Rig {
    let (mut rig, mut ctl) = Rig::new();
    rig.next_generation(seed());
    let first = rig.agent.backup("web");
    rig.record(&first);
    ctl.stop();
    let forgotten = catalog_check::forget_largest_pack(&rig.dir);
    assert!(forgotten > 100, "forgot only {forgotten} chunk rows");
    rig
}

/// Serves the rig's catalog and backs up `web`: the commit must be refused (chunks the catalog
/// lost) and the agent back up again without its file cache. Returns the controller and the
/// report of the backup.
fn back_up_after_a_refused_commit(rig: &mut Rig) -> (Controller, serde_json::Value) {
    let ctl = Controller::serve(&rig.dir);
    rig.use_controller(&ctl);
    let out = rig.agent.run(&["backup", "--source", "web", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("backing up again without the file cache"),
        "the commit must have been refused: {log}"
    );
    (ctl, parse_json(&out))
}

/// A catalog that lost the rows of a pack (restored from an older copy) while the agent's file
/// cache still names those chunks: the agent presumes them stored, the controller refuses the
/// commit, the agent backs up again without its cache and re-sends them, and every snapshot
/// restores exactly.
#[test]
fn chunks_missing_from_the_catalog_are_resent() {
    let mut rig = backed_up_then_a_pack_forgotten();
    let (ctl, b) = back_up_after_a_refused_commit(&mut rig);
    assert!(
        b["files_read"].as_u64().unwrap_or(0) >= 1,
        "files whose chunks the controller lost must be read again: {b}"
    );
    assert!(b["uploaded_bytes"].as_u64().unwrap_or(0) > 1 << 20, "{b}");
    rig.record(&b);
    let state = catalog_check::check(&rig.dir);
    assert_eq!(state.snapshots.len(), rig.expected.len());
    assert_eq!(rig.verify_restores(&ctl), 3);
}

/// As above, but every file changed in one byte, so the agent does not ask about the chunks
/// the files' previous versions had (it presumes them stored: `agent/src/backup/read.rs`): the
/// real controller refuses the commit that references the forgotten pack's chunks, the agent
/// backs up again without its cache, and the snapshot restores exactly.
#[test]
fn presumed_chunks_the_catalog_lost_are_resent_after_a_refused_commit() {
    let mut rig = backed_up_then_a_pack_forgotten();
    let changed = flip_a_middle_byte_of_every_file(&rig.www);
    assert!(changed > 5, "changed only {changed} files");
    let (ctl, b) = back_up_after_a_refused_commit(&mut rig);
    assert!(
        b["files_read"].as_u64().unwrap_or(0) >= changed,
        "the second pass reads every file: {b}"
    );
    rig.record(&b);
    // The first backup's snapshots still lack the forgotten chunks the changed files no longer
    // have (the test made that loss; the catalog check would name them): only the new snapshot
    // is restored.
    let latest = rig.expected.len() - 1;
    assert!(rig.verify_restore(&ctl, latest));
}

/// Rewrites every file of 2 KiB or more under `dir` with its middle byte flipped (same size, a
/// new mtime); returns how many.
fn flip_a_middle_byte_of_every_file(dir: &Path) -> u64 {
    let mut n = 0;
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            n += flip_a_middle_byte_of_every_file(&path);
        } else if meta.is_file() && meta.len() >= 2048 {
            let mut data = fs::read(&path).expect("read");
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
            fs::write(&path, &data).expect("write");
            n += 1;
        }
    }
    n
}
