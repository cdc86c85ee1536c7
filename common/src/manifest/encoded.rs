//! A validated manifest whose entries stay encoded until they are used.
//!
//! A restore walks a manifest's entries once, in order, and needs each whole only while it is
//! restored. Decoded all at once they were the restore's largest cost that grows with the
//! source: ~400 bytes an entry with its chunk lists at the benchmark's 2.5 GiB (20,700 entries,
//! ~8 MB), against ~80 bytes encoded (1.7 MB). [`Decoder`](super::Decoder) keeps the entries'
//! messages as they were fed, after validating each one, and [`EncodedManifest::entries`]
//! decodes them one at a time again (a second decode of bytes already in memory: ~5 ms at
//! 2.5 GiB).
//!
//! Duplicate paths are found without the decoded entries: each entry leaves a 16-byte hash of
//! its root and path and the offset of its message ([`PathIndex`]); equal hashes are confirmed
//! by decoding both messages, so a collision can neither refuse a valid manifest nor hide a
//! duplicate.

use std::path::Path;

use super::{Entry, Manifest, ManifestError, ManifestHeader, entry_codec};

/// Entries' messages, each length-delimited, in manifest order; every one validated.
#[derive(Default)]
pub(super) struct EncodedEntries {
    pub(super) bytes: Vec<u8>,
    pub(super) count: u64,
    pub(super) logical_bytes: u64,
    pub(super) index: PathIndex,
}

impl EncodedEntries {
    /// Keeps a validated entry: its message, its path's hash and its size.
    pub(super) fn push(&mut self, e: &Entry, msg: &[u8]) {
        self.index.push(e, self.bytes.len() as u64);
        prost::encoding::encode_varint(msg.len() as u64, &mut self.bytes);
        self.bytes.extend_from_slice(msg);
        self.count += 1;
        self.logical_bytes = self.logical_bytes.saturating_add(e.size);
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
    fn check(mut self, bytes: &[u8]) -> Result<(), ManifestError> {
        self.0.sort_unstable();
        for run in self.0.chunk_by(|a, b| a.0 == b.0).filter(|r| r.len() > 1) {
            let mut same = run
                .iter()
                .map(|(_, offset)| entry_at(bytes, *offset))
                .collect::<Result<Vec<_>, _>>()?;
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

/// The entry whose length-delimited message starts at `offset`.
fn entry_at(bytes: &[u8], offset: u64) -> Result<Entry, ManifestError> {
    let mut rest = usize::try_from(offset)
        .ok()
        .and_then(|o| bytes.get(o..))
        .ok_or_else(|| ManifestError::Corrupt("entry offset out of range".into()))?;
    next_entry(&mut rest)?.ok_or_else(|| ManifestError::Corrupt("entry offset out of range".into()))
}

/// Decodes the next kept message of `rest`, consuming it.
fn next_entry(rest: &mut &[u8]) -> Result<Option<Entry>, ManifestError> {
    if rest.is_empty() {
        return Ok(None);
    }
    let len =
        prost::encoding::decode_varint(rest).map_err(|e| ManifestError::Corrupt(e.to_string()))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= rest.len())
        .ok_or_else(|| ManifestError::Corrupt("truncated entry".into()))?;
    let (msg, after) = rest.split_at(len);
    *rest = after;
    entry_codec::decode(msg).map(Some)
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
        std::mem::take(&mut entries.index).check(&entries.bytes)?;
        entries.bytes.shrink_to_fit();
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

    /// The entries in manifest order, each decoded when it is reached (and validated when the
    /// manifest was: an error here means memory was damaged, not the manifest).
    pub fn entries(&self) -> impl Iterator<Item = Result<Entry, ManifestError>> + '_ {
        let mut rest = self.entries.bytes.as_slice();
        std::iter::from_fn(move || next_entry(&mut rest).transpose())
    }

    /// Every entry decoded (listings, database restores, tests: what needs them all at once).
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

    /// Equal hashes are only a duplicate when the entries' roots and paths are equal too: the
    /// index is forged here, as a real collision cannot be made.
    #[test]
    fn equal_hashes_are_confirmed_against_the_paths() {
        let mut kept = EncodedEntries::default();
        let (a, b, a_again) = (file("a", &[1]), file("b", &[2]), file("a", &[3]));
        for e in [&a, &b, &a_again] {
            let mut msg = Vec::new();
            super::super::entry_codec::encode_delimited(e, &mut msg);
            let mut body = msg.as_slice();
            prost::encoding::decode_varint(&mut body).expect("length");
            kept.push(e, body);
        }
        let offsets: Vec<u64> = kept.index.0.iter().map(|(_, o)| *o).collect();
        let forged =
            |pairs: &[usize]| PathIndex(pairs.iter().map(|&i| ([7u8; 16], offsets[i])).collect());
        assert_eq!(forged(&[0, 1]).check(&kept.bytes), Ok(()));
        assert_eq!(
            forged(&[1, 2, 0]).check(&kept.bytes),
            Err(ManifestError::Duplicate { path: "a".into() })
        );
        // The real hashes tell "a" twice apart from "b".
        assert_eq!(
            std::mem::take(&mut kept.index).check(&kept.bytes),
            Err(ManifestError::Duplicate { path: "a".into() })
        );
    }
}
