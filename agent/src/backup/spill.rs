//! Scratch files for what a backup pass learns per chunk: every file's chunk ids and sizes.
//!
//! A pass needs each file's ids and sizes twice after reading it: for its manifest entry and,
//! once the snapshot is committed, for the file cache. Held in memory until then they grew the
//! agent with the source: 36 bytes a chunk, ~6 MB of its peak at the benchmark's 2.5 GiB
//! (170,000 chunks), 4.7 MB for a 1 GiB dump at 8 KiB chunks alone, and ten times that for a
//! source ten times larger. Here they are appended, as they are made, to an unlinked file in the
//! agent's state directory; a pass keeps a [`Span`] (16 bytes) per file and reads a file's list
//! back when it needs it, sequentially and mostly from the page cache (a large file's in pieces,
//! [`SpanPieces`], so not even its list is held whole). What the pass holds per
//! chunk is the write buffer, whatever the source's size; the kernel may write the bytes out
//! under memory pressure, which is the point.
//!
//! Failure modes: the state directory's filesystem full or failing fails the pass with an error
//! naming the directory (nothing is committed; the next run starts over). A crash leaves
//! nothing behind ([`crate::scratch`]). Nothing here outlives its pass.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use lifeboat_common::appender::{Appender, Window};
use lifeboat_common::ids::{CHUNK_ID_LEN, ChunkId};
use lifeboat_common::manifest::ChunkPieces;

use crate::cache::{CHUNK_RECORD, chunks, record};
use crate::scratch::temp_file;

/// Bytes buffered before a write (and read at once when reading back).
pub const BUFFER_BYTES: usize = 64 << 10;

/// One chunk's record: its id, then its size (little-endian); the file cache's values hold the
/// same records, so a cached list is copied in as it is.
const RECORD: usize = CHUNK_RECORD;

/// The id whose bytes start at `pos` in `buf` (which holds them all).
pub fn id_at(buf: &[u8], pos: usize) -> ChunkId {
    let mut a = [0u8; CHUNK_ID_LEN];
    a.copy_from_slice(&buf[pos..pos + CHUNK_ID_LEN]);
    ChunkId(a)
}

/// A file's chunks in the scratch file: `count` records from record `first`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    first: u64,
    count: u64,
}

impl Span {
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The span as 16 bytes (first, count), for the pass's own records ([`super::pass_files`]).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.first.to_le_bytes());
        b[8..].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    /// A span from [`Span::to_bytes`]'s 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Span {
        let word = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        Span {
            first: word(0),
            count: word(8),
        }
    }

    /// At most `max` of this span's chunks, from its `from`-th.
    pub fn part(&self, from: u64, max: u64) -> Span {
        let from = from.min(self.count);
        Span {
            first: self.first + from,
            count: max.min(self.count - from),
        }
    }
}

/// Appends the chunk lists of one pass's files (on the reader thread).
pub struct ListWriter {
    out: Appender,
}

impl ListWriter {
    pub fn create(dir: &Path) -> io::Result<Self> {
        Ok(ListWriter {
            out: Appender::new(temp_file(dir)?, BUFFER_BYTES),
        })
    }

    /// Where the next chunk goes: pass it to [`ListWriter::span_since`] after the file's last.
    pub fn mark(&self) -> u64 {
        self.out.end() / RECORD as u64
    }

    pub fn push(&mut self, id: &ChunkId, size: u32) -> io::Result<()> {
        self.out.write(&record(id, size))
    }

    /// Appends whole records (a cached list's, [`CHUNK_RECORD`] bytes each).
    pub fn push_records(&mut self, records: &[u8]) -> io::Result<()> {
        debug_assert!(records.len().is_multiple_of(RECORD));
        self.out.write(records)
    }

    /// The chunks pushed since `mark`.
    pub fn span_since(&self, mark: u64) -> Span {
        Span {
            first: mark,
            count: self.mark() - mark,
        }
    }

    /// Writes what is buffered; the lists can then be read.
    pub fn finish(mut self) -> io::Result<ChunkLists> {
        self.out.finish()?;
        Ok(ChunkLists {
            file: self.out.file().clone(),
            records: self.mark(),
        })
    }
}

/// The chunk lists a [`ListWriter`] wrote, to read back by [`Span`] ([`ChunkLists::reader`]).
pub struct ChunkLists {
    file: Arc<File>,
    records: u64,
}

/// Records read at once.
const BUFFER_RECORDS: u64 = (BUFFER_BYTES / RECORD) as u64;

impl ChunkLists {
    /// A reader for spans taken mostly in the order they were written (a pass's walk order):
    /// it reads [`BUFFER_BYTES`] at a time, so 20,000 small files cost ~100 reads, not 20,000.
    pub fn reader(&self) -> ListReader<'_> {
        ListReader {
            lists: self,
            window: Window::new(
                self.file.clone(),
                self.records * RECORD as u64,
                BUFFER_BYTES,
            ),
        }
    }
}

/// Chunks read at once by [`SpanPieces`] (64 KiB of records).
pub const PIECE_CHUNKS: u64 = BUFFER_RECORDS;

/// One file's chunk list read in pieces of [`PIECE_CHUNKS`], for a manifest entry written
/// without the whole list in memory ([`ChunkPieces`]).
pub struct SpanPieces<'a> {
    reader: ListReader<'a>,
    span: Span,
    at: u64,
}

impl<'a> SpanPieces<'a> {
    pub fn new(lists: &'a ChunkLists, span: Span) -> Self {
        SpanPieces {
            reader: lists.reader(),
            span,
            at: 0,
        }
    }
}

impl ChunkPieces for SpanPieces<'_> {
    fn next_piece(&mut self) -> io::Result<Option<(Vec<ChunkId>, Vec<u32>)>> {
        let part = self.span.part(self.at, PIECE_CHUNKS);
        if part.count == 0 {
            return Ok(None);
        }
        self.at += part.count;
        self.reader.read(part).map(Some)
    }

    fn rewind(&mut self) {
        self.at = 0;
    }
}

/// See [`ChunkLists::reader`].
pub struct ListReader<'a> {
    lists: &'a ChunkLists,
    window: Window,
}

impl ListReader<'_> {
    /// A file's ids and sizes, in order. A span the file does not hold is an error, not a short
    /// list.
    pub fn read(&mut self, span: Span) -> io::Result<(Vec<ChunkId>, Vec<u32>)> {
        let n = usize::try_from(span.count).map_err(io::Error::other)?;
        let (mut ids, mut sizes) = (Vec::with_capacity(n), Vec::with_capacity(n));
        self.visit(span, |records| {
            for (id, size) in chunks(records) {
                ids.push(id);
                sizes.push(size);
            }
        })?;
        Ok((ids, sizes))
    }

    /// Appends a file's records to `out` as they are stored ([`CHUNK_RECORD`] bytes per
    /// chunk), refusing spans as [`ListReader::read`] does.
    pub fn read_records(&mut self, span: Span, out: &mut Vec<u8>) -> io::Result<()> {
        self.visit(span, |records| out.extend_from_slice(records))
    }

    /// Hands `span`'s records to `f`, in order, a buffer's worth at most at a time.
    fn visit(&mut self, span: Span, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let records = self.lists.records;
        let end = span.first.checked_add(span.count);
        if end.is_none_or(|e| e > records) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("chunk list {span:?} is past the scratch file's {records} records"),
            ));
        }
        let (mut at, mut left) = (span.first, span.count);
        while left > 0 {
            let take = left.min(BUFFER_RECORDS);
            f(self
                .window
                .bytes_at(at * RECORD as u64, take as usize * RECORD)?);
            at += take;
            left -= take;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> ChunkId {
        let mut a = [0u8; CHUNK_ID_LEN];
        a[..4].copy_from_slice(&i.to_le_bytes());
        a[31] = 0xa5;
        ChunkId(a)
    }

    #[test]
    fn lists_read_back_as_written_across_buffer_flushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = ListWriter::create(dir.path()).expect("scratch file");
        // Lengths that straddle the 64 KiB buffer (1,820 records) and an empty file.
        let lens = [0u32, 1, 1820, 1821, 5000, 3];
        let mut spans = Vec::new();
        let mut next = 0;
        for len in lens {
            let mark = w.mark();
            for _ in 0..len {
                w.push(&id(next), next * 7).expect("scratch file");
                next += 1;
            }
            spans.push(w.span_since(mark));
        }
        let lists = w.finish().expect("scratch file");
        let mut reader = lists.reader();
        let mut next = 0;
        for (span, len) in spans.iter().copied().zip(lens) {
            assert_eq!(span.count(), u64::from(len));
            let (ids, sizes) = reader.read(span).expect("scratch file");
            let want: Vec<u32> = (next..next + len).collect();
            assert_eq!(ids, want.iter().map(|&i| id(i)).collect::<Vec<_>>());
            assert_eq!(sizes, want.iter().map(|&i| i * 7).collect::<Vec<_>>());
            next += len;
        }
        // Out of order (back to the start, then a list that straddles the reader's buffer).
        let (ids, _) = reader.read(spans[1]).expect("scratch file");
        assert_eq!(ids, vec![id(0)]);
        let (ids, sizes) = reader.read(spans[3]).expect("scratch file");
        assert_eq!(
            (ids.len(), ids[1820], sizes[0]),
            (1821, id(1821 + 1820), 1821 * 7)
        );
        // As stored: records in order, straddling the buffer, and copied back in whole.
        let mut raw = Vec::new();
        reader
            .read_records(spans[3], &mut raw)
            .expect("scratch file");
        assert_eq!(raw.len(), 1821 * RECORD);
        assert_eq!(id_at(&raw, 1820 * RECORD), id(1821 + 1820));
        // The file has no name: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).expect("listing").count(), 0);
    }

    #[test]
    fn a_span_past_the_end_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = ListWriter::create(dir.path()).expect("scratch file");
        w.push(&id(1), 1).expect("scratch file");
        let lists = w.finish().expect("scratch file");
        let mut lists = lists.reader();
        let past = Span { first: 0, count: 2 };
        assert_eq!(
            lists.read(past).expect_err("refused").kind(),
            io::ErrorKind::InvalidInput
        );
        let overflow = Span {
            first: u64::MAX,
            count: 2,
        };
        assert!(lists.read(overflow).is_err());
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("absent");
        let err = ListWriter::create(&gone).err().expect("no such directory");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
