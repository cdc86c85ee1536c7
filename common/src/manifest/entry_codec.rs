//! An [`Entry`] to and from its bytes (the `EntryMsg` protobuf, format version 1) without an
//! allocation per chunk id.
//!
//! prost's derived [`EntryMsg`] holds field 11 (`repeated bytes`, one chunk id each) as a
//! `Vec<Vec<u8>>`: encoding an `Entry` through it copied every id into its own allocation, and
//! decoding made one per id before `Entry` copied them again. For a large file that is most of
//! the agent's memory at that moment: the 1 GiB dump of the benchmark's 2.5 GiB set has ~108,000
//! ids, ~7.8 MB of small allocations on top of the 3.5 MB the ids need, while the backup builds
//! its manifest and while the restore decodes it.
//!
//! This codec writes and reads the **same bytes**: fields 1-10, 12 and 13 still go through
//! `EntryMsg` (with fields 11-13 left empty, so it encodes only the small head), field 11 is
//! written and read here, id by id, in its place in tag order. `EntryMsg` stays the definition
//! of the format; the tests check the two agree byte for byte, in both directions, and that a
//! hostile encoding (ids out of order among the other fields, unpacked sizes, unknown fields,
//! wrong wire types) decodes as prost would have decoded it.

use prost::Message;
use prost::bytes::Buf;
use prost::encoding::{self, DecodeContext, WireType};

use super::{Entry, EntryMsg, ManifestError};
use crate::ids::{CHUNK_ID_LEN, ChunkId};

/// Field 11's tag.
const CHUNKS_TAG: u32 = 11;
/// Bytes one id takes in field 11: the key (tag 11, wire type 2: one byte), the length (32: one
/// byte) and the id.
const ID_FIELD_LEN: usize = 2 + CHUNK_ID_LEN;

/// The entry's fields but its chunk ids, sizes and chunker, as `EntryMsg`.
pub(super) fn head(e: &Entry) -> EntryMsg {
    EntryMsg {
        root: e.root,
        path: e.path.clone(),
        kind: e.kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime_sec: e.mtime_sec,
        mtime_nsec: e.mtime_nsec,
        size: e.size,
        symlink_target: e.symlink_target.clone(),
        chunks: Vec::new(),
        chunk_sizes: Vec::new(),
        chunker: None,
    }
}

/// Appends `e` length-delimited, as `EntryMsg::from(e).encode_length_delimited` would.
pub(super) fn encode_delimited(e: &Entry, buf: &mut Vec<u8>) {
    let no_flush = |_: &mut Vec<u8>| Ok::<(), std::convert::Infallible>(());
    let Ok(()) = encode(e, buf, true, no_flush);
}

/// Ids encoded between two calls of [`encode_delimited_with`]'s `flush` (~34 KB).
pub(super) const FLUSH_IDS: usize = 1024;

/// As [`encode_delimited`], calling `flush` on `buf` after every [`FLUSH_IDS`] ids of a large
/// entry: it may take bytes from the front (a streaming writer cuts chunks off), so `buf` never
/// holds a whole 100,000-id entry (3.4 MB). The bytes appended overall are the same.
pub(super) fn encode_delimited_with<E>(
    e: &Entry,
    buf: &mut Vec<u8>,
    flush: impl FnMut(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    encode(e, buf, false, flush)
}

/// Both of the above: `reserve` sizes `buf` for the whole entry first (not when it is flushed).
fn encode<E>(
    e: &Entry,
    buf: &mut Vec<u8>,
    reserve: bool,
    mut flush: impl FnMut(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let head = head(e);
    let sizes_len = encoding::uint32::encoded_len_packed(12, &e.chunk_sizes);
    let chunker_len = e
        .chunker
        .as_ref()
        .map_or(0, |c| encoding::message::encoded_len(13, c));
    let len = head.encoded_len() + e.chunks.len() * ID_FIELD_LEN + sizes_len + chunker_len;
    if reserve {
        buf.reserve(len + encoding::encoded_len_varint(len as u64));
    }
    encoding::encode_varint(len as u64, buf);
    head.encode_raw(buf);
    for ids in e.chunks.chunks(FLUSH_IDS) {
        for id in ids {
            encoding::encode_key(CHUNKS_TAG, WireType::LengthDelimited, buf);
            encoding::encode_varint(CHUNK_ID_LEN as u64, buf);
            buf.extend_from_slice(id.as_bytes());
        }
        if ids.len() == FLUSH_IDS {
            flush(buf)?;
        }
    }
    encoding::uint32::encode_packed(12, &e.chunk_sizes, buf);
    if let Some(c) = &e.chunker {
        encoding::message::encode(13, c, buf);
    }
    Ok(())
}

/// A large entry's chunk list read in pieces (from a backup's scratch file) rather than held:
/// [`encode_pieces_delimited_with`] reads it three times (to measure it, for the ids, for the
/// sizes), so a file's list costs a piece of memory, not 36 bytes a chunk.
pub trait ChunkPieces {
    /// The next piece of ids and their sizes (as many of each), `None` after the last.
    fn next_piece(&mut self) -> std::io::Result<Option<(Vec<ChunkId>, Vec<u32>)>>;
    /// Starts over from the first piece.
    fn rewind(&mut self);
}

/// As [`encode_delimited_with`] for `e` with its chunks and sizes taken from `pieces` (those of
/// `e` are ignored): the same bytes. A list that reads back differently from one pass to the
/// next, or fails to read, is an error and the entry is not complete in `buf`.
pub(super) fn encode_pieces_delimited_with<E: From<ManifestError>>(
    e: &Entry,
    pieces: &mut dyn ChunkPieces,
    buf: &mut Vec<u8>,
    mut flush: impl FnMut(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let (n, sizes_body) = measure(pieces)?;
    let head = head(e);
    let sizes_len = if n == 0 {
        0
    } else {
        encoding::key_len(12) + encoding::encoded_len_varint(sizes_body as u64) + sizes_body
    };
    let chunker_len = e
        .chunker
        .as_ref()
        .map_or(0, |c| encoding::message::encoded_len(13, c));
    let len = head.encoded_len() + n * ID_FIELD_LEN + sizes_len + chunker_len;
    encoding::encode_varint(len as u64, buf);
    head.encode_raw(buf);
    pieces.rewind();
    let (mut written, mut since_flush) = (0usize, 0usize);
    while let Some((ids, _)) = pieces.next_piece().map_err(scratch::<E>)? {
        for id in &ids {
            encoding::encode_key(CHUNKS_TAG, WireType::LengthDelimited, buf);
            encoding::encode_varint(CHUNK_ID_LEN as u64, buf);
            buf.extend_from_slice(id.as_bytes());
            since_flush += 1;
            if since_flush == FLUSH_IDS {
                flush(buf)?;
                since_flush = 0;
            }
        }
        written += ids.len();
    }
    if n > 0 {
        encoding::encode_key(12, WireType::LengthDelimited, buf);
        encoding::encode_varint(sizes_body as u64, buf);
    }
    pieces.rewind();
    let mut body = 0;
    while let Some((_, sizes)) = pieces.next_piece().map_err(scratch::<E>)? {
        for s in sizes {
            encoding::encode_varint(u64::from(s), buf);
            body += encoding::encoded_len_varint(u64::from(s));
        }
        flush(buf)?;
    }
    if written != n || body != sizes_body {
        return Err(E::from(ManifestError::Corrupt(
            "a chunk list read back differently while its entry was written".into(),
        )));
    }
    if let Some(c) = &e.chunker {
        encoding::message::encode(13, c, buf);
    }
    Ok(())
}

/// The number of chunks and the packed sizes' length.
fn measure<E: From<ManifestError>>(pieces: &mut dyn ChunkPieces) -> Result<(usize, usize), E> {
    pieces.rewind();
    let (mut n, mut sizes_body) = (0, 0);
    while let Some((ids, sizes)) = pieces.next_piece().map_err(scratch::<E>)? {
        if ids.len() != sizes.len() {
            return Err(E::from(ManifestError::Corrupt(
                "a chunk list's piece has more ids than sizes, or fewer".into(),
            )));
        }
        n += ids.len();
        sizes_body += (sizes.iter())
            .map(|&s| encoding::encoded_len_varint(u64::from(s)))
            .sum::<usize>();
    }
    Ok((n, sizes_body))
}

fn scratch<E: From<ManifestError>>(e: std::io::Error) -> E {
    E::from(ManifestError::scratch(e))
}

/// Decodes one entry's message (without its length prefix), as `EntryMsg::decode` followed by
/// `Entry::try_from` would: the same fields, the same refusals (the wording of a `Corrupt`
/// error about field 11 differs from prost's). Not validated
/// ([`Entry::validate`] is the caller's).
pub(super) fn decode(mut msg: &[u8]) -> Result<Entry, ManifestError> {
    let corrupt = |e: prost::DecodeError| ManifestError::Corrupt(e.to_string());
    let mut head = EntryMsg::default();
    // Sized for the most ids the message can hold, then shrunk: grown by doubling, a large
    // file's list would be held at up to twice its size (the restore keeps every entry).
    let mut chunks = Vec::with_capacity(msg.len() / ID_FIELD_LEN);
    let mut wrong_length = false;
    while msg.has_remaining() {
        let (tag, wire_type) = encoding::decode_key(&mut msg).map_err(corrupt)?;
        if tag != CHUNKS_TAG {
            head.merge_field(tag, wire_type, &mut msg, DecodeContext::default())
                .map_err(corrupt)?;
            continue;
        }
        encoding::check_wire_type(WireType::LengthDelimited, wire_type).map_err(corrupt)?;
        let len = encoding::decode_varint(&mut msg).map_err(corrupt)?;
        let Some(bytes) = usize::try_from(len).ok().and_then(|n| msg.get(..n)) else {
            return Err(ManifestError::Corrupt(
                "a chunk id runs past the end of its entry".into(),
            ));
        };
        match ChunkId::try_from(bytes) {
            Ok(id) => chunks.push(id),
            Err(_) => wrong_length = true,
        }
        msg.advance(bytes.len());
    }
    if wrong_length {
        return Err(ManifestError::InvalidEntry {
            path: String::from_utf8_lossy(&head.path).into_owned(),
            reason: "chunk id of wrong length".into(),
        });
    }
    chunks.shrink_to_fit();
    Ok(Entry {
        root: head.root,
        path: head.path,
        kind: head.kind,
        mode: head.mode,
        uid: head.uid,
        gid: head.gid,
        mtime_sec: head.mtime_sec,
        mtime_nsec: head.mtime_nsec,
        size: head.size,
        symlink_target: head.symlink_target,
        chunks,
        chunk_sizes: head.chunk_sizes,
        chunker: head.chunker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ChunkerParamsMsg;
    use proptest::prelude::*;

    fn entry(ids: usize, sizes: Vec<u32>, chunker: bool, path: &str) -> Entry {
        Entry {
            root: 1,
            path: path.as_bytes().to_vec(),
            kind: 1,
            mode: 0o644,
            uid: 33,
            gid: 0,
            mtime_sec: 1_795_590_289,
            mtime_nsec: 12,
            size: sizes.iter().map(|&s| u64::from(s)).sum(),
            symlink_target: Vec::new(),
            chunks: (0..ids).map(|i| ChunkId([i as u8; 32])).collect(),
            chunk_sizes: sizes,
            chunker: chunker.then_some(ChunkerParamsMsg {
                min: 2048,
                avg: 8192,
                max: 65536,
            }),
        }
    }

    fn by_prost(e: &Entry) -> Vec<u8> {
        EntryMsg::from(e).encode_length_delimited_to_vec()
    }

    proptest! {
        #[test]
        fn encodes_exactly_as_prost_and_decodes_what_prost_encodes(
            ids in 0usize..300,
            sizes in proptest::collection::vec(1u32..5_000_000, 0..300),
            chunker in any::<bool>(),
            path in "[a-z/]{0,40}",
            zero_head in any::<bool>(),
        ) {
            let mut e = entry(ids, sizes, chunker, &path);
            if zero_head {
                // Default values are left out of the encoding: the head may be empty.
                e = Entry { chunks: e.chunks, chunk_sizes: e.chunk_sizes, ..Entry::default() };
            }
            let mut ours = Vec::new();
            encode_delimited(&e, &mut ours);
            prop_assert_eq!(&ours, &by_prost(&e));
            let mut body = &ours[..];
            let len = encoding::decode_varint(&mut body).expect("length") as usize;
            prop_assert_eq!(len, body.len());
            let theirs = Entry::try_from(EntryMsg::decode(body).expect("prost decodes"));
            prop_assert_eq!(decode(body), theirs);
        }

        #[test]
        fn decodes_arbitrary_bytes_as_prost_does(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let theirs = EntryMsg::decode(&bytes[..])
                .map_err(|e| ManifestError::Corrupt(e.to_string()))
                .and_then(Entry::try_from);
            match (decode(&bytes), theirs) {
                (Ok(ours), Ok(theirs)) => prop_assert_eq!(ours, theirs),
                (Err(ours), Err(theirs)) => prop_assert_eq!(
                    std::mem::discriminant(&ours),
                    std::mem::discriminant(&theirs),
                    "{} / {}", ours, theirs
                ),
                (ours, theirs) => prop_assert!(false, "ours {:?}, prost {:?}", ours, theirs),
            }
        }
    }

    #[test]
    fn a_flushed_large_entry_is_the_same_bytes_taken_in_pieces() {
        let e = entry(
            5 * FLUSH_IDS + 7,
            vec![100; 5 * FLUSH_IDS + 7],
            true,
            "dump.sql",
        );
        let (mut buf, mut taken, mut most, mut flushes) = (vec![9], Vec::new(), 0, 0);
        encode_delimited_with(&e, &mut buf, |b: &mut Vec<u8>| {
            most = most.max(b.len());
            flushes += 1;
            taken.append(b);
            Ok::<(), ()>(())
        })
        .expect("encode");
        taken.append(&mut buf);
        assert_eq!(flushes, 5);
        assert_eq!(taken[1..], by_prost(&e)[..]);
        assert_eq!(taken[0], 9, "what the buffer held is kept in front");
        assert!(most < 2 * FLUSH_IDS * ID_FIELD_LEN, "held {most} bytes");
    }

    /// An entry's list served in pieces of `piece` chunks; `change` alters what the second
    /// pass reads (a list that changed under the writer).
    struct Pieces<'a> {
        e: &'a Entry,
        piece: usize,
        at: usize,
        passes: usize,
        change: bool,
    }

    impl ChunkPieces for Pieces<'_> {
        fn next_piece(&mut self) -> std::io::Result<Option<(Vec<ChunkId>, Vec<u32>)>> {
            let end = (self.at + self.piece).min(self.e.chunks.len());
            if self.at == end {
                return Ok(None);
            }
            let mut ids = self.e.chunks[self.at..end].to_vec();
            if self.change && self.passes == 2 {
                ids.pop();
            }
            let sizes = self.e.chunk_sizes[self.at..end].to_vec();
            self.at = end;
            Ok(Some((ids, sizes)))
        }

        fn rewind(&mut self) {
            self.at = 0;
            self.passes += 1;
        }
    }

    proptest! {
        /// Pieces of any size give the bytes of the whole entry, taken from the front as the
        /// encoder flushes.
        #[test]
        fn an_entry_in_pieces_is_the_same_bytes(
            sizes in proptest::collection::vec(1u32..5_000_000, 0..3000),
            piece in 1usize..1500,
            chunker in any::<bool>(),
        ) {
            let e = entry(sizes.len(), sizes, chunker, "big.bin");
            let mut pieces = Pieces { e: &e, piece, at: 0, passes: 0, change: false };
            let (mut buf, mut taken) = (vec![9], Vec::new());
            encode_pieces_delimited_with(&Entry { chunks: Vec::new(), chunk_sizes: Vec::new(), ..e.clone() }, &mut pieces, &mut buf, |b: &mut Vec<u8>| {
                taken.append(b);
                Ok::<(), ManifestError>(())
            })
            .expect("encode");
            taken.append(&mut buf);
            prop_assert_eq!(&taken[1..], &by_prost(&e)[..]);
            prop_assert_eq!(pieces.passes, 3);
        }
    }

    #[test]
    fn a_list_that_reads_back_differently_is_refused() {
        let e = entry(3000, vec![7; 3000], false, "big.bin");
        let mut pieces = Pieces {
            e: &e,
            piece: 100,
            at: 0,
            passes: 0,
            change: true,
        };
        let res = encode_pieces_delimited_with(&e, &mut pieces, &mut Vec::new(), |_| {
            Ok::<(), ManifestError>(())
        });
        assert!(matches!(res, Err(ManifestError::Corrupt(r)) if r.contains("differently")));
    }

    #[test]
    fn a_hostile_field_order_decodes_as_prost_decodes_it() {
        // Ids before the path, sizes unpacked and interleaved, an unknown field, the path twice
        // (the last one wins).
        let mut m = EntryMsg::from(&entry(2, vec![7, 9], true, "first"));
        m.path = b"second".to_vec();
        let mut bytes = Vec::new();
        for id in &m.chunks {
            encoding::bytes::encode(11, id, &mut bytes);
        }
        encoding::bytes::encode(2, &b"first".to_vec(), &mut bytes);
        encoding::uint32::encode(12, &7, &mut bytes);
        encoding::uint64::encode(99, &5, &mut bytes);
        encoding::uint32::encode(12, &9, &mut bytes);
        m.chunks.clear();
        m.chunk_sizes.clear();
        m.encode_raw(&mut bytes);
        let ours = decode(&bytes).expect("decodes");
        assert_eq!(ours.path, b"second");
        assert_eq!(ours.chunk_sizes, vec![7, 9]);
        assert_eq!(ours.chunks.len(), 2);
        assert_eq!(
            Ok(ours),
            Entry::try_from(EntryMsg::decode(&bytes[..]).expect("prost decodes"))
        );
    }

    #[test]
    fn a_short_id_or_a_wrong_wire_type_is_refused_as_before() {
        let mut m = EntryMsg::from(&entry(2, vec![7, 9], false, "a"));
        m.chunks[1].pop();
        let bytes = m.encode_to_vec();
        assert_eq!(
            decode(&bytes),
            Err(ManifestError::InvalidEntry {
                path: "a".into(),
                reason: "chunk id of wrong length".into()
            })
        );
        let mut bytes = Vec::new();
        encoding::uint32::encode(11, &5, &mut bytes);
        assert!(matches!(decode(&bytes), Err(ManifestError::Corrupt(_))));
        assert!(EntryMsg::decode(&bytes[..]).is_err());
    }
}
