//! Golden fixtures for format version 1: bytes written by an earlier build must still decode,
//! forever. The fixtures in `tests/fixtures/` were generated once with
//! `LIFEBOAT_WRITE_FIXTURES=1 cargo test -p lifeboat-common --test golden` and are committed; never
//! regenerate them to make a test pass — a failure here means a shipped format changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use lifeboat_common::blob;
use lifeboat_common::chunker::{Chunker, ChunkerParams};
use lifeboat_common::keys::MasterKey;
use lifeboat_common::manifest::{self, Entry, EntryKind, ManifestHeader, ManifestWriter};

fn fixture(name: &str) -> PathBuf {
    // The runtime value (cargo and nextest set it to this checkout): the compile-time one names
    // whichever checkout built the binary, and a build cache shared by clones in other folders
    // (CI) can hand back a binary whose checkout is gone.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    PathBuf::from(dir).join("tests/fixtures").join(name)
}

fn key() -> MasterKey {
    MasterKey::from_bytes(*b"lifeboat golden fixture key v1!!")
}

fn plaintext() -> Vec<u8> {
    b"<h1>DR PoC Web Page</h1>\n".repeat(40)
}

fn sample_manifest() -> Vec<u8> {
    let keys = key().data_keys();
    let header = ManifestHeader {
        source: "web".into(),
        kind: "files".into(),
        roots: vec![b"/var/www".to_vec()],
        chunker: Some(ChunkerParams::FILES.into()),
        created_at_unix_ms: 1_795_590_289_000,
        hostname: "vm1".into(),
        agent_version: "0.1.0".into(),
        database: None,
    };
    let mut w = ManifestWriter::new(&header);
    w.push(&Entry {
        root: 0,
        kind: EntryKind::Dir as i32,
        mode: 0o755,
        mtime_sec: 1_700_000_000,
        ..Default::default()
    });
    let data = plaintext();
    w.push(&Entry {
        root: 0,
        path: "html/index é.html".as_bytes().to_vec(),
        kind: EntryKind::File as i32,
        mode: 0o644,
        uid: 33,
        gid: 33,
        mtime_sec: 1_700_000_060,
        mtime_nsec: 123_456_789,
        size: data.len() as u64,
        chunks: vec![keys.chunk_id(&data)],
        chunk_sizes: vec![data.len() as u32],
        ..Default::default()
    });
    w.push(&Entry {
        root: 0,
        path: b"current".to_vec(),
        kind: EntryKind::Symlink as i32,
        mode: 0o777,
        symlink_target: b"html".to_vec(),
        ..Default::default()
    });
    w.finish()
}

#[test]
fn blob_v1_still_opens() {
    let keys = key().data_keys();
    let data = plaintext();
    let id = keys.chunk_id(&data);
    let path = fixture("blob-v1.bin");
    if std::env::var_os("LIFEBOAT_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, blob::seal(&keys, &id, &data, 3).unwrap()).unwrap();
        std::fs::write(fixture("blob-v1.id"), id.to_hex()).unwrap();
    }
    let bytes = std::fs::read(&path).expect("fixture blob-v1.bin");
    assert_eq!(&bytes[..5], b"LBBL\x01");
    assert_eq!(blob::open(&keys, &id, &bytes).unwrap(), data);
    assert_eq!(
        id.to_hex(),
        std::fs::read_to_string(fixture("blob-v1.id")).expect("fixture blob-v1.id"),
        "chunk id derivation changed"
    );
}

#[test]
fn manifest_v1_still_decodes() {
    let path = fixture("manifest-v1.bin");
    if std::env::var_os("LIFEBOAT_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, sample_manifest()).unwrap();
    }
    let bytes = std::fs::read(&path).expect("fixture manifest-v1.bin");
    assert_eq!(bytes, sample_manifest(), "manifest encoding changed");
    let m = manifest::decode(&bytes).unwrap();
    assert_eq!(m.entries.len(), 3);
    assert_eq!(m.entries[1].display_path(), "html/index é.html");
    assert_eq!(m.entries[2].entry_kind(), EntryKind::Symlink);
}

#[test]
fn chunker_v1_boundaries_are_stable() {
    // Boundaries for a fixed key and input are part of the format: dedup across versions needs them.
    let keys = key().data_keys();
    let mut x: u64 = 1;
    let data: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let params = ChunkerParams {
        min: 16 << 10,
        avg: 64 << 10,
        max: 256 << 10,
    };
    let lens: Vec<String> = Chunker::new(&data[..], params, keys.chunker_seed())
        .map(|c| c.unwrap().len().to_string())
        .collect();
    let path = fixture("chunker-v1.txt");
    if std::env::var_os("LIFEBOAT_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, lens.join("\n")).unwrap();
    }
    assert_eq!(
        lens.join("\n"),
        std::fs::read_to_string(&path).expect("fixture chunker-v1.txt")
    );
}
