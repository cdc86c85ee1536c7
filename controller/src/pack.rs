//! Packs: immutable objects holding many blobs, so the store sees few large objects.
//!
//! Byte layout, pack format version 1 (do not modify; a change is a new version):
//!
//! ```text
//! blob 0 · blob 1 · … · blob n-1            the blobs, back to back, as uploaded
//! entry 0 · … · entry n-1                   the index, 76 bytes per entry:
//!     chunk id (32) · offset u64 LE (8) · length u32 LE (4) · BLAKE3 of the blob (32)
//! entry count u32 LE (4)
//! magic b"LBPK" (4) · version u8 = 1 (1)
//! ```
//!
//! The pack's object key is `packs/<first 2 hex>/<64 hex>` where the name is the BLAKE3 hash of
//! the whole pack, so the chunk index can be rebuilt from the packs alone ([`parse_footer`]).
//! Entries are in blob order and do not overlap. [`parse_footer`] validates everything (lengths,
//! bounds, order) before allocating and never panics on hostile input.

use std::collections::HashSet;

use bytes::Bytes;
use lifeboat_common::ids::{CHUNK_ID_LEN, ChunkId};
use thiserror::Error;

/// Magic at the end of every pack. Do not modify.
pub const PACK_MAGIC: [u8; 4] = *b"LBPK";
/// Pack format version. Do not modify the meaning of a shipped version.
pub const PACK_VERSION: u8 = 1;
/// Bytes per index entry.
pub const ENTRY_LEN: usize = CHUNK_ID_LEN + 8 + 4 + 32;
/// Bytes after the index: count, magic, version.
pub const TRAILER_LEN: usize = 4 + 4 + 1;
/// A pack is flushed once its blobs reach this size.
pub const TARGET_PACK_BYTES: usize = 16 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PackError {
    #[error("pack is too short ({0} bytes) to hold a footer")]
    Truncated(usize),
    #[error("not a pack (bad footer magic)")]
    BadMagic,
    #[error("pack format version {0} is not supported (knows 1)")]
    UnsupportedVersion(u8),
    #[error("pack index claims {count} entries, more than a {len}-byte pack can hold")]
    BadCount { count: u32, len: usize },
    #[error("pack index entry {index} points outside the blob area or overlaps the previous one")]
    BadEntry { index: usize },
}

/// One blob's place in a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub length: u32,
    /// BLAKE3 of the blob bytes.
    pub hash: [u8; 32],
}

/// The object key of a pack (or any content-addressed object) under `prefix`.
pub fn object_key(prefix: &str, name: &[u8; 32]) -> String {
    let h = hex::encode(name);
    format!("{prefix}/{}/{h}", &h[..2])
}

/// A pack being filled from one upload stream.
#[derive(Debug, Default)]
pub struct PackBuilder {
    data: Vec<u8>,
    entries: Vec<PackEntry>,
    ids: HashSet<ChunkId>,
}

/// A finished pack, ready to put.
#[derive(Debug, Clone)]
pub struct SealedPack {
    pub bytes: Bytes,
    /// BLAKE3 of `bytes`.
    pub name: [u8; 32],
    /// `packs/<2 hex>/<64 hex>`.
    pub key: String,
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `id` is already in this pack.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.ids.contains(id)
    }

    /// Appends a blob. The caller checks framing and size first; a duplicate id is ignored
    /// (returns false).
    pub fn push(&mut self, id: ChunkId, blob: &[u8]) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.entries.push(PackEntry {
            id,
            offset: self.data.len() as u64,
            length: blob.len() as u32,
            hash: *blake3::hash(blob).as_bytes(),
        });
        self.data.extend_from_slice(blob);
        true
    }

    /// Bytes of blobs held so far.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the pack reached its target size.
    pub fn is_full(&self) -> bool {
        self.data.len() >= TARGET_PACK_BYTES
    }

    /// Encodes the pack and empties the builder.
    pub fn finish(&mut self) -> SealedPack {
        let entries = std::mem::take(&mut self.entries);
        self.ids.clear();
        let data = std::mem::take(&mut self.data);
        let bytes = Bytes::from(encode(data, &entries));
        let name = *blake3::hash(&bytes).as_bytes();
        SealedPack {
            key: object_key("packs", &name),
            bytes,
            name,
            entries,
        }
    }
}

/// Appends the index footer for `entries` to the blob bytes `data`.
pub fn encode(mut data: Vec<u8>, entries: &[PackEntry]) -> Vec<u8> {
    data.reserve(entries.len() * ENTRY_LEN + TRAILER_LEN);
    for e in entries {
        data.extend_from_slice(e.id.as_bytes());
        data.extend_from_slice(&e.offset.to_le_bytes());
        data.extend_from_slice(&e.length.to_le_bytes());
        data.extend_from_slice(&e.hash);
    }
    data.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    data.extend_from_slice(&PACK_MAGIC);
    data.push(PACK_VERSION);
    data
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Reads and validates a pack's index.
pub fn parse_footer(pack: &[u8]) -> Result<Vec<PackEntry>, PackError> {
    let len = pack.len();
    if len < TRAILER_LEN {
        return Err(PackError::Truncated(len));
    }
    let t = &pack[len - TRAILER_LEN..];
    if t[4..8] != PACK_MAGIC {
        return Err(PackError::BadMagic);
    }
    if t[8] != PACK_VERSION {
        return Err(PackError::UnsupportedVersion(t[8]));
    }
    let count = u32::from_le_bytes(array(&t[..4]));
    let index_len = (count as usize)
        .checked_mul(ENTRY_LEN)
        .filter(|n| n + TRAILER_LEN <= len)
        .ok_or(PackError::BadCount { count, len })?;
    let data_end = (len - TRAILER_LEN - index_len) as u64;
    let index = &pack[data_end as usize..len - TRAILER_LEN];
    let mut entries = Vec::with_capacity(count as usize);
    let mut next_free = 0u64;
    for (i, e) in index.chunks_exact(ENTRY_LEN).enumerate() {
        let entry = PackEntry {
            id: ChunkId(array(&e[..32])),
            offset: u64::from_le_bytes(array(&e[32..40])),
            length: u32::from_le_bytes(array(&e[40..44])),
            hash: array(&e[44..76]),
        };
        let end = entry.offset.checked_add(u64::from(entry.length));
        if entry.offset < next_free || end.is_none_or(|end| end > data_end) {
            return Err(PackError::BadEntry { index: i });
        }
        next_free = end.unwrap_or(data_end);
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SealedPack {
        let mut b = PackBuilder::new();
        assert!(b.push(ChunkId([1; 32]), b"first blob"));
        assert!(b.push(ChunkId([2; 32]), b"second"));
        assert!(
            !b.push(ChunkId([1; 32]), b"first blob"),
            "duplicate ignored"
        );
        b.finish()
    }

    #[test]
    fn round_trip() {
        let p = sample();
        let entries = parse_footer(&p.bytes).expect("parse");
        assert_eq!(entries, p.entries);
        assert_eq!(entries.len(), 2);
        let e = &entries[1];
        let blob = &p.bytes[e.offset as usize..(e.offset + u64::from(e.length)) as usize];
        assert_eq!(blob, b"second");
        assert_eq!(&e.hash, blake3::hash(b"second").as_bytes());
        assert_eq!(p.name, *blake3::hash(&p.bytes).as_bytes());
        assert!(
            p.key
                .starts_with(&format!("packs/{}/", &hex::encode(p.name)[..2]))
        );
        assert_eq!(parse_footer(&encode(Vec::new(), &[])), Ok(vec![]));
    }

    #[test]
    fn truncated_and_garbage_fail_cleanly() {
        let p = sample();
        for cut in 0..p.bytes.len() {
            // Every strict prefix fails (no panic); suffixes of the right shape are not packs.
            assert!(parse_footer(&p.bytes[..cut]).is_err(), "prefix {cut}");
        }
        assert_eq!(parse_footer(b"short"), Err(PackError::Truncated(5)));
        assert_eq!(parse_footer(&[0u8; 64]), Err(PackError::BadMagic));
        let mut v = p.bytes.to_vec();
        let n = v.len();
        v[n - 1] = 9;
        assert_eq!(parse_footer(&v), Err(PackError::UnsupportedVersion(9)));
        let mut v = p.bytes.to_vec();
        v[n - TRAILER_LEN..n - TRAILER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_footer(&v), Err(PackError::BadCount { .. })));
        // An entry pointing past the blob area.
        let mut v = p.bytes.to_vec();
        let idx = n - TRAILER_LEN - 2 * ENTRY_LEN;
        v[idx + 32..idx + 40].copy_from_slice(&1_000_000u64.to_le_bytes());
        assert_eq!(parse_footer(&v), Err(PackError::BadEntry { index: 0 }));
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..300usize {
            let mut v: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if len >= TRAILER_LEN {
                v[len - 5..len - 1].copy_from_slice(&PACK_MAGIC);
                v[len - 1] = PACK_VERSION;
            }
            let _ = parse_footer(&v);
        }
    }
}
