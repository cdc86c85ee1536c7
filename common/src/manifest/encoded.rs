//! A validated manifest whose entries stay encoded until they are used.
//!
//! A restore walks a manifest's entries once, in order, and needs each whole only while it is
//! restored. Decoded all at once they were the restore's largest cost that grows with the
//! source: ~400 bytes an entry with its chunk lists at the benchmark's 2.5 GiB (20,700 entries,
//! ~8 MB), against ~80 bytes encoded (1.7 MB). [`Decoder`](super::Decoder) keeps the entries'
//! messages as they were fed, after validating each one, and [`EncodedManifest::entries`]
//! decodes them one at a time again (a second decode of bytes already in memory: ~5 ms at
//! 2.5 GiB). [`EncodedManifest::entries_with_lists`] goes further for a restore: a large
//! entry's chunk list is not decoded at all but read in order from the scratch file when the
//! file is written ([`super::chunk_list`]).
//!
//! Duplicate paths are found without the decoded entries: each entry leaves a 16-byte hash of
//! its root and path and the offset of its message ([`PathIndex`]); equal hashes are confirmed
//! by decoding both messages, so a collision can neither refuse a valid manifest nor hide a
//! duplicate.

use std::fs::File;
use std::path::Path;

use std::ops::Range;

use super::chunk_list::{self, ChunkList, STORED_LIST_BYTES};
use super::decoder::MAX_VARINT_LEN;
use super::{Entry, Manifest, ManifestError, ManifestHeader, entry_codec};
use crate::appender::{Appender, Window};

/// Bytes buffered before a scratch file is written, and read from it at once.
const FILE_BUFFER: usize = 1 << 20;

/// Where the kept messages are: in memory, or in a scratch file (a restore's).
enum Store {
    Memory(Vec<u8>),
    File(Appender),
}

impl Store {
    fn len(&self) -> u64 {
        match self {
            Store::Memory(bytes) => bytes.len() as u64,
            Store::File(out) => out.end(),
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), ManifestError> {
        match self {
            Store::Memory(all) => all.extend_from_slice(bytes),
            Store::File(out) => out.write(bytes).map_err(ManifestError::scratch)?,
        }
        Ok(())
    }

    /// Everything appended is readable (a file's buffer written and freed; memory trimmed).
    fn flush(&mut self) -> Result<(), ManifestError> {
        match self {
            Store::Memory(all) => all.shrink_to_fit(),
            Store::File(out) => out.finish().map_err(ManifestError::scratch)?,
        }
        Ok(())
    }
}

/// Reads a [`Store`]'s messages: a slice of memory, or a file through a [`Window`] of
/// [`FILE_BUFFER`] (more for a larger message).
struct Reader<'a> {
    store: &'a Store,
    /// A file's window (`None` in memory).
    window: Option<Window>,
}

impl<'a> Reader<'a> {
    fn new(store: &'a Store) -> Self {
        let window = match store {
            Store::File(out) => Some(Window::new(out.file().clone(), out.written(), FILE_BUFFER)),
            Store::Memory(_) => None,
        };
        Reader { store, window }
    }

    /// `need` bytes at `at` (fewer only past the end).
    fn bytes_at(&mut self, at: u64, need: u64) -> Result<&[u8], ManifestError> {
        let end = self.store.len().min(at.saturating_add(need));
        let out_of_range = || ManifestError::Corrupt("entry offset out of range".into());
        if let Some(w) = &mut self.window {
            let end = end.min(w.len());
            if at > end {
                return Err(out_of_range());
            }
            let n = usize::try_from(end - at).map_err(|_| out_of_range())?;
            return w.bytes_at(at, n).map_err(ManifestError::scratch);
        }
        let Store::Memory(all) = self.store else {
            return Err(out_of_range());
        };
        let (a, e) = (usize::try_from(at), usize::try_from(end));
        let (a, e) = (
            a.map_err(|_| out_of_range())?,
            e.map_err(|_| out_of_range())?,
        );
        all.get(a..e).ok_or_else(out_of_range)
    }

    /// Where the length-delimited message at `at` lies (after its length); `None` at the end.
    fn message_at(&mut self, at: u64) -> Result<Option<Range<u64>>, ManifestError> {
        if at >= self.store.len() {
            return Ok(None);
        }
        let mut head = self.bytes_at(at, MAX_VARINT_LEN as u64)?;
        let before = head.len();
        let len = prost::encoding::decode_varint(&mut head)
            .map_err(|e| ManifestError::Corrupt(e.to_string()))?;
        let start = at + (before - head.len()) as u64;
        match start
            .checked_add(len)
            .filter(|&end| end <= self.store.len())
        {
            Some(end) => Ok(Some(start..end)),
            None => Err(ManifestError::Corrupt("truncated entry".into())),
        }
    }

    /// The message at `msg` decoded whole.
    fn decode(&mut self, msg: Range<u64>) -> Result<Entry, ManifestError> {
        let e = entry_codec::decode(self.bytes_at(msg.start, msg.end - msg.start)?)?;
        // A message larger than the window's usual size (a large file's chunk list) was read
        // whole; let go of it now rather than beside the decoded entry.
        if let Some(w) = &mut self.window {
            w.shrink();
        }
        Ok(e)
    }

    /// The entry whose length-delimited message starts at `at`, and where the next one starts;
    /// `None` at the end.
    fn entry_at(&mut self, at: u64) -> StepResult<Entry> {
        let Some(msg) = self.message_at(at)? else {
            return Ok(None);
        };
        Ok(Some((self.decode(msg.clone())?, msg.end)))
    }

    /// As [`Self::entry_at`], the entry's chunk list apart: a large one kept in a scratch file
    /// is left there ([`chunk_list`]), not decoded.
    fn listed_entry_at(&mut self, at: u64) -> StepResult<(Entry, ChunkList)> {
        let Some(msg) = self.message_at(at)? else {
            return Ok(None);
        };
        if let Store::File(out) = self.store
            && msg.end - msg.start > STORED_LIST_BYTES
            && let Some((e, list)) = chunk_list::walk(out.file(), msg.clone())?
        {
            return Ok(Some(((e, ChunkList::Stored(list)), msg.end)));
        }
        let mut e = self.decode(msg.clone())?;
        let list = ChunkList::take(&mut e);
        Ok(Some(((e, list), msg.end)))
    }
}

/// A reader's step: what is at an offset, and where the next entry starts.
type Step<'a, T> = fn(&mut Reader<'a>, u64) -> StepResult<T>;
type StepResult<T> = Result<Option<(T, u64)>, ManifestError>;

/// Entries' messages, each length-delimited, in manifest order; every one validated.
pub(super) struct EncodedEntries {
    store: Store,
    pub(super) count: u64,
    logical_bytes: u64,
    index: PathIndex,
    /// A large entry's message being appended as it comes: where its length prefix starts, and
    /// where the message lies ([`EncodedEntries::begin_streamed`]).
    streamed: Option<(u64, Range<u64>)>,
}

impl EncodedEntries {
    /// Kept in memory.
    pub(super) fn in_memory() -> Self {
        Self::with(Store::Memory(Vec::new()))
    }

    /// Kept in `file` (a scratch file of the caller's: written from its start, never synced).
    pub(super) fn in_file(file: File) -> Self {
        Self::with(Store::File(Appender::new(file, FILE_BUFFER)))
    }

    fn with(store: Store) -> Self {
        EncodedEntries {
            store,
            count: 0,
            logical_bytes: 0,
            index: PathIndex::default(),
            streamed: None,
        }
    }

    /// Keeps a validated entry: its message, its path's hash and its size.
    pub(super) fn push(&mut self, e: &Entry, msg: &[u8]) -> Result<(), ManifestError> {
        let at = self.store.len();
        self.append_length(msg.len())?;
        self.store.append(msg)?;
        self.counted(e, at);
        Ok(())
    }

    fn append_length(&mut self, len: usize) -> Result<(), ManifestError> {
        let mut prefix = Vec::with_capacity(MAX_VARINT_LEN);
        prost::encoding::encode_varint(len as u64, &mut prefix);
        self.store.append(&prefix)
    }

    /// An entry whose message starts at `at` is kept.
    fn counted(&mut self, e: &Entry, at: u64) {
        self.index.push(e, at);
        self.count += 1;
        self.logical_bytes = self.logical_bytes.saturating_add(e.size);
    }

    /// Whether an entry's message of `len` bytes, not complete yet, is appended to the scratch
    /// file as it comes and validated there ([`super::chunk_list`]) rather than gathered whole
    /// and decoded in memory: a large file's, when the entries are kept in a file. Gathered, a
    /// 10 GiB dump's entry was ~44 MB of message and ~47 MB decoded while the manifest loaded.
    pub(super) fn streams(&self, len: usize) -> bool {
        matches!(self.store, Store::File(_)) && len as u64 > STORED_LIST_BYTES
    }

    /// Starts a message of `len` bytes whose bytes follow ([`Self::append_streamed`]).
    pub(super) fn begin_streamed(&mut self, len: usize) -> Result<(), ManifestError> {
        let at = self.store.len();
        self.append_length(len)?;
        let start = self.store.len();
        self.streamed = Some((at, start..start + len as u64));
        Ok(())
    }

    pub(super) fn append_streamed(&mut self, bytes: &[u8]) -> Result<(), ManifestError> {
        self.store.append(bytes)
    }

    /// The streamed message is complete: validated from the file (walked; a message with a
    /// group is read whole and decoded, as before) and kept.
    pub(super) fn end_streamed(&mut self, roots: usize) -> Result<(), ManifestError> {
        let Some((at, msg)) = self.streamed.take() else {
            return Err(ManifestError::Corrupt("no entry was being kept".into()));
        };
        let Store::File(out) = &mut self.store else {
            return Err(ManifestError::Corrupt(
                "a streamed entry kept in memory".into(),
            ));
        };
        out.flush().map_err(ManifestError::scratch)?;
        let e = match chunk_list::walk(out.file(), msg.clone())? {
            Some((e, list)) => {
                chunk_list::validate(&e, &list, roots)?;
                e
            }
            None => {
                let e = Reader::new(&self.store).decode(msg)?;
                e.validate(roots)?;
                e
            }
        };
        self.counted(&e, at);
        Ok(())
    }
}

/// `(hash of root and path, offset of the entry's message)` for every entry.
#[derive(Default)]
pub(super) struct PathIndex(Vec<([u8; 16], u64)>);

impl PathIndex {
    fn push(&mut self, e: &Entry, offset: u64) {
        let mut h = blake3::Hasher::new();
        h.update(&e.root.to_le_bytes());
        h.update(&e.path);
        let mut key = [0u8; 16];
        key.copy_from_slice(&h.finalize().as_bytes()[..16]);
        self.0.push((key, offset));
    }

    /// Refuses a path listed twice under the same root, naming it. Entries whose hashes are
    /// equal (a duplicate, or a collision) are decoded and compared by root and path.
    fn check(mut self, store: &Store) -> Result<(), ManifestError> {
        self.0.sort_unstable();
        let mut reader = Reader::new(store);
        for run in self.0.chunk_by(|a, b| a.0 == b.0).filter(|r| r.len() > 1) {
            let mut same = Vec::with_capacity(run.len());
            for (_, offset) in run {
                let (e, _) = (reader.entry_at(*offset)?)
                    .ok_or_else(|| ManifestError::Corrupt("entry offset out of range".into()))?;
                same.push(e);
            }
            same.sort_unstable_by(|a, b| (a.root, &a.path).cmp(&(b.root, &b.path)));
            if let Some(w) = same
                .windows(2)
                .find(|w| (w[0].root, &w[0].path) == (w[1].root, &w[1].path))
            {
                return Err(ManifestError::Duplicate {
                    path: w[1].display_path(),
                });
            }
        }
        Ok(())
    }
}

/// A whole, valid manifest ([`Decoder::finish`](super::Decoder::finish)) whose entries are
/// decoded on demand.
pub struct EncodedManifest {
    pub header: ManifestHeader,
    entries: EncodedEntries,
}

impl EncodedManifest {
    /// Checks what only the whole manifest shows (no path twice) and frees the index.
    pub(super) fn new(
        header: ManifestHeader,
        mut entries: EncodedEntries,
    ) -> Result<Self, ManifestError> {
        entries.store.flush()?;
        std::mem::take(&mut entries.index).check(&entries.store)?;
        Ok(EncodedManifest { header, entries })
    }

    /// The number of entries.
    pub fn len(&self) -> u64 {
        self.entries.count
    }

    pub fn is_empty(&self) -> bool {
        self.entries.count == 0
    }

    /// The sum of the entries' sizes (the files' bytes).
    pub fn logical_bytes(&self) -> u64 {
        self.entries.logical_bytes
    }

    /// The absolute path of root `i`.
    pub fn root_path(&self, i: u32) -> &Path {
        self.header.root_path(i)
    }

    /// The entries in manifest order, each decoded when it is reached. They were validated when
    /// the manifest was: an error here is the scratch file failing, or damaged memory.
    pub fn entries(&self) -> impl Iterator<Item = Result<Entry, ManifestError>> + '_ {
        self.walk(Reader::entry_at)
    }

    /// As [`Self::entries`], each entry's chunk list moved out of it: what a restore writes a
    /// file from. A manifest kept in a scratch file leaves a large entry's list there, read in
    /// order when it is used ([`chunk_list`]): a 10 GiB dump's 47 MB of ids are not held.
    pub fn entries_with_lists(
        &self,
    ) -> impl Iterator<Item = Result<(Entry, ChunkList), ManifestError>> + '_ {
        self.walk(Reader::listed_entry_at)
    }

    fn walk<'a, T: 'a>(
        &'a self,
        step: Step<'a, T>,
    ) -> impl Iterator<Item = Result<T, ManifestError>> + 'a {
        let mut reader = Reader::new(&self.entries.store);
        let mut at = Some(0u64);
        std::iter::from_fn(move || {
            let res = step(&mut reader, at?);
            at = match &res {
                Ok(Some((_, next))) => Some(*next),
                _ => None,
            };
            res.map(|o| o.map(|(e, _)| e)).transpose()
        })
    }

    /// Every entry decoded at once (tests, and what needs them all together).
    pub fn decode_all(self) -> Result<Manifest, ManifestError> {
        let entries = self.entries().collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest {
            header: self.header,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{file, sample_header};
    use super::super::{Decoder, ManifestWriter, decode};
    use super::*;

    fn encoded(entries: &[Entry]) -> EncodedManifest {
        let mut w = ManifestWriter::new(&sample_header());
        for e in entries {
            w.push(e);
        }
        let mut d = Decoder::new();
        d.feed(&w.finish()).expect("feed");
        d.finish().expect("valid")
    }

    #[test]
    fn entries_decode_in_order_as_a_whole_decode_does() {
        let entries: Vec<Entry> = (0..50)
            .map(|i| file(&format!("d/f{i}"), &[i + 1, 2 * i + 1]))
            .collect();
        let m = encoded(&entries);
        assert_eq!(m.len(), 50);
        assert_eq!(
            m.logical_bytes(),
            entries.iter().map(|e| e.size).sum::<u64>()
        );
        let lazy: Vec<Entry> = m.entries().map(|e| e.expect("entry")).collect();
        // Twice: the iterator borrows, it does not consume.
        assert_eq!(m.entries().count(), 50);
        let mut w = ManifestWriter::new(&sample_header());
        entries.iter().for_each(|e| w.push(e));
        assert_eq!(lazy, decode(&w.finish()).expect("decode").entries);
        assert_eq!(m.decode_all().expect("decode").entries, lazy);
    }

    /// Kept in a scratch file, a manifest larger than the read window, with an entry larger
    /// than the window too, reads back as the one kept in memory; a duplicate is found there.
    #[test]
    fn a_manifest_kept_in_a_file_reads_back_as_in_memory() {
        let mut entries: Vec<Entry> = (0..40)
            .map(|i| file(&format!("f{i}"), &vec![i + 1; 1000]))
            .collect();
        entries.insert(7, file("big", &vec![9; 40_000]));
        let mut w = ManifestWriter::new(&sample_header());
        entries.iter().for_each(|e| w.push(e));
        let bytes = w.finish();
        assert!(bytes.len() > 2 * FILE_BUFFER, "{}", bytes.len());
        let keep = |bytes: &[u8]| {
            let mut d = Decoder::keeping_entries_in(tempfile::tempfile().expect("tempfile"));
            for piece in bytes.chunks(100_000) {
                d.feed(piece)?;
            }
            d.finish()
        };
        let m = keep(&bytes).expect("valid");
        assert_eq!(
            (m.len(), m.logical_bytes()),
            (41, encoded(&entries).logical_bytes())
        );
        let read: Vec<Entry> = m.entries().map(|e| e.expect("entry")).collect();
        assert_eq!(read, entries);
        // With their lists apart, the big entry's is left in the file, the others' decoded;
        // read back, they are the same entries.
        let mut stored = Vec::new();
        for (i, listed) in m.entries_with_lists().enumerate() {
            let (mut e, list) = listed.expect("entry");
            assert!(e.chunks.is_empty() && e.chunk_sizes.is_empty());
            if matches!(list, ChunkList::Stored(_)) {
                stored.push(i);
            }
            let (ids, sizes): (Vec<_>, Vec<_>) = list.reader().map(|c| c.expect("chunk")).unzip();
            (e.chunks, e.chunk_sizes) = (ids, sizes);
            assert_eq!(e, entries[i]);
        }
        assert_eq!(stored, [7]);
        let in_memory = encoded(&entries);
        let lists = in_memory.entries_with_lists().map(|l| l.expect("entry").1);
        assert!(
            lists
                .into_iter()
                .all(|l| matches!(l, ChunkList::Memory { .. }))
        );
        // The big entry's message is read whole, then let go of: the window is back to its
        // usual size after every entry.
        let (mut reader, mut at) = (Reader::new(&m.entries.store), 0);
        while let Some((_, next)) = reader.entry_at(at).expect("entry") {
            let room = reader.window.as_ref().map_or(0, Window::capacity);
            assert!(room <= FILE_BUFFER, "after {at}");
            at = next;
        }
        entries.push(file("big", &[1]));
        let mut w = ManifestWriter::new(&sample_header());
        entries.iter().for_each(|e| w.push(e));
        assert_eq!(
            keep(&w.finish()).err(),
            Some(ManifestError::Duplicate { path: "big".into() })
        );
    }

    /// Equal hashes are only a duplicate when the entries' roots and paths are equal too: the
    /// index is forged here, as a real collision cannot be made.
    #[test]
    fn equal_hashes_are_confirmed_against_the_paths() {
        let mut kept = EncodedEntries::in_memory();
        let (a, b, a_again) = (file("a", &[1]), file("b", &[2]), file("a", &[3]));
        for e in [&a, &b, &a_again] {
            let mut msg = Vec::new();
            super::super::entry_codec::encode_delimited(e, &mut msg);
            let mut body = msg.as_slice();
            prost::encoding::decode_varint(&mut body).expect("length");
            kept.push(e, body).expect("in memory");
        }
        let offsets: Vec<u64> = kept.index.0.iter().map(|(_, o)| *o).collect();
        let forged =
            |pairs: &[usize]| PathIndex(pairs.iter().map(|&i| ([7u8; 16], offsets[i])).collect());
        assert_eq!(forged(&[0, 1]).check(&kept.store), Ok(()));
        assert_eq!(
            forged(&[1, 2, 0]).check(&kept.store),
            Err(ManifestError::Duplicate { path: "a".into() })
        );
        // The real hashes tell "a" twice apart from "b".
        assert_eq!(
            std::mem::take(&mut kept.index).check(&kept.store),
            Err(ManifestError::Duplicate { path: "a".into() })
        );
    }
}
