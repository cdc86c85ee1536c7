//! Restores of hostile manifests, as a compromised agent could write them: well formed and sealed
//! with the real data keys, so only the manifest's own checks and the restore's path checks stand
//! in the way. Each test runs the whole pipeline ([`restore`]: fetch and verify the manifest
//! chunks, decode, write) against the in-memory controller and checks that the restore refuses
//! or skips the entry with a clear error, writes nothing outside its root, never creates a
//! device node, fifo or socket, and never trusts a declared size.
//!
//! The manifest format cannot express device nodes, fifos or sockets: the entry kind is one of
//! file, directory or symlink, and `mode` holds permission bits only (`<= 0o7777`), so both an
//! unknown kind and file-type bits in `mode` are refused when the manifest is decoded.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_common::blob::{self, MAX_CHUNK_LEN};
use lifeboat_common::chunker::ChunkerParams;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::{DataKeys, MasterKey};
use lifeboat_common::manifest::{
    Entry, EntryKind, ManifestError, ManifestHeader, ManifestWriter, Trailer,
};
use prost::Message;

use super::*;
use crate::config::PathPatterns;
use crate::remote::SnapshotInfo;
use crate::remote::memory::MemoryRemote;

fn keys() -> DataKeys {
    MasterKey::from_bytes([7; 32]).data_keys()
}

fn header(roots: &[&str]) -> ManifestHeader {
    ManifestHeader {
        source: "web".into(),
        kind: "files".into(),
        roots: roots.iter().map(|r| r.as_bytes().to_vec()).collect(),
        chunker: Some(ChunkerParams::FILES.into()),
        ..ManifestHeader::default()
    }
}

fn dir(root: u32, path: &str, mode: u32) -> Entry {
    Entry {
        root,
        path: path.as_bytes().to_vec(),
        kind: EntryKind::Dir as i32,
        mode,
        ..Entry::default()
    }
}

fn link(root: u32, path: &str, to: &Path) -> Entry {
    Entry {
        root,
        path: path.as_bytes().to_vec(),
        kind: EntryKind::Symlink as i32,
        symlink_target: to.display().to_string().into_bytes(),
        ..Entry::default()
    }
}

/// Seals `data` as one chunk into the remote; returns its id.
fn store_chunk(remote: &MemoryRemote, data: &[u8]) -> ChunkId {
    let k = keys();
    let id = k.chunk_id(data);
    let sealed = blob::seal(&k, &id, data, 3).expect("seal");
    remote.blobs.lock().expect("lock").insert(id, sealed);
    id
}

/// A file entry holding `data` as one stored chunk, declared honestly.
fn file(remote: &MemoryRemote, root: u32, path: &str, data: &[u8]) -> Entry {
    Entry {
        root,
        path: path.as_bytes().to_vec(),
        kind: EntryKind::File as i32,
        mode: 0o644,
        size: data.len() as u64,
        chunks: vec![store_chunk(remote, data)],
        chunk_sizes: vec![data.len() as u32],
        ..Entry::default()
    }
}

/// Seals raw manifest bytes (in 64 KiB chunks, as a compromised agent would upload them) and
/// commits them as the latest snapshot of source "web".
fn commit_manifest(remote: &MemoryRemote, bytes: &[u8]) {
    let k = keys();
    let manifest_ids = bytes
        .chunks(64 << 10)
        .map(|c| {
            store_chunk(remote, c);
            k.chunk_id(c)
        })
        .collect();
    remote.snapshots.lock().expect("lock").push(SnapshotInfo {
        id: format!("{:016x}", bytes.len()),
        source: "web".into(),
        started_at_unix_ms: 0,
        finished_at_unix_ms: 0,
        committed_at_unix_ms: 0,
        stats: Default::default(),
        stored_bytes: 0,
        manifest_ids,
        reference_count: 0,
    });
}

fn manifest(h: &ManifestHeader, entries: &[Entry]) -> Vec<u8> {
    let mut w = ManifestWriter::new(h);
    for e in entries {
        w.push(e);
    }
    w.finish()
}

struct Scene {
    dir: tempfile::TempDir,
    remote: MemoryRemote,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("victim"), b"original").expect("write");
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o750)).expect("chmod");
        Scene {
            dir,
            remote: MemoryRemote::default(),
        }
    }
    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("restore")
    }
    async fn restore(&self, bytes: &[u8]) -> Result<RestoreReport, AgentError> {
        commit_manifest(&self.remote, bytes);
        let o = RestoreOptions {
            source: "web".into(),
            snapshot: "latest".into(),
            target: Target::To(self.out()),
            path: None,
            delete: false,
            excludes: PathPatterns::default(),
            scratch_dir: None,
        };
        restore(&self.remote, &keys(), &o).await
    }
    /// Nothing outside the restore root changed, and the root holds only files, directories
    /// and symlinks (no device node, fifo or socket, no temporary file left behind).
    fn assert_contained(&self) {
        let outside = self.outside();
        let names: Vec<_> = fs::read_dir(&outside)
            .expect("ls outside")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["victim"], "nothing created outside the root");
        assert_eq!(
            fs::read(outside.join("victim")).expect("read victim"),
            b"original"
        );
        let meta = fs::metadata(&outside).expect("stat outside");
        assert_eq!(meta.mode() & 0o7777, 0o750, "outside dir mode untouched");
        assert!(meta.mtime() > 1_000_000_000, "outside dir mtime untouched");
        walk(&self.out());
    }
}

fn walk(p: &Path) {
    let Ok(rd) = fs::read_dir(p) else { return };
    for e in rd {
        let e = e.expect("entry");
        let t = e.file_type().expect("type");
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            t.is_file() || t.is_dir() || t.is_symlink(),
            "{} is a special file",
            e.path().display()
        );
        assert!(
            !name.starts_with(write::TMP_PREFIX),
            "temporary file left: {}",
            e.path().display()
        );
        if t.is_dir() {
            walk(&e.path());
        }
    }
}

fn manifest_error(err: &AgentError) -> &ManifestError {
    match err {
        AgentError::Manifest { source, .. } => source,
        other => panic!("expected a manifest error, got {other}"),
    }
}

#[tokio::test]
async fn device_nodes_fifos_and_sockets_cannot_be_expressed() {
    // Unknown kinds (4..: what a "device" kind would be) and file-type bits in `mode`
    // (S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK) are each refused, naming the entry.
    let s = Scene::new();
    let mut bad = Vec::new();
    for kind in [0, 4, 5, 6, 0x7fff_ffff, -1] {
        bad.push((
            format!("kind {kind}"),
            Entry {
                kind,
                ..dir(0, "dev", 0o644)
            },
        ));
    }
    for (what, mode) in [
        ("chr", 0o020_644),
        ("blk", 0o060_644),
        ("fifo", 0o010_644),
        ("sock", 0o140_755),
    ] {
        bad.push((what.to_owned(), file(&s.remote, 0, what, b"x")));
        bad.last_mut().expect("pushed").1.mode = mode;
    }
    for (what, e) in bad {
        let bytes = manifest(&header(&["/var/www"]), &[dir(0, "", 0o755), e.clone()]);
        let err = s.restore(&bytes).await.expect_err(&what);
        let m = manifest_error(&err);
        assert!(
            matches!(m, ManifestError::InvalidEntry { path, reason }
                if *path == e.display_path()
                    && (reason.contains("unknown entry kind") || reason.contains("mode"))),
            "{what}: {err}"
        );
        assert!(err.to_string().contains(&e.display_path()), "{err}");
    }
    assert!(
        !s.out().join("var").exists(),
        "a refused manifest writes nothing"
    );
    s.assert_contained();
}

#[tokio::test]
async fn absurd_sizes_are_refused_and_never_allocated() {
    let s = Scene::new();
    let honest = file(&s.remote, 0, "f", b"hello");
    let cases = [
        // 1 EiB declared, one 5-byte chunk.
        (
            "1 EiB",
            Entry {
                size: 1 << 60,
                ..honest.clone()
            },
        ),
        // A chunk size beyond the largest chunk, adding up to the declared size.
        (
            "huge chunk",
            Entry {
                size: u64::from(u32::MAX),
                chunk_sizes: vec![u32::MAX],
                ..honest.clone()
            },
        ),
        // Chunk sizes that do not add up to the declared size.
        (
            "sizes disagree",
            Entry {
                size: 6,
                ..honest.clone()
            },
        ),
        // More sizes than chunk ids.
        (
            "ids and sizes",
            Entry {
                size: 10,
                chunk_sizes: vec![5, 5],
                ..honest.clone()
            },
        ),
        // Contents on a directory.
        (
            "dir with size",
            Entry {
                size: 1 << 60,
                ..dir(0, "d", 0o755)
            },
        ),
    ];
    for (what, e) in cases {
        let bytes = manifest(&header(&["/var/www"]), &[e]);
        let err = s.restore(&bytes).await.expect_err(what);
        assert!(
            matches!(manifest_error(&err), ManifestError::InvalidEntry { reason, .. }
                if reason.contains("size") || reason.contains("contents")),
            "{what}: {err}"
        );
    }
    assert!(!s.out().join("var").exists());
    s.assert_contained();
}

#[tokio::test]
async fn chunk_sizes_that_lie_about_the_real_chunks_leave_no_file() {
    // Declared sizes add up, but the stored chunks are longer or shorter than declared: the
    // restore stops at the first lying chunk, names the file, and leaves nothing behind.
    let s = Scene::new();
    for (what, declared) in [("longer", 3u32), ("shorter", MAX_CHUNK_LEN as u32)] {
        let e = Entry {
            size: u64::from(declared),
            chunk_sizes: vec![declared],
            ..file(&s.remote, 0, "lies.bin", b"hello")
        };
        let bytes = manifest(&header(&["/var/www"]), &[dir(0, "", 0o755), e]);
        let err = s.restore(&bytes).await.expect_err(what);
        let msg = err.to_string();
        assert!(
            msg.contains("/var/www/lies.bin") && msg.contains("the manifest says"),
            "{what}: {msg}"
        );
        assert!(!s.out().join("var/www/lies.bin").exists(), "{what}");
    }
    s.assert_contained();
}

#[tokio::test]
async fn declared_lengths_and_counts_are_never_trusted() {
    let s = Scene::new();
    let h = header(&["/var/www"]);
    // An entry whose length prefix claims 2^60 bytes: refused before any allocation.
    let mut bytes = manifest(&h, &[]);
    // Drop the end marker (0x00) and the delimited trailer {entries: 0}.
    let end = 1 + Trailer { entries: 0 }
        .encode_length_delimited_to_vec()
        .len();
    bytes.truncate(bytes.len() - end);
    prost::encoding::encode_varint(1 << 60, &mut bytes);
    bytes.extend_from_slice(b"tiny");
    let err = s.restore(&bytes).await.expect_err("huge length");
    assert!(
        matches!(manifest_error(&err),
            ManifestError::Corrupt(r) if r.contains("exceeds the limit")),
        "{err}"
    );
    // A trailer claiming u64::MAX entries for two real ones.
    let mut bytes = manifest(&h, &[dir(0, "", 0o755), dir(0, "a", 0o755)]);
    let trailer_len = Trailer { entries: 2 }.encoded_len() + 1;
    bytes.truncate(bytes.len() - trailer_len);
    Trailer { entries: u64::MAX }
        .encode_length_delimited(&mut bytes)
        .expect("encode");
    let err = s.restore(&bytes).await.expect_err("count");
    assert!(
        matches!(manifest_error(&err), ManifestError::Corrupt(r) if r.contains("trailer")),
        "{err}"
    );
    assert!(!s.out().join("var").exists());
    s.assert_contained();
}

#[tokio::test]
async fn huge_entry_counts_cost_only_their_real_bytes() {
    // 50 000 entries (about 1 MiB of manifest) decode and restore; memory follows the manifest's
    // real bytes, and a path repeated once among them is refused as a duplicate.
    let s = Scene::new();
    let h = header(&["/var/www"]);
    let mut entries = vec![dir(0, "", 0o755)];
    for i in 0..50 {
        entries.push(dir(0, &format!("d{i}"), 0o755));
        for j in 0..999 {
            entries.push(link(0, &format!("d{i}/l{j}"), Path::new("../x")));
        }
    }
    let bytes = manifest(&h, &entries);
    let report = s.restore(&bytes).await.expect("restore");
    assert_eq!((report.dirs, report.symlinks), (51, 49_950));
    entries.push(link(0, "d7/l500", Path::new("elsewhere")));
    let err = s.restore(&manifest(&h, &entries)).await.expect_err("dup");
    assert!(
        matches!(manifest_error(&err), ManifestError::Duplicate { path } if path == "d7/l500"),
        "{err}"
    );
    s.assert_contained();
}

#[tokio::test]
async fn duplicate_paths_are_refused_naming_the_path() {
    let s = Scene::new();
    let h = header(&["/var/www"]);
    for (what, second) in [
        ("file twice", file(&s.remote, 0, "a", b"second")),
        ("file then dir", dir(0, "a", 0o755)),
        ("file then link", link(0, "a", &s.outside())),
    ] {
        let first = file(&s.remote, 0, "a", b"first");
        let bytes = manifest(&h, &[dir(0, "", 0o755), first, second]);
        let err = s.restore(&bytes).await.expect_err(what);
        assert!(
            matches!(manifest_error(&err), ManifestError::Duplicate { path } if path == "a"),
            "{what}: {err}"
        );
        assert!(err.to_string().contains("\"a\" twice"), "{err}");
    }
    assert!(!s.out().join("var").exists());
    s.assert_contained();
}

#[tokio::test]
async fn a_file_used_as_a_directory_is_refused_and_the_rest_restored() {
    let s = Scene::new();
    let bytes = manifest(
        &header(&["/var/www"]),
        &[
            dir(0, "", 0o755),
            file(&s.remote, 0, "a", b"a file"),
            dir(0, "a/b", 0o755),
            file(&s.remote, 0, "a/b/c", b"below a file"),
            file(&s.remote, 0, "ok", b"fine"),
        ],
    );
    let err = s.restore(&bytes).await.expect_err("refused");
    let AgentError::Refused(why) = &err else {
        panic!("expected refusals, got {err}");
    };
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(
        why.iter().all(|w| w.contains("is not a directory")),
        "{why:?}"
    );
    let root = s.out().join("var/www");
    assert_eq!(fs::read(root.join("a")).expect("a"), b"a file");
    assert_eq!(fs::read(root.join("ok")).expect("ok"), b"fine");
    s.assert_contained();
}

#[tokio::test]
async fn absolute_and_dot_dot_paths_and_roots_are_refused() {
    let s = Scene::new();
    let outside = s.outside().join("victim").display().to_string();
    let escaping = [
        outside.as_str(),
        "/etc/passwd",
        "../../outside/victim",
        "a/../../x",
        "./x",
        "a/./x",
        "a//x",
        "a/",
        "a\0b",
    ];
    for p in escaping {
        let bytes = manifest(
            &header(&["/var/www"]),
            &[dir(0, "", 0o755), file(&s.remote, 0, p, b"pwned")],
        );
        let err = s.restore(&bytes).await.expect_err(p);
        assert!(
            matches!(manifest_error(&err), ManifestError::InvalidEntry { .. }),
            "{p:?}: {err}"
        );
    }
    let long = "x/".repeat(2100) + "x";
    let bytes = manifest(&header(&["/var/www"]), &[dir(0, &long, 0o755)]);
    let err = s.restore(&bytes).await.expect_err("long");
    assert!(err.to_string().contains("path too long"), "{err}");
    for root in [
        "var/www",
        "/var/../outside",
        "//etc",
        "/var/www/",
        "",
        "/a\0b",
    ] {
        let bytes = manifest(&header(&[root]), &[dir(0, "", 0o755)]);
        let err = s.restore(&bytes).await.expect_err(root);
        assert!(
            matches!(manifest_error(&err), ManifestError::Corrupt(r) if r.contains("invalid root")),
            "{root:?}: {err}"
        );
    }
    let bytes = manifest(&header(&["/var/www"]), &[dir(3, "", 0o755)]);
    let err = s.restore(&bytes).await.expect_err("root index");
    assert!(err.to_string().contains("root index out of range"), "{err}");
    assert!(!s.out().join("var").exists());
    s.assert_contained();
}

#[tokio::test]
async fn symlink_escapes_through_relative_links_and_overlapping_roots_are_refused() {
    // A relative link climbing out of the root, then a file through it; the same with the
    // link in one root and the file in another root that overlaps it.
    let s = Scene::new();
    let climb = Path::new("../../../outside");
    let bytes = manifest(
        &header(&["/var/www", "/var/www/b"]),
        &[
            dir(0, "", 0o755),
            link(0, "a", climb),
            file(&s.remote, 0, "a/victim", b"pwned"),
            link(0, "b", &s.outside()),
            file(&s.remote, 1, "victim", b"pwned"),
            file(&s.remote, 1, "new", b"pwned"),
        ],
    );
    let err = s.restore(&bytes).await.expect_err("refused");
    let AgentError::Refused(why) = &err else {
        panic!("expected refusals, got {err}");
    };
    assert_eq!(why.len(), 3, "{why:?}");
    assert!(why.iter().all(|w| w.contains("is a symlink")), "{why:?}");
    s.assert_contained();
}

#[tokio::test]
async fn directory_metadata_never_follows_a_link_that_replaced_the_directory() {
    // The same root twice: root 0 restores directories "a" (explicit, mode 0777, mtime 0) and
    // "p" (created as the parent of "p/x"); root 1 then puts symlinks to the outside at the
    // same places. Directory modes and times are applied at the end: they must not be applied
    // through the links to the outside directory.
    let s = Scene::new();
    let outside = s.outside();
    let before = fs::metadata(&outside).expect("stat");
    let bytes = manifest(
        &header(&["/var/www", "/var/www"]),
        &[
            dir(0, "", 0o755),
            dir(0, "a", 0o777),
            file(&s.remote, 0, "p/x", b"x"),
            link(1, "a", &outside),
            link(1, "p", &outside),
        ],
    );
    s.restore(&bytes).await.expect("restore");
    let after = fs::metadata(&outside).expect("stat");
    assert_eq!(after.mode() & 0o7777, 0o750, "mode applied through a link");
    assert_eq!(
        after.mtime(),
        before.mtime(),
        "mtime applied through a link"
    );
    let root = s.out().join("var/www");
    for l in ["a", "p"] {
        let m = fs::symlink_metadata(root.join(l)).expect("stat link");
        assert!(m.file_type().is_symlink(), "{l} is the later entry: a link");
    }
    s.assert_contained();
}

#[tokio::test]
async fn links_planted_in_the_target_are_replaced_never_followed() {
    // Someone with write access to the restore directory planted links where the snapshot has
    // a file, a directory, and a parent directory.
    let s = Scene::new();
    let root = s.out().join("var/www");
    fs::create_dir_all(&root).expect("mkdir");
    symlink(s.outside().join("victim"), root.join("f")).expect("link f");
    symlink(s.outside(), root.join("d")).expect("link d");
    symlink(s.outside(), root.join("p")).expect("link p");
    let bytes = manifest(
        &header(&["/var/www"]),
        &[
            dir(0, "", 0o755),
            file(&s.remote, 0, "f", b"restored"),
            dir(0, "d", 0o700),
            file(&s.remote, 0, "d/inner", b"inside"),
            file(&s.remote, 0, "p/victim", b"pwned"),
        ],
    );
    let err = s.restore(&bytes).await.expect_err("p/victim refused");
    assert!(
        matches!(&err,
            AgentError::Refused(w) if w.len() == 1 && w[0].contains("/var/www/p/victim")),
        "{err}"
    );
    assert_eq!(fs::read(root.join("f")).expect("f"), b"restored");
    assert!(fs::symlink_metadata(root.join("f")).expect("f").is_file());
    assert!(fs::symlink_metadata(root.join("d")).expect("d").is_dir());
    assert_eq!(fs::read(root.join("d/inner")).expect("inner"), b"inside");
    s.assert_contained();
}

#[tokio::test]
async fn a_fifo_planted_in_the_target_is_replaced_never_opened() {
    // Opening a fifo for reading or writing blocks until a peer appears: the restore must not
    // open what is in the way (the "unchanged file" check only opens regular files).
    let s = Scene::new();
    let root = s.out().join("var/www");
    fs::create_dir_all(&root).expect("mkdir");
    for name in ["f", "same-size"] {
        let st = std::process::Command::new("mkfifo")
            .arg(root.join(name))
            .status()
            .expect("run mkfifo");
        assert!(st.success(), "mkfifo {name}");
    }
    let bytes = manifest(
        &header(&["/var/www"]),
        &[
            dir(0, "", 0o755),
            file(&s.remote, 0, "f", b"restored"),
            // Empty, like the fifo's size: only the file type tells them apart.
            Entry {
                size: 0,
                chunks: Vec::new(),
                chunk_sizes: Vec::new(),
                ..file(&s.remote, 0, "same-size", b"x")
            },
        ],
    );
    let report = tokio::time::timeout(Duration::from_secs(60), s.restore(&bytes))
        .await
        .expect("the restore hung on a fifo")
        .expect("restore");
    assert_eq!(report.files_written, 2);
    assert_eq!(fs::read(root.join("f")).expect("f"), b"restored");
    assert!(
        fs::symlink_metadata(root.join("same-size"))
            .expect("stat")
            .is_file()
    );
    s.assert_contained();
}
