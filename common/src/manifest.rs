//! The manifest: the agent's encrypted description of one snapshot.
//!
//! Byte layout, format version 1 (do not modify; a change is a new version):
//!
//! ```text
//! magic b"LBMF" · version u8 = 1 · varint-length-delimited ManifestHeader · varint-length-delimited
//! Entry messages (protobuf, fields below; tags never reused) · a zero length (0x00) · a
//! varint-length-delimited Trailer holding the entry count · end. A manifest without its trailer,
//! or with bytes after it, is corrupt: truncation at an entry boundary is detected.
//! ```
//!
//! The manifest bytes are chunked, sealed and uploaded like file data; the controller only learns
//! the manifest's chunk ids. Entries name a root (an absolute path from the source config, by
//! index into `header.roots`) and a path relative to it, `/`-separated raw bytes (Unix paths need
//! not be UTF-8).
//!
//! Every decoded entry is validated ([`Entry::validate`]): relative path without empty, `.` or
//! `..` components, a known kind, chunk ids of 32 bytes whose sizes add up to the file size, no
//! duplicates. A restore therefore only ever sees paths that stay inside their root; symlink
//! escapes are the restore's job (it never follows a symlink it did not check).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use prost::Message;
use thiserror::Error;

use crate::blob::MAX_CHUNK_LEN;
use crate::chunker::ChunkerParams;
use crate::ids::ChunkId;

mod chunk_list;
pub mod database;
mod decoder;
mod encoded;
mod entry_codec;
pub use chunk_list::{ChunkList, ChunkReader, STORED_LIST_BYTES, StoredChunks};
pub use database::{DatabaseDump, DatabaseMeta, TableInfo};
pub use decoder::Decoder;
pub use encoded::EncodedManifest;
pub use entry_codec::ChunkPieces;

/// Magic at the start of a manifest. Do not modify.
pub const MANIFEST_MAGIC: [u8; 4] = *b"LBMF";
/// Current manifest format version.
pub const MANIFEST_VERSION: u8 = 1;
/// Largest single encoded entry (a 100 GiB file at 256 KiB chunks needs ~15 MiB).
pub const MAX_ENTRY_LEN: usize = 64 << 20;
/// Longest path or symlink target, in bytes (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;

#[derive(Clone, PartialEq, Message)]
pub struct ChunkerParamsMsg {
    #[prost(uint32, tag = "1")]
    pub min: u32,
    #[prost(uint32, tag = "2")]
    pub avg: u32,
    #[prost(uint32, tag = "3")]
    pub max: u32,
}

impl ChunkerParamsMsg {
    /// The parameters, if valid.
    pub fn params(&self) -> Option<ChunkerParams> {
        let p = ChunkerParams {
            min: self.min,
            avg: self.avg,
            max: self.max,
        };
        p.validate().is_ok().then_some(p)
    }
}

impl From<ChunkerParams> for ChunkerParamsMsg {
    fn from(p: ChunkerParams) -> Self {
        ChunkerParamsMsg {
            min: p.min,
            avg: p.avg,
            max: p.max,
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct ManifestHeader {
    #[prost(string, tag = "1")]
    pub source: String,
    /// Source kind: "files".
    #[prost(string, tag = "2")]
    pub kind: String,
    /// Absolute root paths, raw bytes.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub roots: Vec<Vec<u8>>,
    #[prost(message, optional, tag = "4")]
    pub chunker: Option<ChunkerParamsMsg>,
    #[prost(int64, tag = "5")]
    pub created_at_unix_ms: i64,
    #[prost(string, tag = "6")]
    pub hostname: String,
    #[prost(string, tag = "7")]
    pub agent_version: String,
    /// Set for `mysql` sources: server, databases, tables, row counts (see [`database`]).
    #[prost(message, optional, tag = "8")]
    pub database: Option<DatabaseMeta>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EntryKind {
    Unspecified = 0,
    File = 1,
    Dir = 2,
    Symlink = 3,
}

/// One file, directory or symlink of a snapshot, decoded and validated.
///
/// The wire form is [`EntryMsg`]; this form holds a file's chunk ids in one flat list (32 bytes
/// each) instead of one allocation per id (~70 bytes each in the protobuf form): a restore keeps
/// every entry of the manifest, and at 170,000 chunk ids that was ~7 MiB of the agent's peak.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    /// Index into `ManifestHeader::roots`.
    pub root: u32,
    /// Path relative to the root, `/`-separated; empty for the root itself.
    pub path: Vec<u8>,
    /// An [`EntryKind`] (kept as the wire's number: an unknown kind fails validation).
    pub kind: i32,
    /// Permission bits (including setuid/setgid/sticky), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub size: u64,
    pub symlink_target: Vec<u8>,
    /// Chunk ids of the file's contents, in order.
    pub chunks: Vec<ChunkId>,
    /// Plaintext size of each chunk, parallel to `chunks`.
    pub chunk_sizes: Vec<u32>,
    /// See [`EntryMsg::chunker`].
    pub chunker: Option<ChunkerParamsMsg>,
}

/// The protobuf form of an [`Entry`] (format version 1; tags never reused).
#[derive(Clone, PartialEq, Message)]
pub struct EntryMsg {
    #[prost(uint32, tag = "1")]
    pub root: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub path: Vec<u8>,
    #[prost(enumeration = "EntryKind", tag = "3")]
    pub kind: i32,
    #[prost(uint32, tag = "4")]
    pub mode: u32,
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    #[prost(uint32, tag = "6")]
    pub gid: u32,
    #[prost(int64, tag = "7")]
    pub mtime_sec: i64,
    #[prost(uint32, tag = "8")]
    pub mtime_nsec: u32,
    #[prost(uint64, tag = "9")]
    pub size: u64,
    #[prost(bytes = "vec", tag = "10")]
    pub symlink_target: Vec<u8>,
    /// Chunk ids of the file's contents, in order (32 bytes each, or the entry is invalid).
    #[prost(bytes = "vec", repeated, tag = "11")]
    pub chunks: Vec<Vec<u8>>,
    #[prost(uint32, repeated, packed = "true", tag = "12")]
    pub chunk_sizes: Vec<u32>,
    /// Set when this file was chunked with other parameters than the header's (a dump file in
    /// a files source, `dump_files`). Added in 0.1 without a version bump: protobuf readers that
    /// predate it ignore it, and the field only steers the restore's unchanged-file check,
    /// which with the header's parameters merely rewrites such a file.
    #[prost(message, optional, tag = "13")]
    pub chunker: Option<ChunkerParamsMsg>,
}

impl From<&Entry> for EntryMsg {
    /// The reference form: [`entry_codec`] writes the same bytes without building it.
    fn from(e: &Entry) -> Self {
        EntryMsg {
            chunks: e.chunks.iter().map(|id| id.as_bytes().to_vec()).collect(),
            chunk_sizes: e.chunk_sizes.clone(),
            chunker: e.chunker.clone(),
            ..entry_codec::head(e)
        }
    }
}

impl TryFrom<EntryMsg> for Entry {
    type Error = ManifestError;

    /// Fails only for a chunk id that is not 32 bytes; [`Entry::validate`] checks the rest.
    fn try_from(m: EntryMsg) -> Result<Self, ManifestError> {
        let chunks = m
            .chunks
            .iter()
            .map(|c| ChunkId::try_from(c.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ManifestError::InvalidEntry {
                path: String::from_utf8_lossy(&m.path).into_owned(),
                reason: "chunk id of wrong length".into(),
            })?;
        Ok(Entry {
            root: m.root,
            path: m.path,
            kind: m.kind,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime_sec: m.mtime_sec,
            mtime_nsec: m.mtime_nsec,
            size: m.size,
            symlink_target: m.symlink_target,
            chunks,
            chunk_sizes: m.chunk_sizes,
            chunker: m.chunker,
        })
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct Trailer {
    #[prost(uint64, tag = "1")]
    pub entries: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("not a manifest (bad magic)")]
    BadMagic,
    #[error("manifest format version {0} is not supported (this Lifeboat knows 1)")]
    UnsupportedVersion(u8),
    #[error("manifest is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("manifest entry {path:?} is invalid: {reason}")]
    InvalidEntry { path: String, reason: String },
    #[error("manifest lists {path:?} twice")]
    Duplicate { path: String },
    /// The scratch file a restore keeps the manifest's entries in failed (the state
    /// directory's filesystem), not the manifest.
    #[error("cannot use the manifest's scratch file: {0}")]
    Scratch(String),
}

impl ManifestError {
    /// A scratch file's I/O error (the restore's kept entries, a backup's chunk lists).
    fn scratch(e: std::io::Error) -> Self {
        ManifestError::Scratch(e.to_string())
    }
}

impl Entry {
    pub fn entry_kind(&self) -> EntryKind {
        EntryKind::try_from(self.kind).unwrap_or(EntryKind::Unspecified)
    }

    /// The relative path as a [`Path`].
    pub fn rel_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.path))
    }

    /// Human-readable path for messages.
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// Checks everything a restore relies on. `roots` is the header's root count.
    pub fn validate(&self, roots: usize) -> Result<(), ManifestError> {
        let counts = (self.chunks.len(), self.chunk_sizes.len());
        self.validate_with(roots, counts, self.chunk_sizes.iter().map(|&s| Ok(s)))
    }

    /// As [`Entry::validate`], with the chunk list given apart: the numbers of ids and of sizes,
    /// and the sizes read in order (an entry whose list was left in a scratch file,
    /// [`chunk_list`]).
    fn validate_with(
        &self,
        roots: usize,
        (ids, sizes_n): (usize, usize),
        sizes: impl Iterator<Item = Result<u32, ManifestError>>,
    ) -> Result<(), ManifestError> {
        let bad = |reason: &str| ManifestError::InvalidEntry {
            path: self.display_path(),
            reason: reason.to_owned(),
        };
        if self.root as usize >= roots {
            return Err(bad("root index out of range"));
        }
        validate_rel_path(&self.path).map_err(|r| bad(&r))?;
        match self.entry_kind() {
            EntryKind::Unspecified => return Err(bad("unknown entry kind")),
            EntryKind::Symlink => {
                if self.symlink_target.is_empty()
                    || self.symlink_target.len() > MAX_PATH_LEN
                    || self.symlink_target.contains(&0)
                {
                    return Err(bad("invalid symlink target"));
                }
            }
            EntryKind::Dir | EntryKind::File => {}
        }
        if self.entry_kind() != EntryKind::File && (ids != 0 || self.size != 0) {
            return Err(bad("only files have contents"));
        }
        if ids != sizes_n {
            return Err(bad("chunk ids and sizes differ in number"));
        }
        let mut total: u64 = 0;
        for s in sizes {
            let s = s?;
            if s == 0 || s as usize > MAX_CHUNK_LEN {
                return Err(bad("chunk size out of range"));
            }
            total += u64::from(s);
        }
        if total != self.size {
            return Err(bad("chunk sizes do not add up to the file size"));
        }
        if self.mode > 0o7777 || self.mtime_nsec >= 1_000_000_000 {
            return Err(bad("mode or mtime out of range"));
        }
        Ok(())
    }
}

/// A relative path is empty (the root) or `/`-separated components, none empty, `.` or `..`.
pub fn validate_rel_path(p: &[u8]) -> Result<(), String> {
    if p.len() > MAX_PATH_LEN {
        return Err("path too long".into());
    }
    if p.is_empty() {
        return Ok(());
    }
    if p.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    if p[0] == b'/' {
        return Err("absolute path".into());
    }
    for comp in p.split(|&b| b == b'/') {
        match comp {
            b"" => return Err("empty path component".into()),
            b"." | b".." => return Err("'.' or '..' component".into()),
            _ => {}
        }
    }
    Ok(())
}

fn validate_root(p: &[u8]) -> Result<(), ManifestError> {
    let bad = || ManifestError::Corrupt(format!("invalid root {:?}", String::from_utf8_lossy(p)));
    if p == b"/" {
        return Ok(());
    }
    match p.strip_prefix(b"/") {
        Some(rest) if validate_rel_path(rest).is_ok() && !rest.is_empty() => Ok(()),
        _ => Err(bad()),
    }
}

/// Builds a manifest in memory.
pub struct ManifestWriter {
    buf: Vec<u8>,
    entries: u64,
}

impl ManifestWriter {
    pub fn new(header: &ManifestHeader) -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(&MANIFEST_MAGIC);
        buf.push(MANIFEST_VERSION);
        // Encoding into a Vec cannot fail (it grows as needed).
        let _ = header.encode_length_delimited(&mut buf);
        ManifestWriter { buf, entries: 0 }
    }

    /// Appends an entry (without an allocation per chunk id: [`entry_codec`]).
    pub fn push(&mut self, entry: &Entry) {
        entry_codec::encode_delimited(entry, &mut self.buf);
        self.entries += 1;
    }

    /// Appends an entry, then calls `flush` with the bytes written so far; a large entry's
    /// ids are also flushed every thousand or so. `flush` may remove bytes from the front (a
    /// writer that uploads the manifest as it goes cuts its chunks off there): what it leaves
    /// is the start of the rest, and [`ManifestWriter::finish`] returns what was never taken.
    pub fn push_with<E>(
        &mut self,
        entry: &Entry,
        mut flush: impl FnMut(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        entry_codec::encode_delimited_with(entry, &mut self.buf, &mut flush)?;
        self.entries += 1;
        flush(&mut self.buf)
    }

    /// As [`ManifestWriter::push_with`] for an entry whose chunk list is read in `pieces`
    /// rather than held (`entry`'s own chunks and sizes are ignored): the same bytes.
    pub fn push_pieces_with<E: From<ManifestError>>(
        &mut self,
        entry: &Entry,
        pieces: &mut dyn ChunkPieces,
        mut flush: impl FnMut(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        entry_codec::encode_pieces_delimited_with(entry, pieces, &mut self.buf, &mut flush)?;
        self.entries += 1;
        flush(&mut self.buf)
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The end marker and trailer appended: the whole manifest, or what `flush` left of it.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(0);
        let _ = Trailer {
            entries: self.entries,
        }
        .encode_length_delimited(&mut self.buf);
        self.buf
    }
}

/// A decoded, fully validated manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub header: ManifestHeader,
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// The absolute path of root `i`.
    pub fn root_path(&self, i: u32) -> &Path {
        self.header.root_path(i)
    }
}

impl ManifestHeader {
    /// The absolute path of root `i`.
    pub fn root_path(&self, i: u32) -> &Path {
        Path::new(OsStr::from_bytes(&self.roots[i as usize]))
    }
}

/// Decodes and validates a manifest held whole (a restore feeds it in pieces: [`Decoder`]).
pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let mut d = Decoder::new();
    d.feed(bytes)?;
    d.finish()?.decode_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_header() -> ManifestHeader {
        ManifestHeader {
            source: "web".into(),
            kind: "files".into(),
            roots: vec![b"/var/www".to_vec(), b"/etc/nginx".to_vec()],
            chunker: Some(ChunkerParams::FILES.into()),
            created_at_unix_ms: 1_795_590_289_000,
            hostname: "vm1".into(),
            agent_version: "0.1.0".into(),
            database: None,
        }
    }

    pub(crate) fn file(path: &str, sizes: &[u32]) -> Entry {
        Entry {
            root: 0,
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File as i32,
            mode: 0o644,
            size: sizes.iter().map(|&s| u64::from(s)).sum(),
            chunks: sizes.iter().map(|&s| ChunkId([s as u8; 32])).collect(),
            chunk_sizes: sizes.to_vec(),
            ..Default::default()
        }
    }

    proptest! {
        #[test]
        fn decode_encode_round_trip(names in proptest::collection::hash_set("[a-zA-Z0-9 é_.-]{1,20}", 0..20), mtime in any::<i64>()) {
            let names: Vec<String> = names.into_iter().filter(|n| n != "." && n != "..").collect();
            let mut w = ManifestWriter::new(&sample_header());
            let mut entries = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let mut e = file(n, &[i as u32 + 1, 7]);
                e.mtime_sec = mtime;
                w.push(&e);
                entries.push(e);
            }
            let m = decode(&w.finish()).expect("decode");
            prop_assert_eq!(m.header, sample_header());
            prop_assert_eq!(m.entries, entries);
        }
    }

    #[test]
    fn rejects_escaping_paths() {
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/.",
        ] {
            let mut w = ManifestWriter::new(&sample_header());
            w.push(&file(bad, &[1]));
            assert!(
                matches!(decode(&w.finish()), Err(ManifestError::InvalidEntry { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_inconsistent_entries_and_duplicates() {
        let mut e = file("a", &[1, 2]);
        e.size = 99;
        assert!(e.validate(2).is_err());
        let mut e = file("a", &[1]);
        e.root = 5;
        assert!(e.validate(2).is_err());
        let mut w = ManifestWriter::new(&sample_header());
        w.push(&file("a", &[1]));
        w.push(&file("a", &[1]));
        assert!(matches!(
            decode(&w.finish()),
            Err(ManifestError::Duplicate { .. })
        ));
    }

    #[test]
    fn chunk_ids_of_the_wrong_length_are_refused() {
        let mut w = ManifestWriter::new(&sample_header());
        let mut m = EntryMsg::from(&file("a", &[1, 2]));
        m.chunks[1].pop();
        let _ = m.encode_length_delimited(&mut w.buf);
        w.entries += 1;
        match decode(&w.finish()) {
            Err(ManifestError::InvalidEntry { path, reason }) => {
                assert_eq!(
                    (path.as_str(), reason.as_str()),
                    ("a", "chunk id of wrong length")
                );
            }
            other => panic!("expected an invalid entry, got {other:?}"),
        }
    }

    #[test]
    fn garbage_and_truncation_fail_cleanly() {
        assert_eq!(decode(b""), Err(ManifestError::BadMagic));
        assert_eq!(
            decode(b"LBMF\x02"),
            Err(ManifestError::UnsupportedVersion(2))
        );
        let mut w = ManifestWriter::new(&sample_header());
        w.push(&file("a", &[1]));
        let bytes = w.finish();
        for cut in 5..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
