//! Backup → restore round trips against the in-memory controller, and restore safety.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_common::blob;
use lifeboat_common::chunker::ChunkerParams;
use lifeboat_common::keys::{DataKeys, MasterKey};
use lifeboat_common::manifest::{self, Entry, EntryKind, ManifestHeader, ManifestWriter};

use super::*;
use crate::backup::read::{FsOpener, Opener};
use crate::backup::{BackupContext, BackupReport, backup_source};
use crate::cache::{FileCache, SledCache};
use crate::config::{PathPatterns, SourceConfig, SourceKind};
use crate::remote::memory::MemoryRemote;

const SMALL: ChunkerParams = ChunkerParams {
    min: 1024,
    avg: 4096,
    max: 16384,
};

fn keys() -> DataKeys {
    MasterKey::from_bytes([7; 32]).data_keys()
}

fn source(root: &Path, excludes: &[&str]) -> SourceConfig {
    SourceConfig {
        name: "web".into(),
        kind: SourceKind::Files,
        paths: vec![root.to_owned()],
        excludes: PathPatterns::new(&excludes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("excludes"),
        interval: Duration::from_secs(60),
        chunker: SMALL,
        dump_files: PathPatterns::default(),
        mysql: None,
        nginx: None,
    }
}

fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A small web root: nested dirs, an empty dir, a big file, a duplicate, a symlink.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("site/empty")).expect("mkdir");
    fs::write(root.join("site/index.html"), b"<h1>hello</h1>").expect("write");
    fs::write(root.join("site/big.bin"), pseudo_random(100_000, 1)).expect("write");
    fs::write(root.join("site/copy.bin"), pseudo_random(100_000, 1)).expect("write");
    fs::write(root.join("site/x.swp"), b"swap").expect("write");
    fs::set_permissions(
        root.join("site/index.html"),
        fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    symlink("index.html", root.join("site/home.html")).expect("symlink");
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    out: PathBuf,
    state: PathBuf,
    remote: MemoryRemote,
    cache: Arc<dyn FileCache>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("www");
    make_tree(&root);
    let cache: Arc<dyn FileCache> = Arc::from(SledCache::open(&dir.path().join("state/cache")));
    Fixture {
        root,
        out: dir.path().join("restore"),
        state: dir.path().join("state"),
        _dir: dir,
        remote: MemoryRemote::default(),
        cache,
    }
}

async fn backup(f: &Fixture, opener: Arc<dyn Opener>) -> BackupReport {
    backup_source_with(f, opener, &source(&f.root, &["*.swp"])).await
}

fn backup_context(f: &Fixture, opener: Arc<dyn Opener>) -> BackupContext<'_, MemoryRemote> {
    BackupContext {
        remote: &f.remote,
        keys: keys(),
        zstd_level: 3,
        cache: f.cache.clone(),
        opener,
        bandwidth: crate::backup::unlimited(),
        progress: crate::backup::no_progress(),
        scratch_dir: f.state.clone(),
    }
}

async fn backup_source_with(
    f: &Fixture,
    opener: Arc<dyn Opener>,
    src: &SourceConfig,
) -> BackupReport {
    (backup_source(&backup_context(f, opener), src).await).expect("backup")
}

fn opts(f: &Fixture, delete: bool, path: Option<PathBuf>) -> RestoreOptions {
    RestoreOptions {
        source: "web".into(),
        snapshot: "latest".into(),
        target: Target::To(f.out.clone()),
        path,
        delete,
        excludes: PathPatterns::new(&["*.swp".into()]).expect("excludes"),
        scratch_dir: Some(f.state.clone()),
    }
}

/// The entry at `path` in the latest snapshot's manifest.
async fn latest_entry(f: &Fixture, path: &[u8]) -> Entry {
    let (_, m) = fetch::load_manifest(&f.remote, &keys(), "latest", "web", None)
        .await
        .expect("manifest");
    m.decode_all()
        .expect("decode")
        .entries
        .into_iter()
        .find(|e| e.path == path)
        .expect("entry")
}

/// Where `rel` (under the source root) lands in the restore directory.
fn restored(f: &Fixture, rel: &str) -> PathBuf {
    let below: PathBuf = f.root.components().skip(1).collect();
    f.out.join(below).join(rel)
}

#[tokio::test]
async fn backup_then_restore_round_trips_and_the_cache_skips_reads() {
    let f = fixture();
    let r1 = backup(&f, Arc::new(FsOpener)).await;
    assert_eq!(
        (r1.files, r1.dirs, r1.symlinks, r1.files_read),
        (3, 3, 1, 3)
    );
    assert!(!r1.partial && r1.new_chunks > 0);
    let uploaded = f.remote.uploaded_ids.lock().expect("lock").clone();
    assert_eq!(
        uploaded.len(),
        uploaded.iter().collect::<HashSet<_>>().len(),
        "no id uploaded twice"
    );

    f.remote.asked.lock().expect("lock").clear();
    let r2 = backup(&f, Arc::new(FsOpener)).await;
    // Only the manifest (it carries the snapshot's time) is new.
    assert_eq!(
        (r2.files_read, r2.bytes_read, r2.new_chunks),
        (0, 0, 1),
        "second backup answered from the cache"
    );
    // The cached files' chunks are presumed stored: not even asked about (the commit checks).
    let asked = f.remote.asked.lock().expect("lock").clone();
    for name in ["site/index.html", "site/big.bin", "site/copy.bin"] {
        let e = latest_entry(&f, name.as_bytes()).await;
        assert!(!e.chunks.is_empty(), "{name}");
        assert!(
            e.chunks.iter().all(|id| !asked.contains(id)),
            "{name}: a cached chunk was asked about"
        );
    }

    let rep = restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restore");
    assert_eq!(
        (rep.files_written, rep.symlinks, rep.snapshot_id.as_str()),
        (3, 1, r2.snapshot_id.as_str())
    );
    for name in ["site/index.html", "site/big.bin", "site/copy.bin"] {
        assert_eq!(
            fs::read(restored(&f, name)).expect("read"),
            fs::read(f.root.join(name)).expect("read"),
            "{name}"
        );
    }
    assert!(
        !restored(&f, "site/x.swp").exists(),
        "excluded file was not backed up"
    );
    assert!(restored(&f, "site/empty").is_dir());
    assert_eq!(
        fs::read_link(restored(&f, "site/home.html")).expect("link"),
        PathBuf::from("index.html")
    );
    let mode = fs::metadata(restored(&f, "site/index.html"))
        .expect("meta")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o640);
    let (a, b) = (
        fs::metadata(restored(&f, "site/big.bin")).expect("m"),
        fs::metadata(f.root.join("site/big.bin")).expect("m"),
    );
    assert_eq!(a.modified().expect("mtime"), b.modified().expect("mtime"));

    // Unchanged files are not rewritten; a changed one is.
    fs::write(restored(&f, "site/index.html"), b"<h1>HACKED</h1>").expect("write");
    let t = filetime::FileTime::from_last_modification_time(
        &fs::metadata(f.root.join("site/index.html")).expect("m"),
    );
    filetime::set_file_mtime(restored(&f, "site/index.html"), t).expect("mtime");
    let rep = restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restore again");
    assert_eq!(
        (rep.files_written, rep.files_unchanged),
        (1, 2),
        "same size+mtime but other content is rewritten"
    );
    assert_eq!(
        fs::read(restored(&f, "site/index.html")).expect("read"),
        b"<h1>hello</h1>"
    );
}

/// Fails to open one file, as an unreadable file would.
struct FailingOpener(PathBuf);

impl Opener for FailingOpener {
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        if path == self.0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "Permission denied (injected)",
            ));
        }
        FsOpener.open(path)
    }
}

#[tokio::test]
async fn unreadable_file_is_reported_and_the_snapshot_commits() {
    let f = fixture();
    let bad = f.root.join("site/big.bin");
    let r = backup(&f, Arc::new(FailingOpener(bad.clone()))).await;
    assert!(r.partial);
    assert_eq!(r.unreadable.len(), 1);
    assert_eq!(r.unreadable[0].path, bad.display().to_string());
    assert!(r.unreadable[0].error.contains("Permission denied"));
    assert_eq!(r.files, 2);
    let snaps = f.remote.snapshots.lock().expect("lock").clone();
    assert_eq!((snaps.len(), snaps[0].stats.unreadable), (1, 1));
}

/// More referenced ids than one sorting run holds (`refs::RUN_IDS`): the references go through
/// the scratch file, and the commit gets each distinct id once (the manifest says which), the
/// tree restores, and a backup from the cache sends the same ones again.
#[tokio::test]
async fn more_ids_than_one_sorting_run_are_committed_once_each() {
    let f = fixture();
    let data = pseudo_random(12 << 20, 5);
    fs::write(f.root.join("site/many.bin"), &data).expect("write");
    let mut src = source(&f.root, &["*.swp"]);
    src.chunker = ChunkerParams {
        min: 64,
        avg: 256,
        max: 1024,
    };
    let r = backup_source_with(&f, Arc::new(FsOpener), &src).await;
    let (_, m) = fetch::load_manifest(&f.remote, &keys(), "latest", "web", None)
        .await
        .expect("manifest");
    let m = m.decode_all().expect("decode");
    let distinct: HashSet<_> = m.entries.iter().flat_map(|e| e.chunks.iter()).collect();
    assert!(
        distinct.len() > crate::backup::refs::RUN_IDS,
        "{}",
        distinct.len()
    );
    assert_eq!(r.chunks, distinct.len() as u64);
    let snap = f.remote.snapshots.lock().expect("lock")[0].clone();
    let manifest_ids = snap.manifest_ids.len() as u64;
    assert_eq!(snap.reference_count, r.chunks + manifest_ids);
    restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restore");
    let many = restored(&f, "site/many.bin");
    assert_eq!(fs::read(&many).expect("read"), data);
    // Restored again, the file is found unchanged against its list (read from the restore's
    // scratch file, as its entry is over `STORED_LIST_BYTES`); one byte changed in the middle,
    // same size and mtime, it is rewritten.
    let rep = restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restore again");
    assert_eq!(rep.files_written, 0);
    let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&many).expect("m"));
    let mut damaged = data.clone();
    damaged[6 << 20] ^= 1;
    fs::write(&many, &damaged).expect("write");
    filetime::set_file_mtime(&many, mtime).expect("mtime");
    let rep = restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restore again");
    assert_eq!(rep.files_written, 1);
    assert_eq!(fs::read(&many).expect("read"), data);
    let again = backup_source_with(&f, Arc::new(FsOpener), &src).await;
    assert_eq!((again.files_read, again.chunks), (0, r.chunks));
}

/// A state directory the scratch files cannot go to fails the backup with an error naming it,
/// before anything is committed.
#[tokio::test]
async fn a_scratch_directory_that_cannot_be_written_fails_the_backup_naming_it() {
    let f = fixture();
    let gone = f.state.join("absent");
    let ctx = BackupContext {
        scratch_dir: gone.clone(),
        ..backup_context(&f, Arc::new(FsOpener))
    };
    let err = (backup_source(&ctx, &source(&f.root, &["*.swp"])).await)
        .expect_err("no scratch directory");
    let msg = err.to_string();
    assert!(
        msg.contains("scratch file") && msg.contains(&gone.display().to_string()),
        "{msg}"
    );
    assert!(f.remote.snapshots.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn lost_chunks_are_uploaded_again_although_the_cache_has_the_file() {
    let f = fixture();
    backup(&f, Arc::new(FsOpener)).await;
    f.remote.forget_all_blobs();
    let r = backup(&f, Arc::new(FsOpener)).await;
    assert_eq!(
        r.files_read, 3,
        "a commit refused for presumed chunks the controller lost makes a pass without the cache"
    );
    let rep = restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restore");
    assert_eq!(rep.files_written, 3);
    assert_eq!(
        fs::read(restored(&f, "site/big.bin")).expect("read"),
        pseudo_random(100_000, 1)
    );
}

/// Writes `site/dump.sql` (200,000 bytes), backs up, rewrites it with 10 bytes changed in the
/// middle, and returns its entry before the change and the new contents.
async fn back_up_a_dump_then_change_it(f: &Fixture) -> (Entry, Vec<u8>) {
    let path = f.root.join("site/dump.sql");
    let mut data = pseudo_random(200_000, 9);
    fs::write(&path, &data).expect("write");
    backup(f, Arc::new(FsOpener)).await;
    let old = latest_entry(f, b"site/dump.sql").await;
    data[100_000..100_010].copy_from_slice(b"0123456789");
    fs::write(&path, &data).expect("write");
    (old, data)
}

/// Restores the latest snapshot and checks `site/dump.sql` came back as `data`.
async fn assert_dump_restores(f: &Fixture, data: &[u8]) {
    restore(&f.remote, &keys(), &opts(f, false, None))
        .await
        .expect("restore");
    assert_eq!(fs::read(restored(f, "site/dump.sql")).expect("read"), data);
}

#[tokio::test]
async fn a_changed_files_chunks_from_its_previous_version_are_presumed_stored() {
    let f = fixture();
    let (old, data) = back_up_a_dump_then_change_it(&f).await;
    f.remote.asked.lock().expect("lock").clear();
    let uploaded_before = f.remote.uploaded_ids.lock().expect("lock").len();
    let r = backup(&f, Arc::new(FsOpener)).await;
    assert_eq!((r.files_read, r.bytes_read), (1, 200_000));
    let new = latest_entry(&f, b"site/dump.sql").await;
    let (kept, fresh): (Vec<_>, Vec<_>) = new.chunks.iter().partition(|id| old.chunks.contains(id));
    assert!(
        kept.len() > 30 && !fresh.is_empty(),
        "{} kept, {} new",
        kept.len(),
        fresh.len()
    );
    let asked = f.remote.asked.lock().expect("lock").clone();
    let uploaded = f.remote.uploaded_ids.lock().expect("lock")[uploaded_before..].to_vec();
    for id in &kept {
        assert!(
            !asked.contains(id) && !uploaded.contains(id),
            "a kept chunk was asked about or sent"
        );
    }
    for id in &fresh {
        assert!(
            asked.contains(id) && uploaded.contains(id),
            "a new chunk was not stored"
        );
    }
    assert_dump_restores(&f, &data).await;
}

#[tokio::test]
async fn a_presumed_chunk_the_controller_lost_is_stored_by_a_pass_without_the_cache() {
    let f = fixture();
    let (old, data) = back_up_a_dump_then_change_it(&f).await;
    // The first chunk is before the change: presumed stored, but the controller lost it.
    let lost = old.chunks[0];
    f.remote.blobs.lock().expect("lock").remove(&lost);
    let r = backup(&f, Arc::new(FsOpener)).await;
    assert_eq!(
        r.files_read, 4,
        "the commit refused; every file was read again"
    );
    assert!(f.remote.blobs.lock().expect("lock").contains_key(&lost));
    assert_eq!(latest_entry(&f, b"site/dump.sql").await.chunks[0], lost);
    assert_dump_restores(&f, &data).await;
}

#[tokio::test]
async fn damaged_chunk_fails_naming_the_file_and_leaves_no_damaged_file() {
    let f = fixture();
    backup(&f, Arc::new(FsOpener)).await;
    let bad = latest_entry(&f, b"site/big.bin").await.chunks[0];
    // Corrupt the stored blob: restore must notice (AEAD) and name the file.
    f.remote
        .blobs
        .lock()
        .expect("lock")
        .get_mut(&bad)
        .expect("blob")[40] ^= 1;
    let err = restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("big.bin") && msg.contains("authentication"),
        "{msg}"
    );
    assert_eq!(err.exit_code(), lifeboat_common::exit::ERROR);
    let dir = restored(&f, "site");
    assert!(!dir.join("big.bin").exists());
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(write::TMP_PREFIX)
        })
        .collect();
    assert!(leftovers.is_empty());
    // A DataLoss answer from the controller is reported the same way.
    f.remote.damaged.lock().expect("lock").insert(bad);
    let msg = restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect_err("must fail")
        .to_string();
    assert!(msg.contains("big.bin") && msg.contains("damaged"), "{msg}");
}

/// A chunk whose primary copy is damaged (a sound copy in the secondary region): the unchecked
/// read hands the damaged blob over, it does not open, and only that chunk is asked for again
/// with the controller checking, which serves the sound copy; the restore is byte for byte.
#[tokio::test]
async fn a_blob_that_does_not_open_is_asked_for_again_checked_and_restores() {
    let f = fixture();
    backup(&f, Arc::new(FsOpener)).await;
    let big = latest_entry(&f, b"site/big.bin").await;
    let small = latest_entry(&f, b"site/index.html").await;
    let damaged = [big.chunks[0], small.chunks[0]];
    f.remote
        .damaged_primary
        .lock()
        .expect("lock")
        .extend(damaged);
    restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restored from the sound copies");
    let dir = restored(&f, "site");
    assert_eq!(
        fs::read(dir.join("big.bin")).expect("read"),
        pseudo_random(100_000, 1)
    );
    assert_eq!(
        fs::read(dir.join("index.html")).expect("read"),
        b"<h1>hello</h1>"
    );
    let mut checked = f.remote.checked_reads.lock().expect("lock").clone();
    checked.sort();
    checked.dedup();
    let mut want = damaged.to_vec();
    want.sort();
    assert_eq!(
        checked, want,
        "only the blobs that did not open are asked for checked"
    );
}

#[tokio::test]
async fn delete_removes_what_the_snapshot_lacks_but_keeps_excluded_paths() {
    let f = fixture();
    backup(&f, Arc::new(FsOpener)).await;
    restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restore");
    fs::write(restored(&f, "site/shell.php"), b"<?php system($_GET['c']);").expect("write");
    fs::write(restored(&f, "site/keep.swp"), b"swap").expect("write");
    let rep = restore(
        &f.remote,
        &keys(),
        &opts(&f, false, Some(f.root.join("site"))),
    )
    .await
    .expect("restore");
    assert_eq!(rep.deleted, 0);
    assert!(
        restored(&f, "site/shell.php").exists(),
        "nothing is deleted without --delete"
    );
    let rep = restore(
        &f.remote,
        &keys(),
        &opts(&f, true, Some(f.root.join("site"))),
    )
    .await
    .expect("restore");
    assert_eq!(rep.deleted, 1);
    assert!(!restored(&f, "site/shell.php").exists());
    assert!(
        restored(&f, "site/keep.swp").exists(),
        "excluded paths survive --delete"
    );
}

/// Seals `data` into the remote and returns its manifest entry at `path`.
fn stored_file(remote: &MemoryRemote, path: &str, data: &[u8]) -> Entry {
    let k = keys();
    let id = k.chunk_id(data);
    remote
        .blobs
        .lock()
        .expect("lock")
        .insert(id, blob::seal(&k, &id, data, 3).expect("seal"));
    Entry {
        path: path.as_bytes().to_vec(),
        kind: EntryKind::File as i32,
        mode: 0o644,
        size: data.len() as u64,
        chunks: vec![id],
        chunk_sizes: vec![data.len() as u32],
        ..Entry::default()
    }
}

#[tokio::test]
async fn crafted_symlink_escape_is_refused_and_nothing_is_written_outside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let remote = MemoryRemote::default();
    let header = ManifestHeader {
        source: "web".into(),
        kind: "files".into(),
        roots: vec![b"/var/www".to_vec()],
        chunker: Some(SMALL.into()),
        ..ManifestHeader::default()
    };
    let mut w = ManifestWriter::new(&header);
    w.push(&Entry {
        kind: EntryKind::Dir as i32,
        mode: 0o755,
        ..Entry::default()
    });
    w.push(&Entry {
        path: b"a".to_vec(),
        kind: EntryKind::Symlink as i32,
        symlink_target: outside.display().to_string().into_bytes(),
        ..Entry::default()
    });
    w.push(&stored_file(&remote, "a/x", b"pwned"));
    w.push(&stored_file(&remote, "ok.txt", b"fine"));
    let mut d = manifest::Decoder::new();
    d.feed(&w.finish()).expect("decode");
    let m = d.finish().expect("decode");
    let out = dir.path().join("restore");
    let o = RestoreOptions {
        source: "web".into(),
        snapshot: "latest".into(),
        target: Target::To(out.clone()),
        path: None,
        delete: true,
        excludes: PathPatterns::default(),
        scratch_dir: None,
    };
    let err = restore_manifest(&remote, &keys(), m, &o)
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, AgentError::Refused(v) if v.len() == 1 && v[0].contains("/var/www/a/x")),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&outside).expect("ls").count(),
        0,
        "nothing written outside the root"
    );
    assert_eq!(
        fs::read(out.join("var/www/ok.txt")).expect("read"),
        b"fine",
        "the rest is restored"
    );

    // `..` entries never get this far: decode rejects them.
    let mut w = ManifestWriter::new(&header);
    w.push(&stored_file(&remote, "../escape", b"x"));
    assert!(matches!(
        manifest::decode(&w.finish()),
        Err(manifest::ManifestError::InvalidEntry { .. })
    ));
}

#[tokio::test]
async fn backup_progress_is_told_with_the_walked_total() {
    let f = fixture();
    let seen: Arc<std::sync::Mutex<Vec<crate::backup::BackupProgress>>> = Arc::default();
    let sink = seen.clone();
    let ctx = BackupContext {
        progress: Arc::new(move |p| sink.lock().expect("lock").push(p.clone())),
        ..backup_context(&f, Arc::new(FsOpener))
    };
    backup_source(&ctx, &source(&f.root, &["*.swp"]))
        .await
        .expect("backup");
    let seen = seen.lock().expect("lock");
    let first = seen.first().expect("at least one progress report");
    assert_eq!(first.source, "web");
    // index.html + big.bin + copy.bin (x.swp is excluded by the walk).
    assert_eq!(first.bytes_total, 14 + 100_000 + 100_000);
    assert!(
        first.bytes_done > 0 && first.bytes_done <= first.bytes_total,
        "{first:?}"
    );
}

/// A `*.sql` file in a files source is chunked with the dump parameters (8 KiB average, not
/// the source's), its manifest entry says so, and the restore's unchanged check uses them.
#[tokio::test]
async fn dump_files_are_chunked_small_and_checked_with_their_parameters() {
    let f = fixture();
    let mut sql = String::new();
    for i in 0..8_000 {
        sql.push_str(&format!(
            "INSERT INTO t VALUES ({i}, 'row {i} {}');\n",
            i * 7919 % 1000
        ));
    }
    fs::write(f.root.join("site/shop.sql"), &sql).expect("write");
    let mut src = source(&f.root, &["*.swp"]);
    src.chunker = ChunkerParams::FILES;
    src.dump_files = PathPatterns::new(&["*.sql".into()]).expect("patterns");
    backup_source_with(&f, Arc::new(FsOpener), &src).await;
    let (_, m) = fetch::load_manifest(&f.remote, &keys(), "latest", "web", None)
        .await
        .expect("manifest");
    let m = m.decode_all().expect("decode");
    let entry = |name: &[u8]| {
        m.entries
            .iter()
            .find(|e| e.path == name)
            .cloned()
            .expect("entry")
    };
    let dump = entry(b"site/shop.sql");
    assert_eq!(
        dump.chunker.as_ref().and_then(|c| c.params()),
        Some(ChunkerParams::DUMPS)
    );
    assert!(
        dump.chunk_sizes.len() >= 8,
        "{} bytes in 8 KiB chunks, not one 1 MiB chunk: {:?}",
        sql.len(),
        dump.chunk_sizes
    );
    assert_eq!(
        entry(b"site/big.bin").chunker,
        None,
        "others use the header's"
    );

    restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restore");
    let rep = restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restore again");
    assert_eq!(
        (rep.files_written, rep.files_unchanged),
        (0, 4),
        "the dump re-chunked with its own parameters is found unchanged"
    );
}

/// A file of more than two units' worth of chunks is fetched batch after batch, the next one
/// while the current one is written (with `O_DIRECT` where the filesystem allows it, its length
/// not a multiple of the direct writes' alignment): it restores byte for byte with its mtime,
/// and a damaged chunk in its last batch fails naming it and leaves neither the file nor a
/// temporary one.
#[tokio::test]
async fn a_file_of_many_units_restores_and_a_late_damaged_chunk_leaves_nothing() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    let data = pseudo_random((3 << 20) + 1_234, 9);
    fs::write(f.root.join("site/large.bin"), &data).expect("write");
    backup(&f, Arc::new(FsOpener)).await;
    let e = latest_entry(&f, b"site/large.bin").await;
    assert!(
        e.chunk_sizes.len() > 2 * files::UNIT_IDS,
        "{} chunks: not several units",
        e.chunk_sizes.len()
    );
    let last = *e.chunks.last().expect("chunks");
    restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect("restore");
    assert_eq!(
        fs::read(restored(&f, "site/large.bin")).expect("read"),
        data
    );
    let (src, out) = (
        fs::metadata(f.root.join("site/large.bin")).expect("stat source"),
        fs::metadata(restored(&f, "site/large.bin")).expect("stat restored"),
    );
    assert_eq!(
        (out.mtime(), out.mtime_nsec()),
        (src.mtime(), src.mtime_nsec()),
        "the mtime is set after the file is cut to its length"
    );
    fs::remove_dir_all(&f.out).expect("clean");
    f.remote.damaged.lock().expect("lock").insert(last);
    let msg = restore(&f.remote, &keys(), &opts(&f, false, None))
        .await
        .expect_err("must fail")
        .to_string();
    assert!(
        msg.contains("large.bin") && msg.contains("damaged"),
        "{msg}"
    );
    let dir = restored(&f, "site");
    assert!(!dir.join("large.bin").exists());
    assert!(
        fs::read_dir(&dir)
            .expect("ls")
            .filter_map(Result::ok)
            .all(|e| !e
                .file_name()
                .to_string_lossy()
                .starts_with(write::TMP_PREFIX)),
        "a temporary file was left behind"
    );
}
