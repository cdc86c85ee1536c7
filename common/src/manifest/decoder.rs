//! Decoding a manifest fed in pieces.
//!
//! A restore fetches the manifest chunk by chunk; feeding each verified chunk here as it arrives
//! means the encoded manifest is never held whole beside the decoded one (at 130,000 chunk ids
//! that was ~6.5 MB twice over, the restore's peak at 1 GiB). Only an incomplete message is kept
//! between pieces: at most one entry ([`MAX_ENTRY_LEN`]).
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
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), ManifestError> {
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
        while let Some(msg) = next_message(&mut rest)? {
            self.accept(msg)?;
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

/// The next length-delimited message at the start of `data`, consumed; `None` if `data` does not
/// hold all of it yet. A length over [`MAX_ENTRY_LEN`] is refused at once.
fn next_message<'a>(data: &mut &'a [u8]) -> Result<Option<&'a [u8]>, ManifestError> {
    let varint_complete = data.iter().take(MAX_VARINT_LEN).any(|b| b & 0x80 == 0);
    if !varint_complete && data.len() < MAX_VARINT_LEN {
        return Ok(None);
    }
    let mut rest = *data;
    let len = prost::encoding::decode_varint(&mut rest)
        .map_err(|e| ManifestError::Corrupt(e.to_string()))?;
    let len = usize::try_from(len).map_err(|_| ManifestError::Corrupt("length overflow".into()))?;
    if len > MAX_ENTRY_LEN {
        return Err(ManifestError::Corrupt(format!(
            "entry of {len} bytes exceeds the limit"
        )));
    }
    if len > rest.len() {
        return Ok(None);
    }
    let (msg, after) = rest.split_at(len);
    *data = after;
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{file, sample_header};
    use super::super::{ManifestWriter, decode};
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
