//! The file cache's values: a file's stat and chunk list.
//!
//! A value starts with a version byte, the four stat fields (size, mtime ns, ctime ns, inode:
//! 8 bytes each, little-endian) and the chunk count (u32), then [`CHUNK_RECORD`]s: per chunk
//! its id and size (u32, little-endian).
//!
//! - Version 1 holds every record in the value. Lists of at most [`SEGMENT_RECORDS`] chunks are
//!   still written so, which every agent reads.
//! - Version 2 (a longer list) holds the first [`SEGMENT_RECORDS`]; segment `i` (from 1) holds
//!   the next ones under [`segment_key`], `SEGMENT_RECORDS` each but the last. One value held
//!   a 1 GiB dump's whole list (3.9 MB at the benchmark's chunk sizes), which sled copied twice
//!   on every read and the agent held at its no-change peak; a 10 GiB dump's would be ~40 MB.
//!   An older agent finds version 2 undecodable and starts its cache afresh. Still read; no
//!   longer written.
//! - Version 3 (a longer list, since session 20) holds no records but the BLAKE3 digest of the
//!   whole list, which is in a file of its own beside the database ([`super::list_file`]).
//!   sled keeps every page it reads until its shard of the page cache has seen 64 accesses, so
//!   a version-2 list's segments stayed in memory for the rest of the pass (10.9 MB for a 3 GiB
//!   dump); a file's pages are the kernel's. An agent that knows versions 1 and 2 only finds
//!   version 3 undecodable and starts its cache afresh.
//!
//! A version-2 list was written segments first and head last, after the old head was removed:
//! a crash in between leaves no head (a miss), never a head over another list's segments. A
//! version-3 list's file is replaced (renamed over) before its head is written, and the digest
//! tells a list from another: a crash anywhere leaves a miss. When a key is rewritten, the
//! segments or file of its old value are removed; those of deleted files' entries stay, like
//! the entries themselves.

use lifeboat_common::ids::{CHUNK_ID_LEN, ChunkId};

/// One chunk of a cached list: its id, then its size (little-endian). The backup's scratch
/// files (`backup::spill`) hold the same records, so a hit is copied there, never decoded.
pub const CHUNK_RECORD: usize = CHUNK_ID_LEN + 4;

/// Records in a version-2 value's head and in each of its segments (64 KiB of them).
pub const SEGMENT_RECORDS: usize = (64 << 10) / CHUNK_RECORD;

/// Every record in the value.
const INLINE: u8 = 1;
/// The first [`SEGMENT_RECORDS`] in the value, the rest in segments.
const SEGMENTED: u8 = 2;
/// The list's digest in the value, the list in a file of its own.
const LISTED: u8 = 3;
/// A version-3 value's digest (BLAKE3 of every record, in order).
pub const DIGEST_LEN: usize = 32;

/// The version byte, the four stat fields and the chunk count.
const HEADER: usize = 1 + 32 + 4;

/// The stat fields a cached chunk list is valid for: a hit requires all four to match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
}

/// A file's cached value, as sled returned it: its stat and the head of its chunk list (all of
/// it up to [`SEGMENT_RECORDS`] chunks); `FileCache::records` reads the whole list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedFile {
    pub stat: CacheStat,
    count: u64,
    value: sled::IVec,
}

impl CachedFile {
    /// Chunks in the whole list.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The records the value itself holds (none for a version-3 value).
    pub fn head(&self) -> &[u8] {
        match self.digest() {
            Some(_) => &[],
            None => &self.value[HEADER..],
        }
    }

    /// Segments holding the rest of the list (none for a version-1 or version-3 value).
    pub fn segments(&self) -> u64 {
        if self.digest().is_some() {
            return 0;
        }
        let head = (self.head().len() / CHUNK_RECORD) as u64;
        (self.count - head).div_ceil(SEGMENT_RECORDS as u64)
    }

    /// A version-3 value's digest of the list in its file.
    pub fn digest(&self) -> Option<&[u8]> {
        (self.value[0] == LISTED).then(|| &self.value[HEADER..])
    }

    /// Checks a value read from sled: version, lengths, and for a whole list in the value,
    /// chunk sizes that add up to the size (a segmented list's are checked as it is read).
    pub fn decode(value: sled::IVec) -> Option<CachedFile> {
        let version = *value.first()?;
        let header = value.get(..HEADER)?;
        let u64_at =
            |i: usize| u64::from_le_bytes(header[1 + i..9 + i].try_into().unwrap_or([0; 8]));
        let count = u64::from(u32::from_le_bytes(header[33..37].try_into().ok()?));
        let head = (value.len() - HEADER) / CHUNK_RECORD;
        let whole = (value.len() - HEADER).is_multiple_of(CHUNK_RECORD);
        let long = count > SEGMENT_RECORDS as u64;
        let ok = match version {
            INLINE => whole && head as u64 == count,
            SEGMENTED => whole && head == SEGMENT_RECORDS && long,
            LISTED => value.len() == HEADER + DIGEST_LEN && long,
            _ => false,
        };
        let file = CachedFile {
            stat: CacheStat {
                size: u64_at(0),
                mtime_ns: u64_at(8) as i64,
                ctime_ns: u64_at(16) as i64,
                inode: u64_at(24),
            },
            count,
            value,
        };
        let sizes_ok = version != INLINE || sizes(file.head()) == file.stat.size;
        (ok && sizes_ok).then_some(file)
    }
}

/// The value of a list of at most [`SEGMENT_RECORDS`] chunks, `records`.
pub fn encode_inline(stat: &CacheStat, records: &[u8]) -> Vec<u8> {
    let count = (records.len() / CHUNK_RECORD) as u64;
    encode(INLINE, stat, count, records).unwrap_or_default()
}

/// The value of a longer list of `count` chunks whose records, in their file, have `digest`.
/// `None` past u32 chunks: such a file is not cached.
pub fn encode_listed(stat: &CacheStat, count: u64, digest: &[u8; DIGEST_LEN]) -> Option<Vec<u8>> {
    encode(LISTED, stat, count, digest)
}

/// A version-2 head: `first`, the first [`SEGMENT_RECORDS`] of `count` (tests: values an
/// earlier agent wrote).
#[cfg(test)]
pub fn encode_segmented(stat: &CacheStat, count: u64, first: &[u8]) -> Option<Vec<u8>> {
    encode(SEGMENTED, stat, count, first)
}

fn encode(version: u8, stat: &CacheStat, count: u64, first: &[u8]) -> Option<Vec<u8>> {
    let n = u32::try_from(count).ok()?;
    let mut v = Vec::with_capacity(HEADER + first.len());
    v.push(version);
    for x in [
        stat.size,
        stat.mtime_ns as u64,
        stat.ctime_ns as u64,
        stat.inode,
    ] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(first);
    Some(v)
}

/// The key of segment `i` (from 1) of the list cached under `key`: `key · 0 · i` (u32,
/// big-endian). A file's key has exactly two 0 bytes after its stamp (source names and paths
/// hold none), a segment's at least three: no segment key is ever a file's.
pub fn segment_key(key: &[u8], i: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 5);
    k.extend_from_slice(key);
    k.push(0);
    k.extend_from_slice(&(i as u32).to_be_bytes());
    k
}

/// One chunk's record: its id, then its size.
pub fn record(id: &ChunkId, size: u32) -> [u8; CHUNK_RECORD] {
    let mut rec = [0u8; CHUNK_RECORD];
    rec[..CHUNK_ID_LEN].copy_from_slice(id.as_bytes());
    rec[CHUNK_ID_LEN..].copy_from_slice(&size.to_le_bytes());
    rec
}

/// The ids and sizes in `records`, in order.
pub fn chunks(records: &[u8]) -> impl Iterator<Item = (ChunkId, u32)> + '_ {
    records.chunks_exact(CHUNK_RECORD).map(|r| {
        let mut id = [0u8; CHUNK_ID_LEN];
        id.copy_from_slice(&r[..CHUNK_ID_LEN]);
        let s = &r[CHUNK_ID_LEN..];
        (ChunkId(id), u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    })
}

/// The chunk sizes in `records`, added up.
pub fn sizes(records: &[u8]) -> u64 {
    chunks(records).map(|(_, size)| u64::from(size)).sum()
}
