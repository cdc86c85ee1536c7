//! Reference sets: the sorted, distinct chunk ids a snapshot references, stored as
//! content-addressed segment objects `refs/<2 hex>/<64 hex>` (name = BLAKE3 of the bytes).
//!
//! Segment layout, version 1 (do not modify):
//!
//! ```text
//! magic b"LBRF" (4) · version u8 = 1 (1) · chunk id (32) · chunk id (32) · …
//! ```
//!
//! Segmentation is content-defined so that consecutive snapshots, which share most ids, share
//! most segments: a segment is cut *after* an id whose first two bytes, read as a big-endian
//! u16, are divisible by [`CUT_MODULUS`] (about one id in 4096, ~128 KiB segments). The cut
//! points depend only on the ids, never on how they arrived.

use lifeboat_common::ids::{CHUNK_ID_LEN, ChunkId};
use thiserror::Error;

use crate::pack::object_key;

/// Segment magic. Do not modify.
pub const REFS_MAGIC: [u8; 4] = *b"LBRF";
/// Segment format version. Do not modify the meaning of a shipped version.
pub const REFS_VERSION: u8 = 1;
/// Cut after an id whose leading u16 (big-endian) is a multiple of this.
pub const CUT_MODULUS: u16 = 4096;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RefsError {
    #[error("reference segment is too short or not a whole number of ids ({0} bytes)")]
    BadLength(usize),
    #[error("not a reference segment (bad magic or version)")]
    BadHeader,
}

/// One encoded segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub key: String,
    pub bytes: Vec<u8>,
}

fn is_cut(id: &ChunkId) -> bool {
    u16::from_be_bytes([id.0[0], id.0[1]]).is_multiple_of(CUT_MODULUS)
}

/// Splits sorted, distinct ids into encoded segments.
pub fn segments(sorted: &[ChunkId]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let flush = |cur: &mut Vec<u8>, out: &mut Vec<Segment>| {
        let bytes = std::mem::take(cur);
        let name = *blake3::hash(&bytes).as_bytes();
        out.push(Segment {
            key: object_key("refs", &name),
            bytes,
        });
    };
    for id in sorted {
        if cur.is_empty() {
            cur.extend_from_slice(&REFS_MAGIC);
            cur.push(REFS_VERSION);
        }
        cur.extend_from_slice(id.as_bytes());
        if is_cut(id) {
            flush(&mut cur, &mut out);
        }
    }
    if !cur.is_empty() {
        flush(&mut cur, &mut out);
    }
    out
}

/// The keys of the segments [`segments`] makes from `sorted`, computed without holding the
/// segment bytes (for listing which `refs/` objects the catalog knows).
pub fn segment_keys(sorted: impl IntoIterator<Item = ChunkId>) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<blake3::Hasher> = None;
    for id in sorted {
        let h = cur.get_or_insert_with(|| {
            let mut h = blake3::Hasher::new();
            h.update(&REFS_MAGIC);
            h.update(&[REFS_VERSION]);
            h
        });
        h.update(id.as_bytes());
        if is_cut(&id)
            && let Some(h) = cur.take()
        {
            out.push(object_key("refs", h.finalize().as_bytes()));
        }
    }
    if let Some(h) = cur {
        out.push(object_key("refs", h.finalize().as_bytes()));
    }
    out
}

/// Decodes one segment's ids.
pub fn decode(bytes: &[u8]) -> Result<Vec<ChunkId>, RefsError> {
    if bytes.len() < 5 || !(bytes.len() - 5).is_multiple_of(CHUNK_ID_LEN) {
        return Err(RefsError::BadLength(bytes.len()));
    }
    if bytes[..4] != REFS_MAGIC || bytes[4] != REFS_VERSION {
        return Err(RefsError::BadHeader);
    }
    Ok(bytes[5..]
        .chunks_exact(CHUNK_ID_LEN)
        .map(|c| {
            let mut a = [0u8; CHUNK_ID_LEN];
            a.copy_from_slice(c);
            ChunkId(a)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32, salt: u8) -> Vec<ChunkId> {
        let mut v: Vec<ChunkId> = (0..n)
            .map(|i| {
                let mut h = *blake3::hash(&[&i.to_le_bytes()[..], &[salt]].concat()).as_bytes();
                // Make cuts frequent enough for a small test: force every 50th id to be a cut.
                if i % 50 == 0 {
                    h[0] = 0x10;
                    h[1] = 0x00;
                }
                ChunkId(h)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn segmentation_is_deterministic_and_shares_segments() {
        let a = ids(1000, 0);
        let s1 = segments(&a);
        assert_eq!(s1, segments(&a), "deterministic");
        assert!(s1.len() > 5, "cuts happen: {}", s1.len());
        let back: Vec<ChunkId> = s1
            .iter()
            .flat_map(|s| decode(&s.bytes).expect("decode"))
            .collect();
        assert_eq!(back, a);
        // A snapshot with a few more ids shares most segments with the previous one.
        let mut b = a.clone();
        b.extend(ids(3, 7));
        b.sort();
        b.dedup();
        let s2 = segments(&b);
        let shared = s2.iter().filter(|s| s1.contains(s)).count();
        assert!(shared + 3 >= s1.len(), "shared {shared} of {}", s1.len());
        assert!(segments(&[]).is_empty());
        let keys: Vec<String> = s2.iter().map(|s| s.key.clone()).collect();
        assert_eq!(segment_keys(b.iter().copied()), keys, "streamed keys match");
        assert!(segment_keys(Vec::new()).is_empty());
    }

    #[test]
    fn bad_segments_are_rejected() {
        assert_eq!(decode(b"LBRF"), Err(RefsError::BadLength(4)));
        assert_eq!(decode(b"XXXX\x01"), Err(RefsError::BadHeader));
        assert_eq!(
            decode(&[b"LBRF\x01", &[0u8; 31][..]].concat()),
            Err(RefsError::BadLength(36))
        );
    }
}
