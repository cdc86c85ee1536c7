//! The Foundation issue's end-to-end tests: real controller, lifeboatctl and agent processes on
//! loopback with real mTLS, real files. See each test's doc for what it proves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use lifeboat_common::exit;
use lifeboat_integration_tests::process::{describe, master_key};
use lifeboat_integration_tests::tree::{
    assert_same_tree, build_sample_tree, copy_tree, restored_root, write_data,
};
use lifeboat_integration_tests::{Agent, Controller};

struct Fleet {
    tmp: tempfile::TempDir,
    ctl: Controller,
    key: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ctl = Controller::start(&tmp.path().join("controller"));
        let key = tmp.path().join("fleet-master.key");
        master_key(&ctl, &key);
        Fleet { tmp, ctl, key }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn agent(&self, name: &str, group: Option<&str>, roots: &[&Path]) -> Agent {
        self.agent_with(name, group, roots, "")
    }

    /// As [`Fleet::agent`], with `extra` lines in the source's table.
    fn agent_with(&self, name: &str, group: Option<&str>, roots: &[&Path], extra: &str) -> Agent {
        let paths: Vec<String> = roots
            .iter()
            .map(|r| format!("{:?}", r.to_str().unwrap()))
            .collect();
        let sources = format!(
            "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{}]\n{extra}",
            paths.join(", ")
        );
        Agent::enroll(
            &self.ctl,
            &self.path(name),
            name,
            group,
            &self.key,
            &sources,
        )
    }
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// Backs up a tree with every kind of entry, restores it elsewhere byte for byte, then repairs a
/// vandalised original in place with `--delete`.
#[test]
fn backup_restore_and_in_place_repair() {
    let f = Fleet::new();
    let www = f.path("www");
    build_sample_tree(&www, 50 << 20);
    let agent = f.agent("web-01", None, &[&www]);

    let b = agent.backup("web");
    assert_eq!(u(&b, "files"), 49, "{b}");
    assert!(!b["partial"].as_bool().unwrap());

    let to = f.path("restored");
    let r = agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_eq!(u(&r, "files_written"), 49, "{r}");
    assert_same_tree(&www, &restored_root(&to, &www));

    // Vandalise the original: delete, modify (same size, same mtime), add a stray web shell.
    let pristine = f.path("pristine");
    copy_tree(&restored_root(&to, &www), &pristine);
    fs::remove_file(www.join("html/index.html")).unwrap();
    fs::remove_dir_all(www.join("conf/sites-enabled")).unwrap();
    let css = www.join("html/assets/css/site.css");
    let mtime = fs::metadata(&css).unwrap().modified().unwrap();
    let mut bytes = fs::read(&css).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&css, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&css)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::write(www.join("html/shell.php"), b"<?php system($_GET['c']); ?>").unwrap();
    fs::create_dir(www.join("html/evil")).unwrap();
    fs::write(www.join("html/evil/x"), b"x").unwrap();

    let r = agent.restore("web", &["--in-place", "--delete"]);
    assert!(u(&r, "deleted") >= 2, "{r}");
    assert!(
        u(&r, "files_unchanged") >= 45,
        "unchanged files must not be rewritten: {r}"
    );
    assert_same_tree(&pristine, &www);
}

/// An unchanged tree uploads nothing and reads no file; a 1% change uploads about what changed.
#[test]
fn dedup_second_backup_and_small_change() {
    let f = Fleet::new();
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    for i in 0..100 {
        write_data(&www.join(format!("f{i:03}.bin")), 300_000, i, false);
    }
    let agent = f.agent("web-01", None, &[&www]);
    let first = agent.backup("web");
    assert_eq!(u(&first, "files_read"), 100);

    let second = agent.backup("web");
    assert_eq!(
        u(&second, "files_read"),
        0,
        "unchanged files must come from the cache: {second}"
    );
    assert_eq!(u(&second, "bytes_read"), 0, "{second}");
    assert_eq!(u(&second, "files"), 100);

    // Change 1% of files (one file, rewritten entirely).
    write_data(&www.join("f050.bin"), 300_000, 9_999, false);
    let third = agent.backup("web");
    assert_eq!(u(&third, "files_read"), 1, "{third}");
    let uploaded = u(&third, "uploaded_bytes");
    assert!(
        uploaded >= 300_000,
        "the changed file must be uploaded: {third}"
    );
    assert!(
        uploaded < 300_000 + 64_000,
        "uploaded {uploaded} bytes for a 300 kB change: {third}"
    );

    // The second backup uploaded nothing but its manifest.
    assert!(u(&second, "uploaded_bytes") < 16_000, "{second}");
    let snaps = f
        .ctl
        .ctl_json(&["snapshots", "list", "--agent", "web-01", "--json"]);
    assert_eq!(snaps.as_array().map(Vec::len), Some(3), "{snaps}");
}

/// A tree of 7,000 files with long names: its manifest (~1.3 MB, more than one manifest chunk's
/// 1 MiB maximum) is cut and uploaded while the agent writes it, the restore decodes it chunk by
/// chunk (entries spanning chunk boundaries) and writes the tree byte for byte, and a no-change
/// backup stores only the manifest chunks that changed (its header's time), not the whole
/// manifest again. The manifest's chunk size itself is the unit tests' (`chunker`,
/// `manifest_upload`): this test also passes with the file tree's larger chunks.
#[test]
fn a_manifest_of_several_chunks_round_trips_and_is_stored_once() {
    let f = Fleet::new();
    let www = f.path("www");
    for d in 0..7 {
        let dir = www.join(format!("section-{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..1000 {
            let name = format!(
                "article-{d:02}-{i:04}-{}.html",
                "with-a-long-descriptive-slug-".repeat(3)
            );
            fs::write(dir.join(name), format!("<p>article {d} {i}</p>\n")).unwrap();
        }
    }
    let agent = f.agent("web-01", None, &[&www]);
    let first = agent.backup("web");
    assert_eq!(u(&first, "files"), 7_000, "{first}");
    let id = first["snapshot_id"].as_str().unwrap();
    let shown = f.ctl.ctl_json(&["snapshots", "show", id, "--json"]);
    let manifest_chunks = u(&shown, "manifest_chunks");
    assert!(manifest_chunks >= 2, "{shown}");

    let second = agent.backup("web");
    assert!(
        u(&second, "new_chunks") < manifest_chunks,
        "a no-change backup stored the whole manifest again: {second}"
    );

    let to = f.path("restored");
    let r = agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_eq!(u(&r, "files_written"), 7_000, "{r}");
    assert_same_tree(&www, &restored_root(&to, &www));
}

/// The restore's `bytes_read` is what the chunks weighed on the wire: sealed, so at least the
/// size of incompressible data (stored raw, plus nonce and tag) and far less than compressible
/// data, and never more than the first backup uploaded (the restore reads the same blobs).
#[test]
fn restore_reports_the_sealed_bytes_it_read() {
    let f = Fleet::new();
    let www = f.path("www");
    fs::create_dir_all(&www).unwrap();
    write_data(&www.join("photo.jpg"), 3 << 20, 7, false);
    write_data(&www.join("page.html"), 4 << 20, 8, true);
    let agent = f.agent("web-01", None, &[&www]);
    let b = agent.backup("web");
    let to = f.path("restored");
    let r = agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
    let read = u(&r, "bytes_read");
    assert!(read > 3 << 20, "random bytes cannot shrink: {r}");
    assert!(
        read < (3 << 20) + (2 << 20),
        "4 MiB of markup compresses: {r}"
    );
    assert!(
        read <= u(&b, "uploaded_bytes"),
        "{r} against the backup's {b}"
    );
}

/// A source of more chunk ids than the backup sorts in memory (32,768) in one file of more
/// chunks than a manifest entry is written from at once (1,820), through the real controller
/// and agent: the references merged from sorting runs on disk are committed once each (the
/// controller refuses a stream whose distinct ids differ from the header's count), the entry
/// written in pieces restores byte for byte from the restore's scratch file (and `ls` counts its
/// chunks there), a no-change backup from the cache sends the same references, and no scratch
/// file is left in the state directory (the cache's list file is inside the cache's).
#[test]
fn more_ids_than_a_sorting_run_round_trip_through_the_scratch_files() {
    let f = Fleet::new();
    let www = f.path("www");
    fs::create_dir_all(&www).unwrap();
    write_data(&www.join("big.bin"), 12 << 20, 7, false);
    let chunker = "chunker = { min = 64, avg = 256, max = 1024 }\n";
    let agent = f.agent_with("web-01", None, &[&www], chunker);
    let first = agent.backup("web");
    let chunks = u(&first, "chunks");
    assert!(chunks > 32_768, "{first}");
    let id = first["snapshot_id"].as_str().unwrap();
    let shown = f.ctl.ctl_json(&["snapshots", "show", id, "--json"]);
    assert_eq!(
        u(&shown, "reference_count"),
        chunks + u(&shown, "manifest_chunks"),
        "{shown}"
    );
    let second = agent.backup("web");
    assert_eq!(
        (u(&second, "files_read"), u(&second, "chunks")),
        (0, chunks),
        "{second}"
    );
    // `ls` reads the large entry's list in place (its length only): one line per entry.
    let out = agent.run(&["ls", "--source", "web", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let big = listed
        .iter()
        .find(|e| e["path"].as_str().is_some_and(|p| p.ends_with("/big.bin")))
        .expect("big.bin listed");
    assert_eq!(
        (u(big, "size"), u(big, "chunks")),
        (12 << 20, chunks),
        "{big}"
    );
    let to = f.path("restored");
    let r = agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_eq!(u(&r, "files_written"), 1, "{r}");
    assert_same_tree(&www, &restored_root(&to, &www));
    let left: Vec<_> = fs::read_dir(agent.dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["cache"],
        "only the file cache stays in the state directory"
    );
}

/// Agents in one dedup group store a shared tree once; agents in different groups never share.
#[test]
fn dedup_groups() {
    let f = Fleet::new();
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    for i in 0..20 {
        write_data(&www.join(format!("f{i:02}.bin")), 200_000, i, false);
    }
    let a = f.agent("web-a", Some("web"), &[&www]);
    let b = f.agent("web-b", Some("web"), &[&www]);
    let c = f.agent("web-c", None, &[&www]);
    let ba = a.backup("web");
    assert!(u(&ba, "uploaded_bytes") >= 4_000_000, "{ba}");
    let bb = b.backup("web");
    assert_eq!(u(&bb, "files_read"), 20);
    assert!(
        u(&bb, "uploaded_bytes") < 16_000,
        "same group must dedup: {bb}"
    );
    let bc = c.backup("web");
    assert!(
        u(&bc, "uploaded_bytes") >= 4_000_000,
        "another group must not dedup: {bc}"
    );
    // And B can restore what it "has" through A's upload.
    let to = f.path("restore-b");
    b.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
}

/// One flipped byte in a pack fails the restore, names the damaged file, leaves it nowhere.
#[test]
fn flipped_byte_in_pack_fails_restore() {
    let f = Fleet::new();
    let www = f.path("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("small.txt"), 1_000, 1, true);
    write_data(&www.join("victim.bin"), 6 << 20, 2, false);
    let agent = f.agent("web-01", None, &[&www]);
    agent.backup("web");

    let packs = largest_file(&f.ctl.dir.join("objects/packs"));
    let mut bytes = fs::read(&packs).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x01;
    fs::write(&packs, &bytes).unwrap();

    let to = f.path("restored");
    let out = agent.run(&["restore", "--source", "web", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("victim.bin"),
        "error must name the damaged file: {stderr}"
    );
    let target = restored_root(&to, &www);
    assert!(
        !target.join("victim.bin").exists(),
        "damaged file left under its real name"
    );
    if let Ok(rd) = fs::read_dir(&target) {
        for e in rd {
            let n = e.unwrap().file_name();
            assert!(
                !n.to_string_lossy().contains("lifeboat-tmp"),
                "temporary file left: {n:?}"
            );
        }
    }
}

fn largest_file(dir: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    for (rel, m) in lifeboat_integration_tests::tree::walk(dir) {
        if m.is_file() && best.as_ref().is_none_or(|(s, _)| m.len() > *s) {
            best = Some((m.len(), dir.join(rel)));
        }
    }
    best.expect("no pack written").1
}
