//! Golden fixtures for the controller's formats, version 1: pack (blobs + index footer), reference
//! segment, snapshot record. Bytes written by an earlier build must still decode, forever. The
//! fixtures were generated once with `LIFEBOAT_WRITE_FIXTURES=1 cargo test -p lifeboat-controller
//! --test golden` and are committed; never regenerate them to make a test pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use lifeboat_common::ids::ChunkId;
use lifeboat_controller::pack::{PackBuilder, parse_footer};
use lifeboat_controller::record::SnapshotRecord;
use lifeboat_controller::refset;

fn fixture(name: &str) -> PathBuf {
    // The runtime value, as in common/tests/golden.rs: a build cache shared by clones in other
    // folders can hand back a binary whose compile-time checkout is gone.
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests/fixtures")
    .join(name)
}

fn write_or_read(name: &str, fresh: &[u8]) -> Vec<u8> {
    if std::env::var_os("LIFEBOAT_WRITE_FIXTURES").is_some() {
        std::fs::write(fixture(name), fresh).unwrap();
    }
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A framed (but not decryptable) blob: the controller never decrypts, it only checks framing.
fn fake_blob(i: u8) -> Vec<u8> {
    let mut b = b"LBBL\x01".to_vec();
    b.extend_from_slice(&[i; 24]);
    b.extend_from_slice(&vec![i ^ 0x5a; 17 + usize::from(i) * 3]);
    b
}

#[test]
fn pack_v1_still_parses() {
    let mut builder = PackBuilder::new();
    for i in 0..3u8 {
        builder.push(ChunkId([i + 1; 32]), &fake_blob(i));
    }
    let fresh = builder.finish();
    let bytes = write_or_read("pack-v1.bin", &fresh.bytes);
    assert_eq!(bytes, fresh.bytes.to_vec(), "pack encoding changed");
    let entries = parse_footer(&bytes).unwrap();
    assert_eq!(entries.len(), 3);
    let mut offset = 0u64;
    for (i, e) in entries.iter().enumerate() {
        let blob = fake_blob(i as u8);
        assert_eq!(e.id, ChunkId([i as u8 + 1; 32]));
        assert_eq!((e.offset, e.length as usize), (offset, blob.len()));
        assert_eq!(&bytes[e.offset as usize..][..blob.len()], &blob[..]);
        assert_eq!(e.hash, *blake3::hash(&blob).as_bytes());
        offset += blob.len() as u64;
    }
    assert_eq!(&bytes[bytes.len() - 5..], b"LBPK\x01");
}

#[test]
fn refs_v1_still_decode() {
    let ids: Vec<ChunkId> = (0..40u8)
        .map(|i| ChunkId([i.wrapping_mul(37); 32]))
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    let segs = refset::segments(&sorted);
    let joined: Vec<u8> = segs.iter().flat_map(|s| s.bytes.clone()).collect();
    let bytes = write_or_read("refs-v1.bin", &joined);
    assert_eq!(bytes, joined, "reference segment encoding changed");
    let decoded: Vec<ChunkId> = segs
        .iter()
        .flat_map(|s| refset::decode(&s.bytes).unwrap())
        .collect();
    assert_eq!(decoded, sorted);
}

#[test]
fn record_v1_still_parses() {
    let text = std::fs::read(fixture("record-v1.json")).expect("fixture record-v1.json");
    let r = SnapshotRecord::from_bytes(&text).unwrap();
    assert_eq!(r.format, 1);
    assert_eq!(r.agent, "web-01");
    assert_eq!(r.stats.files, 49);
    assert_eq!(r.manifest_ids.len(), 1);
    assert_eq!(r.ref_segments.len(), 2);
}
