//! Decoding a manifest fed in pieces.
//!
//! A restore fetches the manifest chunk by chunk; feeding each verified chunk here as it arrives
//! means the encoded manifest is never held whole beside the decoded one (at 130,000 chunk ids
//! that was ~6.5 MB twice over, the restore's peak at 1 GiB). Only an incomplete message is kept
//! between pieces: at most one entry ([`MAX_ENTRY_LEN`]). When the entries are kept in a scratch
//! file, an incomplete entry over 64 KiB (a large file's chunk list) is not kept either: its
//! bytes go to the file as they come and it is validated there once complete, read in order
//! through a small window ([`super::chunk_list`]), never decoded whole.
//!
//! Validation is the same as decoding the bytes whole ([`super::decode`], which uses this):
//! magic and version first, every entry validated as it is decoded, a length prefix over the limit
//! refused as soon as it is read (never allocated), and at [`Decoder::finish`] the end marker and
//! trailer present, nothing after them, the entry count matching and no path listed twice. A
//! manifest that stops anywhere else is reported truncated. The entries are kept encoded, as
//! they came ([`EncodedManifest`]): decoded all at once they were the restore's largest cost
//! that grows with the source.

use prost::Message;

use super::encoded::{EncodedEntries, EncodedManifest};
use super::{
    MANIFEST_MAGIC, MANIFEST_VERSION, MAX_ENTRY_LEN, ManifestError, ManifestHeader, Trailer,
    entry_codec, validate_root,
};

/// The longest varint (a `u64`).
pub(super) const MAX_VARINT_LEN: usize = 10;

/// Where the decoder is in the layout (see the parent module's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Magic,
    Header,
    Entries,
    Trailer,
    Done,
}

/// A manifest being decoded: [`Decoder::feed`] the bytes in order, then [`Decoder::finish`].
pub struct Decoder {
    /// Bytes fed but not decoded yet: the start of a message not complete.
    pending: Vec<u8>,
    stage: Stage,
    header: ManifestHeader,
    entries: EncodedEntries,
    /// Bytes still to come of a large entry's message passed to the scratch file as it comes
    /// ([`EncodedEntries::streams`]).
    streaming: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            pending: Vec::new(),
            stage: Stage::Magic,
            header: ManifestHeader::default(),
            entries: EncodedEntries::in_memory(),
            streaming: 0,
        }
    }

    /// A decoder that keeps the entries' messages in `file` (an unlinked scratch file: written
    /// from its start, never synced), not in memory: what the manifest costs a restore is then
    /// the entry being restored, whatever the manifest's size.
    pub fn keeping_entries_in(file: std::fs::File) -> Self {
        Decoder {
            entries: EncodedEntries::in_file(file),
            ..Self::new()
        }
    }

    /// Decodes what `piece` completes; the first error is final (the manifest is refused).
    /// Decoded straight from `piece` when nothing is pending, so only the message a piece ends
    /// in the middle of is copied (and gathered whole if it spans pieces), not every byte fed.
    pub fn feed(&mut self, mut piece: &[u8]) -> Result<(), ManifestError> {
        if self.streaming > 0 {
            let n = piece
                .len()
                .min(usize::try_from(self.streaming).unwrap_or(usize::MAX));
            self.entries.append_streamed(&piece[..n])?;
            self.streaming -= n as u64;
            piece = &piece[n..];
            if self.streaming > 0 {
                return Ok(());
            }
            self.entries.end_streamed(self.header.roots.len())?;
        }
        if self.pending.is_empty() {
            let used = self.decode_complete(piece)?;
            self.pending.extend_from_slice(&piece[used..]);
            return Ok(());
        }
        self.pending.extend_from_slice(piece);
        let data = std::mem::take(&mut self.pending);
        let res = self.decode_complete(&data);
        self.pending = data;
        self.pending.drain(..res?);
        Ok(())
    }

    /// Decodes every complete message at the start of `data`; returns how many bytes it used.
    fn decode_complete(&mut self, data: &[u8]) -> Result<usize, ManifestError> {
        let mut rest = data;
        if self.stage == Stage::Magic {
            if rest.len() >= MANIFEST_MAGIC.len() && rest[..MANIFEST_MAGIC.len()] != MANIFEST_MAGIC
            {
                return Err(ManifestError::BadMagic);
            }
            if rest.len() <= MANIFEST_MAGIC.len() {
                return Ok(0);
            }
            if rest[4] != MANIFEST_VERSION {
                return Err(ManifestError::UnsupportedVersion(rest[4]));
            }
            rest = &rest[5..];
            self.stage = Stage::Header;
        }
        while let Some((head, len)) = next_length(rest)? {
            if let Some(msg) = rest.get(head..head + len) {
                rest = &rest[head + len..];
                self.accept(msg)?;
                continue;
            }
            // Not complete: a large entry's message goes to the scratch file as it comes,
            // anything else waits whole in `pending`.
            if self.stage == Stage::Entries && self.entries.streams(len) {
                self.entries.begin_streamed(len)?;
                self.entries.append_streamed(&rest[head..])?;
                self.streaming = (len - (rest.len() - head)) as u64;
                rest = &[];
            }
            break;
        }
        if self.stage == Stage::Done && !rest.is_empty() {
            return Err(trailer_mismatch());
        }
        Ok(data.len() - rest.len())
    }

    /// One complete message, by stage.
    fn accept(&mut self, msg: &[u8]) -> Result<(), ManifestError> {
        match self.stage {
            Stage::Magic => unreachable!("the magic is read before any message"),
            Stage::Header => {
                self.header = ManifestHeader::decode(msg)
                    .map_err(|e| ManifestError::Corrupt(e.to_string()))?;
                for r in &self.header.roots {
                    validate_root(r)?;
                }
                self.stage = Stage::Entries;
            }
            Stage::Entries if msg.is_empty() => self.stage = Stage::Trailer,
            Stage::Entries => {
                let e = entry_codec::decode(msg)?;
                e.validate(self.header.roots.len())?;
                self.entries.push(&e, msg)?;
            }
            Stage::Trailer => {
                let t = Trailer::decode(msg).map_err(|e| ManifestError::Corrupt(e.to_string()))?;
                if t.entries != self.entries.count {
                    return Err(trailer_mismatch());
                }
                self.stage = Stage::Done;
            }
            Stage::Done => return Err(trailer_mismatch()),
        }
        Ok(())
    }

    /// The manifest, if everything fed was one whole, valid manifest.
    pub fn finish(self) -> Result<EncodedManifest, ManifestError> {
        if self.streaming > 0 {
            return Err(ManifestError::Corrupt("truncated entry".into()));
        }
        match self.stage {
            Stage::Magic => return Err(ManifestError::BadMagic),
            Stage::Done if self.pending.is_empty() => {}
            Stage::Done => return Err(trailer_mismatch()),
            _ if !self.pending.is_empty() => {
                return Err(ManifestError::Corrupt("truncated entry".into()));
            }
            _ => {
                return Err(ManifestError::Corrupt(
                    "no trailer: the manifest is truncated".into(),
                ));
            }
        }
        EncodedManifest::new(self.header, self.entries)
    }
}

fn trailer_mismatch() -> ManifestError {
    ManifestError::Corrupt("trailer does not match the entries".into())
}

/// The length prefix at the start of `data`: its own length and the message's; `None` if
/// `data` does not hold all of it yet. A length over [`MAX_ENTRY_LEN`] is refused at once.
fn next_length(data: &[u8]) -> Result<Option<(usize, usize)>, ManifestError> {
    let varint_complete = data.iter().take(MAX_VARINT_LEN).any(|b| b & 0x80 == 0);
    if !varint_complete && data.len() < MAX_VARINT_LEN {
        return Ok(None);
    }
    let mut rest = data;
    let len = prost::encoding::decode_varint(&mut rest)
        .map_err(|e| ManifestError::Corrupt(e.to_string()))?;
    let len = usize::try_from(len).map_err(|_| ManifestError::Corrupt("length overflow".into()))?;
    if len > MAX_ENTRY_LEN {
        return Err(ManifestError::Corrupt(format!(
            "entry of {len} bytes exceeds the limit"
        )));
    }
    Ok(Some((data.len() - rest.len(), len)))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{file, sample_header};
    use super::super::{Entry, ManifestWriter, decode};
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = ManifestWriter::new(&sample_header());
        for i in 0..20 {
            w.push(&file(&format!("f{i}"), &[i + 1, 300]));
        }
        w.finish()
    }

    #[test]
    fn any_split_decodes_as_the_whole() {
        let bytes = sample();
        let whole = decode(&bytes).expect("whole");
        for piece in [1, 2, 3, 7, 64, 1000] {
            let mut d = Decoder::new();
            for p in bytes.chunks(piece) {
                d.feed(p).expect("feed");
            }
            let m = d.finish().expect("finish");
            assert_eq!(
                (m.len(), m.logical_bytes()),
                (
                    whole.entries.len() as u64,
                    whole.entries.iter().map(|e| e.size).sum()
                )
            );
            assert_eq!(m.decode_all().expect("decode"), whole, "pieces of {piece}");
        }
    }

    #[test]
    fn only_an_incomplete_message_is_kept() {
        let bytes = sample();
        let mut d = Decoder::new();
        let mut most = 0;
        for p in bytes.chunks(5) {
            d.feed(p).expect("feed");
            most = most.max(d.pending.len());
        }
        let largest = bytes.len() / 10;
        assert!(most < largest, "kept {most} bytes of {}", bytes.len());
    }

    #[test]
    fn errors_come_as_soon_as_the_bytes_show_them() {
        let mut d = Decoder::new();
        assert_eq!(d.feed(b"LBM"), Ok(()));
        assert_eq!(d.feed(b"X"), Err(ManifestError::BadMagic));
        let mut d = Decoder::new();
        d.feed(b"LBMF\x01").expect("magic");
        let mut huge = Vec::new();
        prost::encoding::encode_varint(1 << 40, &mut huge);
        assert!(matches!(d.feed(&huge), Err(ManifestError::Corrupt(r)) if r.contains("limit")));
        let mut bytes = sample();
        bytes.push(0);
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&bytes),
            Err(trailer_mismatch()),
            "a byte after the trailer"
        );
    }

    #[test]
    fn a_manifest_cut_short_is_truncated_at_finish() {
        let bytes = sample();
        for cut in [0, 3, 5, 6, 40, bytes.len() - 1] {
            let mut d = Decoder::new();
            d.feed(&bytes[..cut]).expect("a prefix feeds");
            assert!(d.finish().is_err(), "cut at {cut}");
        }
    }

    fn manifest(entries: &[Entry]) -> Vec<u8> {
        let mut w = ManifestWriter::new(&sample_header());
        entries.iter().for_each(|e| w.push(e));
        w.finish()
    }

    /// Fed to a decoder keeping its entries in a file, `bytes` in pieces of `piece`; the most
    /// bytes ever pending.
    fn kept(bytes: &[u8], piece: usize) -> (Result<EncodedManifest, ManifestError>, usize) {
        let mut d = Decoder::keeping_entries_in(tempfile::tempfile().expect("tempfile"));
        let mut most = 0;
        for p in bytes.chunks(piece) {
            if let Err(e) = d.feed(p) {
                return (Err(e), most);
            }
            most = most.max(d.pending.capacity());
        }
        (d.finish(), most)
    }

    /// A large entry's message goes to the scratch file as it comes: whatever the pieces, nothing
    /// near its size is ever pending, and it reads back as decoded whole.
    #[test]
    fn a_large_entry_is_kept_as_it_comes() {
        let mut entries: Vec<Entry> = (0..6).map(|i| file(&format!("f{i}"), &[i + 1])).collect();
        entries.insert(2, file("big", &[7; 20_000]));
        entries.insert(5, file("big2", &[9; 3_000]));
        let bytes = manifest(&entries);
        for piece in [999, 65_536, 300_000] {
            let (m, most) = kept(&bytes, piece);
            assert!(
                most < piece + 70_000,
                "{most} bytes pending, pieces of {piece}"
            );
            let m = m.expect("valid");
            assert_eq!(m.decode_all().expect("decode").entries, entries);
        }
    }

    /// Kept as it comes, a large entry is refused as when it is decoded whole.
    #[test]
    fn a_large_entry_kept_as_it_comes_is_refused_as_a_whole_one() {
        let big = file("big", &[7; 20_000]);
        let mut more = big.clone();
        more.size += 1;
        let mut fewer_ids = big.clone();
        fewer_ids.chunks.pop();
        let mut bad_path = big.clone();
        bad_path.path = b"../x".to_vec();
        let mut zero = big.clone();
        zero.chunk_sizes[19_000] = 0;
        zero.size -= 7;
        for e in [more, fewer_ids, bad_path, zero] {
            let bytes = manifest(&[file("a", &[1]), e]);
            let whole = decode(&bytes).expect_err("refused");
            assert!(
                matches!(whole, ManifestError::InvalidEntry { .. }),
                "{whole}"
            );
            assert_eq!(kept(&bytes, 4096).0.err(), Some(whole));
        }
        let bytes = manifest(&[big.clone(), file("a", &[1]), big]);
        assert_eq!(
            kept(&bytes, 4096).0.err(),
            Some(ManifestError::Duplicate { path: "big".into() })
        );
        let bytes = manifest(&[file("big", &[7; 20_000])]);
        for cut in [100, 400_000] {
            assert_eq!(
                kept(&bytes[..cut], 4096).0.err(),
                Some(ManifestError::Corrupt("truncated entry".into())),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn duplicates_are_found_wherever_they_are() {
        let mut w = ManifestWriter::new(&sample_header());
        for n in ["b", "a", "c", "a/x", "b"] {
            w.push(&file(n, &[1]));
        }
        assert_eq!(
            decode(&w.finish()),
            Err(ManifestError::Duplicate { path: "b".into() })
        );
        let mut w = ManifestWriter::new(&sample_header());
        let mut other_root = file("a", &[1]);
        other_root.root = 1;
        w.push(&file("a", &[1]));
        w.push(&other_root);
        assert!(decode(&w.finish()).is_ok(), "same path, other root");
    }
}
