//! A file entry's chunk list apart from its entry ([`ChunkList`]): in memory, or, for a large
//! entry, left in the restore's scratch file and read in order.
//!
//! The restore keeps the manifest's entries encoded in a scratch file ([`super::encoded`]) and
//! decodes each when it is reached. Decoded whole, a large file's entry is 36 bytes a chunk held
//! while the file is written: the 1 GiB dump of the benchmark's 2.5 GiB set, 3.9 MB; a 10 GiB
//! dump, ~47 MB. That was the one part of the restore's memory that still grew with the source.
//! An entry whose message is longer than [`STORED_LIST_BYTES`] is therefore walked once in the
//! file, field by field, through a small window: its other fields are gathered and decoded as
//! usual, its ids (field 11) and sizes (field 12) only counted. [`ChunkList::reader`] then
//! reads them back in order, one `(id, size)` at a time, with two cursors over the message (one
//! for each field, as protobuf lets them lie anywhere in it, in any number of runs).
//!
//! The same bytes decode to the same entry either way: fields other than 11 and 12 are decoded
//! from their own bytes in their order (so a repeated scalar's last value still wins); field 12
//! is read packed or not, each value truncated to `u32` as prost does. The message was decoded
//! whole and validated when the manifest was loaded, so a reader that finds anything else (fewer
//! ids than counted, a field that no longer parses) is the scratch file failing, and an error.
//! A message with a group (a deprecated wire type prost skips in unknown fields) is not walked
//! here; the caller decodes it whole, as before.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use prost::encoding::{self, WireType};

use super::decoder::MAX_VARINT_LEN;
use super::{Entry, ManifestError, entry_codec};
use crate::appender::Window;
use crate::ids::{CHUNK_ID_LEN, ChunkId};

/// Entries whose message is longer than this keep their chunk list in the scratch file (~1,900
/// chunks; shorter lists are decoded with their entry).
pub const STORED_LIST_BYTES: u64 = 64 << 10;
/// Each cursor's read window.
const WINDOW: usize = 32 << 10;
const CHUNKS_TAG: u32 = 11;
const SIZES_TAG: u32 = 12;

fn corrupt(why: impl std::fmt::Display) -> ManifestError {
    ManifestError::Corrupt(why.to_string())
}

/// A file entry's chunk ids and sizes, moved out of its [`Entry`] so that a large one need not
/// be held ([`EncodedManifest::entries_with_lists`](super::EncodedManifest::entries_with_lists)).
pub enum ChunkList {
    Memory { ids: Vec<ChunkId>, sizes: Vec<u32> },
    Stored(StoredChunks),
}

impl ChunkList {
    /// `e`'s list, moved out (its `chunks` and `chunk_sizes` are left empty).
    pub fn take(e: &mut Entry) -> Self {
        ChunkList::Memory {
            ids: std::mem::take(&mut e.chunks),
            sizes: std::mem::take(&mut e.chunk_sizes),
        }
    }

    /// The number of chunks.
    pub fn len(&self) -> usize {
        match self {
            ChunkList::Memory { ids, .. } => ids.len(),
            ChunkList::Stored(s) => s.count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids and their sizes, in order. An error (only a stored list's: the scratch file
    /// failing) ends the reading.
    pub fn reader(&self) -> ChunkReader<'_> {
        ChunkReader(match self {
            ChunkList::Memory { ids, sizes } => Reading::Memory(ids.iter().zip(sizes.iter())),
            ChunkList::Stored(s) => Reading::Stored(s.reader()),
        })
    }
}

/// See [`ChunkList::reader`].
pub struct ChunkReader<'a>(Reading<'a>);

enum Reading<'a> {
    Memory(std::iter::Zip<std::slice::Iter<'a, ChunkId>, std::slice::Iter<'a, u32>>),
    Stored(StoredReader),
}

impl Iterator for ChunkReader<'_> {
    type Item = Result<(ChunkId, u32), ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Reading::Memory(it) => it.next().map(|(id, size)| Ok((*id, *size))),
            Reading::Stored(r) => r.next(),
        }
    }
}

/// A field's value where it lies in the file.
enum Value {
    Varint(u64),
    /// Length-delimited: the bytes after the length.
    Bytes(Range<u64>),
    Fixed,
    /// A group's start or end: not walked here.
    Group,
}

/// The fields of one message (`at..end` of the file), read in order through a window.
struct Fields {
    window: Window,
    at: u64,
    end: u64,
}

impl Fields {
    fn new(file: Arc<File>, at: u64, end: u64) -> Self {
        let size = usize::try_from(end.saturating_sub(at)).map_or(WINDOW, |n| n.min(WINDOW));
        Fields {
            window: Window::new(file, end, size),
            at,
            end,
        }
    }

    /// The varint at `at`, which must end by `limit`, and where it ends.
    fn varint_at(&mut self, at: u64, limit: u64) -> Result<(u64, u64), ManifestError> {
        let n = limit.saturating_sub(at).min(MAX_VARINT_LEN as u64) as usize;
        let mut bytes = self
            .window
            .bytes_at(at, n)
            .map_err(ManifestError::scratch)?;
        let before = bytes.len();
        let v = encoding::decode_varint(&mut bytes).map_err(corrupt)?;
        Ok((v, at + (before - bytes.len()) as u64))
    }

    fn varint(&mut self) -> Result<u64, ManifestError> {
        let (v, next) = self.varint_at(self.at, self.end)?;
        self.at = next;
        Ok(v)
    }

    /// Moves `n` bytes on, not past the message's end.
    fn skip(&mut self, n: u64) -> Result<Range<u64>, ManifestError> {
        let start = self.at;
        match start.checked_add(n).filter(|&e| e <= self.end) {
            Some(end) => {
                self.at = end;
                Ok(start..end)
            }
            None => Err(corrupt("a field runs past the end of its entry")),
        }
    }

    /// The next field's tag and value, the cursor moved past it; `None` at the message's end.
    fn next(&mut self) -> Result<Option<(u32, Value)>, ManifestError> {
        if self.at >= self.end {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(corrupt)?;
        if tag == 0 {
            return Err(corrupt("field tag 0"));
        }
        let value = match WireType::try_from(key & 7).map_err(corrupt)? {
            WireType::Varint => Value::Varint(self.varint()?),
            WireType::SixtyFourBit => self.skip(8).map(|_| Value::Fixed)?,
            WireType::ThirtyTwoBit => self.skip(4).map(|_| Value::Fixed)?,
            WireType::LengthDelimited => {
                let len = self.varint()?;
                Value::Bytes(self.skip(len)?)
            }
            WireType::StartGroup | WireType::EndGroup => Value::Group,
        };
        Ok(Some((tag, value)))
    }

    fn bytes(&mut self, r: Range<u64>) -> Result<&[u8], ManifestError> {
        let n = usize::try_from(r.end - r.start).map_err(corrupt)?;
        self.window
            .bytes_at(r.start, n)
            .map_err(ManifestError::scratch)
    }
}

/// A file entry's chunk ids and sizes left in the scratch file: where its message lies and how
/// many chunks it lists.
pub struct StoredChunks {
    file: Arc<File>,
    /// Where the first id's field and the first size's field start.
    ids_from: u64,
    sizes_from: u64,
    end: u64,
    /// Ids, and sizes (equal once validated).
    count: usize,
    sizes: usize,
}

impl StoredChunks {
    fn reader(&self) -> StoredReader {
        StoredReader {
            ids: Fields::new(self.file.clone(), self.ids_from, self.end),
            sizes: Fields::new(self.file.clone(), self.sizes_from, self.end),
            run: 0..0,
            left: self.count,
        }
    }
}

/// Walks the message at `msg` of `file`: the entry without its chunk ids and sizes, and where
/// those are. `None` for a message with a group (decode it whole instead).
pub(super) fn walk(
    file: &Arc<File>,
    msg: Range<u64>,
) -> Result<Option<(Entry, StoredChunks)>, ManifestError> {
    let mut f = Fields::new(file.clone(), msg.start, msg.end);
    let mut head = Vec::new();
    let (mut ids, mut sizes) = (0usize, 0usize);
    let (mut ids_from, mut sizes_from) = (None, None);
    let mut wrong_length = false;
    loop {
        let at = f.at;
        let Some((tag, value)) = f.next()? else { break };
        match (tag, value) {
            (_, Value::Group) => return Ok(None),
            (CHUNKS_TAG, Value::Bytes(r)) => {
                wrong_length |= r.end - r.start != CHUNK_ID_LEN as u64;
                ids += 1;
                ids_from.get_or_insert(at);
            }
            (CHUNKS_TAG, _) => return Err(corrupt("a chunk id of the wrong type")),
            (SIZES_TAG, Value::Varint(_)) => {
                sizes += 1;
                sizes_from.get_or_insert(at);
            }
            (SIZES_TAG, Value::Bytes(r)) => {
                let mut p = r.start;
                while p < r.end {
                    p = f.varint_at(p, r.end)?.1;
                    sizes += 1;
                }
                sizes_from.get_or_insert(at);
            }
            (SIZES_TAG, _) => return Err(corrupt("chunk sizes of the wrong type")),
            _ => head.extend_from_slice(f.bytes(at..f.at)?),
        }
    }
    let entry = entry_codec::decode(&head)?;
    if wrong_length {
        // As a whole decode refuses it (`entry_codec::decode`).
        return Err(ManifestError::InvalidEntry {
            path: entry.display_path(),
            reason: "chunk id of wrong length".into(),
        });
    }
    let stored = StoredChunks {
        file: file.clone(),
        ids_from: ids_from.unwrap_or(msg.end),
        sizes_from: sizes_from.unwrap_or(msg.end),
        end: msg.end,
        count: ids,
        sizes,
    };
    Ok(Some((entry, stored)))
}

/// [`Entry::validate`] for an entry walked by [`walk`] (`e`, without its list) and its list.
pub(super) fn validate(e: &Entry, list: &StoredChunks, roots: usize) -> Result<(), ManifestError> {
    let mut r = list.reader();
    let sizes = (0..list.sizes).map(move |_| r.next_size());
    e.validate_with(roots, (list.count, list.sizes), sizes)
}

/// Reads a [`StoredChunks`]' ids and sizes in order; after an error, nothing more.
struct StoredReader {
    ids: Fields,
    sizes: Fields,
    /// What is left of the packed run of sizes being read.
    run: Range<u64>,
    left: usize,
}

impl StoredReader {
    fn next_id(&mut self) -> Result<ChunkId, ManifestError> {
        loop {
            match self.ids.next()? {
                Some((CHUNKS_TAG, Value::Bytes(r))) => {
                    return ChunkId::try_from(self.ids.bytes(r)?).map_err(corrupt);
                }
                Some((_, Value::Group)) => return Err(corrupt("a group in a walked entry")),
                Some(_) => {}
                None => return Err(corrupt("fewer chunk ids than counted")),
            }
        }
    }

    fn next_size(&mut self) -> Result<u32, ManifestError> {
        loop {
            if self.run.start < self.run.end {
                let (v, next) = self.sizes.varint_at(self.run.start, self.run.end)?;
                self.run.start = next;
                return Ok(v as u32);
            }
            match self.sizes.next()? {
                Some((SIZES_TAG, Value::Varint(v))) => return Ok(v as u32),
                Some((SIZES_TAG, Value::Bytes(r))) => self.run = r,
                Some((_, Value::Group)) => return Err(corrupt("a group in a walked entry")),
                Some(_) => {}
                None => return Err(corrupt("fewer chunk sizes than counted")),
            }
        }
    }
}

impl Iterator for StoredReader {
    type Item = Result<(ChunkId, u32), ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let res = self
            .next_id()
            .and_then(|id| self.next_size().map(|size| (id, size)));
        self.left = if res.is_ok() { self.left - 1 } else { 0 };
        Some(res)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::manifest::ChunkerParamsMsg;
    use proptest::prelude::*;
    use prost::Message;

    /// A piece of a hand-made entry message, in any order.
    #[derive(Clone, Debug)]
    enum Piece {
        Id(u8),
        Packed(Vec<u32>),
        Unpacked(u32),
        /// An unknown field of each wire type but groups.
        Unknown(u8),
        /// Field 2 (the path) again: the last one wins.
        Path(String),
        Head,
    }

    fn head() -> Entry {
        Entry {
            root: 1,
            path: b"var/dump.sql".to_vec(),
            kind: 1,
            mode: 0o640,
            mtime_sec: 1_795_590_289,
            size: 77,
            chunker: Some(ChunkerParamsMsg {
                min: 2048,
                avg: 8192,
                max: 65536,
            }),
            ..Entry::default()
        }
    }

    /// The pieces' bytes; the head's size is the sum of the sizes given.
    fn encode(pieces: &[Piece]) -> Vec<u8> {
        let size = pieces
            .iter()
            .map(|p| match p {
                Piece::Packed(v) => v.iter().map(|&s| u64::from(s)).sum(),
                Piece::Unpacked(s) => u64::from(*s),
                _ => 0,
            })
            .sum();
        let mut buf = Vec::new();
        for p in pieces {
            match p {
                Piece::Id(b) => {
                    encoding::encode_key(CHUNKS_TAG, WireType::LengthDelimited, &mut buf);
                    encoding::encode_varint(CHUNK_ID_LEN as u64, &mut buf);
                    buf.extend_from_slice(&[*b; CHUNK_ID_LEN]);
                }
                Piece::Packed(v) => encoding::uint32::encode_packed(SIZES_TAG, v, &mut buf),
                Piece::Unpacked(v) => encoding::uint32::encode(SIZES_TAG, v, &mut buf),
                Piece::Unknown(k) => match k % 4 {
                    0 => encoding::uint64::encode(99, &(u64::from(*k) << 40), &mut buf),
                    1 => encoding::fixed32::encode(98, &u32::from(*k), &mut buf),
                    2 => encoding::fixed64::encode(97, &u64::from(*k), &mut buf),
                    _ => encoding::bytes::encode(96, &vec![*k; usize::from(*k)], &mut buf),
                },
                Piece::Path(p) => encoding::bytes::encode(2, &p.as_bytes().to_vec(), &mut buf),
                Piece::Head => {
                    let mut h = entry_codec::head(&Entry { size, ..head() });
                    h.chunker = head().chunker;
                    h.encode_raw(&mut buf);
                }
            }
        }
        buf
    }

    /// `msg` in a file of its own.
    fn stored(msg: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(b"before").expect("write");
        f.write_all(msg).expect("write");
        f.write_all(b"after").expect("write");
        Arc::new(f)
    }

    /// Walked from the file, then read back, the entry is the one decoded whole.
    fn walked(msg: &[u8]) -> Result<Option<Entry>, ManifestError> {
        let file = stored(msg);
        let Some((mut e, list)) = walk(&file, 6..6 + msg.len() as u64)? else {
            return Ok(None);
        };
        assert!(e.chunks.is_empty() && e.chunk_sizes.is_empty());
        let list = ChunkList::Stored(list);
        for c in list.reader() {
            let (id, size) = c?;
            e.chunks.push(id);
            e.chunk_sizes.push(size);
        }
        assert_eq!(e.chunks.len(), list.len());
        Ok(Some(e))
    }

    fn size() -> impl Strategy<Value = u32> {
        prop_oneof![20 => 1u32..70_000, 1 => Just(0), 1 => any::<u32>()]
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            4 => any::<u8>().prop_map(Piece::Id),
            2 => proptest::collection::vec(size(), 0..6).prop_map(Piece::Packed),
            2 => size().prop_map(Piece::Unpacked),
            1 => any::<u8>().prop_map(Piece::Unknown),
            1 => "[a-z]{1,8}".prop_map(Piece::Path),
            1 => Just(Piece::Head),
        ]
    }

    proptest! {
        /// Whatever the order of the fields, runs of sizes packed or not, unknown fields and a
        /// field given twice, the walk validates as a whole decode does and, valid, reads what
        /// it reads.
        #[test]
        fn a_walked_entry_validates_and_reads_as_a_whole_decode(
            mut pieces in proptest::collection::vec(piece(), 0..60),
            balance in any::<bool>(),
        ) {
            if balance {
                // As many sizes as ids, and a head with their sum: mostly valid entries.
                let ids = pieces.iter().filter(|p| matches!(p, Piece::Id(_))).count();
                let sizes: usize = pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Packed(v) => v.len(),
                        Piece::Unpacked(_) => 1,
                        _ => 0,
                    })
                    .sum();
                pieces.extend((sizes..ids).map(|_| Piece::Unpacked(1000)));
                pieces.extend((ids..sizes).map(|i| Piece::Id(i as u8)));
                pieces.push(Piece::Head);
            }
            let msg = encode(&pieces);
            let whole = entry_codec::decode(&msg).expect("decodes");
            let file = stored(&msg);
            let (e, list) = walk(&file, 6..6 + msg.len() as u64)
                .expect("walk")
                .expect("no group");
            let valid = whole.validate(2);
            let ok = valid.is_ok();
            prop_assert_eq!(validate(&e, &list, 2), valid);
            if ok {
                prop_assert_eq!(walked(&msg), Ok(Some(whole)));
            }
        }
    }

    #[test]
    fn a_list_written_as_prost_writes_it_reads_back() {
        let mut e = head();
        e.chunks = (0..3000u32)
            .map(|i| ChunkId([(i % 251) as u8; 32]))
            .collect();
        e.chunk_sizes = (0..3000u32).map(|i| 1 + i * 37).collect();
        e.size = e.chunk_sizes.iter().map(|&s| u64::from(s)).sum();
        let msg = crate::manifest::EntryMsg::from(&e).encode_to_vec();
        assert_eq!(walked(&msg), Ok(Some(e)));
    }

    #[test]
    fn a_group_is_left_to_a_whole_decode() {
        let mut msg = encode(&[Piece::Id(1), Piece::Unpacked(5)]);
        encoding::encode_key(95, WireType::StartGroup, &mut msg);
        encoding::encode_key(95, WireType::EndGroup, &mut msg);
        assert!(entry_codec::decode(&msg).is_ok(), "prost skips the group");
        assert_eq!(walked(&msg), Ok(None));
    }

    /// The scratch file losing the list after the walk is an error, once; then nothing more.
    #[test]
    fn a_list_gone_from_the_file_is_an_error_then_nothing() {
        let msg = encode(&[Piece::Id(1), Piece::Id(2), Piece::Packed(vec![3, 4])]);
        let file = stored(&msg);
        let (_, list) = walk(&file, 6..6 + msg.len() as u64)
            .expect("walk")
            .expect("no group");
        file.set_len(10).expect("truncate");
        let list = ChunkList::Stored(list);
        let mut r = list.reader();
        assert!(matches!(r.next(), Some(Err(ManifestError::Scratch(_)))));
        assert!(r.next().is_none());
    }
}
