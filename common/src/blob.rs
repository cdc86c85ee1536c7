//! The blob: one encrypted chunk, as stored by the controller.
//!
//! Byte layout, format version 1 (do not modify; a change is a new version):
//!
//! ```text
//! offset  size  field
//! 0       4     magic b"LBBL"
//! 4       1     format version = 1
//! 5       24    XChaCha20 nonce (random per blob)
//! 29      n+16  XChaCha20-Poly1305 ciphertext of the payload, then its 16-byte tag
//! ```
//!
//! The payload is `flag (1 byte) || body`: flag 0 = body is the raw chunk, flag 1 = body is a
//! zstd frame of it. The associated data is `header (first 5 bytes) || chunk id (32 bytes)`, so a
//! blob cannot be replayed under another id or another version. After decrypting, the keyed
//! BLAKE3 of the plaintext must equal the id: a blob sealed by a different key or a bug is caught.
//!
//! Failure modes: truncated or garbage input, wrong magic or version, a failed tag (tampering,
//! bit rot, wrong key), a body that inflates past [`MAX_CHUNK_LEN`] (zip bomb), an id mismatch.
//! Each is a distinct [`BlobError`]; none panics.

use std::cell::RefCell;

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use thiserror::Error;

use crate::ids::ChunkId;
use crate::keys::{DataKeys, fill_random};

/// Magic at the start of every blob. Do not modify.
pub const BLOB_MAGIC: [u8; 4] = *b"LBBL";
/// Current blob format version. Do not modify the meaning of a shipped version.
pub const BLOB_VERSION: u8 = 1;
/// Header length: magic + version.
pub const HEADER_LEN: usize = 5;
/// Nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a blob adds to its body: header, nonce, flag and tag.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + 1 + TAG_LEN;
/// The largest chunk plaintext any chunker may produce (a hard format limit, 8 MiB).
pub const MAX_CHUNK_LEN: usize = 8 << 20;
/// The largest valid blob: an incompressible chunk of [`MAX_CHUNK_LEN`] stored raw.
pub const MAX_BLOB_LEN: usize = MAX_CHUNK_LEN + OVERHEAD;

const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlobError {
    #[error("blob is too short ({0} bytes) to be a blob")]
    Truncated(usize),
    #[error("blob is {0} bytes, larger than the {MAX_BLOB_LEN}-byte limit")]
    TooLarge(usize),
    #[error("not a blob (bad magic)")]
    BadMagic,
    #[error("blob format version {0} is not supported by this version of Lifeboat (knows 1)")]
    UnsupportedVersion(u8),
    #[error(
        "blob failed authentication: damaged, tampered with, or sealed with another master key"
    )]
    Authentication,
    #[error("blob payload has unknown compression flag {0}")]
    BadFlag(u8),
    #[error("blob payload does not decompress: {0}")]
    Decompress(String),
    #[error("chunk is {0} bytes, larger than the {MAX_CHUNK_LEN}-byte limit")]
    ChunkTooLarge(usize),
    #[error("blob decrypted, but its content does not hash to chunk id {0}")]
    IdMismatch(String),
}

fn aad(id: &ChunkId) -> [u8; HEADER_LEN + 32] {
    let mut a = [0u8; HEADER_LEN + 32];
    a[..4].copy_from_slice(&BLOB_MAGIC);
    a[4] = BLOB_VERSION;
    a[HEADER_LEN..].copy_from_slice(id.as_bytes());
    a
}

/// The blob AEAD, XChaCha20-Poly1305, computed as it is defined (draft-irtf-cfrg-xchacha-03,
/// §2.3): HChaCha20 of the key and the nonce's first 16 bytes gives a subkey, under which
/// ChaCha20-Poly1305 (RFC 8439) runs with the nonce `0^4 || the nonce's last 8 bytes`. The
/// subkey comes from the `chacha20` crate; the bulk runs in aws-lc's assembly, 2.3–2.9× the
/// speed of the portable implementation that sealed the first version-1 blobs, with the same
/// bytes (the golden blob still opens; `tests::both_implementations_agree`). `None` only if
/// aws-lc refuses a 32-byte key, which it does not.
fn xchacha(keys: &DataKeys, nonce: &[u8; NONCE_LEN]) -> Option<(LessSafeKey, Nonce)> {
    let mut head = [0u8; 16];
    head.copy_from_slice(&nonce[..16]);
    let sub = chacha20::hchacha::<chacha20::R20>(&(*keys.blob_key()).into(), &head.into());
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, sub.as_slice()).ok()?);
    let mut tail = [0u8; 12];
    tail[4..].copy_from_slice(&nonce[16..]);
    Some((key, Nonce::assume_unique_for_key(tail)))
}

/// Seals one chunk. `zstd_level` 0 stores raw; otherwise zstd at that level is tried and kept only
/// if it saves space.
pub fn seal(
    keys: &DataKeys,
    id: &ChunkId,
    plaintext: &[u8],
    zstd_level: i32,
) -> Result<Vec<u8>, BlobError> {
    if plaintext.len() > MAX_CHUNK_LEN {
        return Err(BlobError::ChunkTooLarge(plaintext.len()));
    }
    let compressed = if zstd_level != 0 {
        compress(plaintext, zstd_level).filter(|c| c.len() < plaintext.len())
    } else {
        None
    };
    let (flag, body): (u8, &[u8]) = match &compressed {
        Some(c) => (FLAG_ZSTD, c),
        None => (FLAG_RAW, plaintext),
    };
    let mut out = Vec::with_capacity(body.len() + OVERHEAD);
    out.extend_from_slice(&BLOB_MAGIC);
    out.push(BLOB_VERSION);
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.push(flag);
    out.extend_from_slice(body);
    let (key, nonce) = xchacha(keys, &nonce).ok_or(BlobError::ChunkTooLarge(plaintext.len()))?;
    let tag = key
        .seal_in_place_separate_tag(nonce, Aad::from(aad(id)), &mut out[start..])
        .map_err(|_| BlobError::ChunkTooLarge(plaintext.len()))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

thread_local! {
    // One zstd context per thread, reused: creating one per chunk cost ~4% of a backup's CPU
    // (and the page faults of its fresh workspace), which small dump chunks multiply.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// zstd at `level` with this thread's context; `None` if zstd fails (the caller stores raw).
fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = match slot.as_mut() {
            Some(c) => {
                c.set_compression_level(level).ok()?;
                c
            }
            None => slot.insert(zstd::bulk::Compressor::new(level).ok()?),
        };
        c.compress(data).ok()
    })
}

/// Decompresses one blob body (at most [`MAX_CHUNK_LEN`]) with this thread's context.
fn decompress(data: &[u8]) -> Result<Vec<u8>, BlobError> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| BlobError::Decompress(e.to_string()))?,
            ),
        };
        d.decompress(data, MAX_CHUNK_LEN)
            .map_err(|e| BlobError::Decompress(e.to_string()))
    })
}

/// Chunks shorter than this are always offered to zstd (a sample would be most of the chunk).
pub const SAMPLE_MIN_CHUNK: usize = 64 << 10;
/// Bytes taken from each of three places (start, middle, end) of a chunk to judge it.
const SAMPLE_LEN: usize = 4 << 10;
/// A sample must shrink below this share of its size (in 1/128ths) to count as compressible.
const SAMPLE_KEEP_128THS: usize = 124;

/// Whether zstd is worth trying on `plaintext`: `false` for a chunk that looks incompressible
/// (JPEG, PNG, video, archives, encrypted data), judged by compressing three 4 KiB samples at
/// level 1, which costs about 3% of compressing a 1 MiB chunk. A wrong `false` only stores a
/// chunk raw (never a format change: the raw flag exists since version 1); a wrong `true` only
/// costs the attempt, since [`seal`] keeps the zstd body only when it is smaller.
pub fn worth_compressing(plaintext: &[u8]) -> bool {
    let n = plaintext.len();
    if n < SAMPLE_MIN_CHUNK {
        return true;
    }
    let mut sample = Vec::with_capacity(3 * SAMPLE_LEN);
    for start in [0, n / 2 - SAMPLE_LEN / 2, n - SAMPLE_LEN] {
        sample.extend_from_slice(&plaintext[start..start + SAMPLE_LEN]);
    }
    match compress(&sample, 1) {
        Some(c) => c.len() * 128 < sample.len() * SAMPLE_KEEP_128THS,
        None => true,
    }
}

/// Checks the framing of a blob without any key (what the controller can check).
pub fn check_framing(blob: &[u8]) -> Result<(), BlobError> {
    if blob.len() > MAX_BLOB_LEN {
        return Err(BlobError::TooLarge(blob.len()));
    }
    if blob.len() < OVERHEAD {
        return Err(BlobError::Truncated(blob.len()));
    }
    if blob[..4] != BLOB_MAGIC {
        return Err(BlobError::BadMagic);
    }
    if blob[4] != BLOB_VERSION {
        return Err(BlobError::UnsupportedVersion(blob[4]));
    }
    Ok(())
}

/// Opens a blob: checks framing, authenticates, decompresses (bounded) and verifies the id.
pub fn open(keys: &DataKeys, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>, BlobError> {
    check_framing(blob)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&blob[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
    // Ciphertext and tag; opened in place, then the tag is cut off.
    let mut payload = blob[HEADER_LEN + NONCE_LEN..].to_vec();
    let (key, nonce) = xchacha(keys, &nonce).ok_or(BlobError::Authentication)?;
    let len = key
        .open_in_place(nonce, Aad::from(aad(id)), &mut payload)
        .map_err(|_| BlobError::Authentication)?
        .len();
    payload.truncate(len);
    let plaintext = match payload.first().copied() {
        Some(FLAG_RAW) => {
            payload.remove(0);
            payload
        }
        Some(FLAG_ZSTD) => decompress(&payload[1..])?,
        Some(f) => return Err(BlobError::BadFlag(f)),
        None => return Err(BlobError::Truncated(blob.len())),
    };
    if keys.chunk_id(&plaintext) != *id {
        return Err(BlobError::IdMismatch(id.to_hex()));
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use proptest::prelude::*;

    fn keys() -> DataKeys {
        MasterKey::from_bytes([9; 32]).data_keys()
    }

    /// The portable XChaCha20-Poly1305 (RustCrypto's), which sealed the first version-1 blobs.
    fn reference() -> chacha20poly1305::XChaCha20Poly1305 {
        use chacha20poly1305::KeyInit;
        chacha20poly1305::XChaCha20Poly1305::new(&(*keys().blob_key()).into())
    }

    /// A raw-flag blob of `data` sealed by the reference implementation under `nonce`.
    fn reference_seal(id: &ChunkId, data: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        use chacha20poly1305::aead::AeadInOut;
        let mut payload = vec![FLAG_RAW];
        payload.extend_from_slice(data);
        let tag = reference()
            .encrypt_inout_detached(&nonce.into(), &aad(id), payload.as_mut_slice().into())
            .expect("seal");
        [&BLOB_MAGIC[..], &[BLOB_VERSION], &nonce, &payload, &tag].concat()
    }

    /// The payload (flag and body) of `blob`, opened by the reference implementation.
    fn reference_open(id: &ChunkId, blob: &[u8]) -> Vec<u8> {
        use chacha20poly1305::aead::AeadInOut;
        let nonce: [u8; NONCE_LEN] = blob[HEADER_LEN..HEADER_LEN + NONCE_LEN]
            .try_into()
            .expect("nonce");
        let tag: [u8; TAG_LEN] = blob[blob.len() - TAG_LEN..].try_into().expect("tag");
        let mut payload = blob[HEADER_LEN + NONCE_LEN..blob.len() - TAG_LEN].to_vec();
        reference()
            .decrypt_inout_detached(
                &nonce.into(),
                &aad(id),
                payload.as_mut_slice().into(),
                &tag.into(),
            )
            .expect("the reference opens it");
        payload
    }

    proptest! {
        /// Blobs are the same bytes whichever implementation seals them: each opens what the
        /// other sealed, and the same nonce gives the same blob.
        #[test]
        fn both_implementations_agree(data in proptest::collection::vec(any::<u8>(), 0..20_000), nonce in any::<[u8; NONCE_LEN]>()) {
            let k = keys();
            let id = k.chunk_id(&data);
            let theirs = reference_seal(&id, &data, nonce);
            prop_assert_eq!(open(&k, &id, &theirs).expect("open"), data.clone());
            let ours = seal(&k, &id, &data, 0).expect("seal");
            let payload = reference_open(&id, &ours);
            prop_assert_eq!(&payload[1..], &data[..]);
            let again: [u8; NONCE_LEN] = ours[HEADER_LEN..HEADER_LEN + NONCE_LEN].try_into().expect("nonce");
            prop_assert_eq!(reference_seal(&id, &data, again), ours);
        }

        #[test]
        fn open_seal_round_trip(data in proptest::collection::vec(any::<u8>(), 0..20_000), level in 0i32..4) {
            let k = keys();
            let id = k.chunk_id(&data);
            let blob = seal(&k, &id, &data, level).expect("seal");
            prop_assert_eq!(open(&k, &id, &blob).expect("open"), data);
        }

        #[test]
        fn any_flipped_bit_fails(data in proptest::collection::vec(any::<u8>(), 1..2_000), pos in any::<usize>(), bit in 0u8..8) {
            let k = keys();
            let id = k.chunk_id(&data);
            let mut blob = seal(&k, &id, &data, 3).expect("seal");
            let i = pos % blob.len();
            blob[i] ^= 1 << bit;
            prop_assert!(open(&k, &id, &blob).is_err());
        }
    }

    #[test]
    fn compressible_data_is_compressed_and_random_is_raw() {
        let k = keys();
        let text = b"hello world ".repeat(1000);
        let id = k.chunk_id(&text);
        assert!(seal(&k, &id, &text, 3).expect("seal").len() < 1000);
        let mut random = vec![0u8; 4096];
        fill_random(&mut random);
        let id = k.chunk_id(&random);
        let blob = seal(&k, &id, &random, 3).expect("seal");
        assert_eq!(blob.len(), random.len() + OVERHEAD);
    }

    #[test]
    fn incompressible_chunks_are_detected_by_sampling() {
        let mut random = vec![0u8; 1 << 20];
        fill_random(&mut random);
        assert!(!worth_compressing(&random));
        let text = b"<div class=\"item\">hello world</div>\n".repeat(30_000);
        assert!(worth_compressing(&text));
        // Small chunks are always offered to zstd.
        assert!(worth_compressing(&random[..4096]));
        // Random bytes with a compressible middle: judged by all three samples together.
        let mut mixed = random.clone();
        mixed[..1 << 19].fill(b'a');
        assert!(worth_compressing(&mixed));
    }

    #[test]
    fn wrong_id_or_key_fails() {
        let k = keys();
        let id = k.chunk_id(b"abc");
        let blob = seal(&k, &id, b"abc", 3).expect("seal");
        assert_eq!(
            open(&k, &ChunkId([0; 32]), &blob),
            Err(BlobError::Authentication)
        );
        let other = MasterKey::from_bytes([1; 32]).data_keys();
        assert_eq!(open(&other, &id, &blob), Err(BlobError::Authentication));
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        let k = keys();
        let id = ChunkId([0; 32]);
        assert_eq!(open(&k, &id, b""), Err(BlobError::Truncated(0)));
        assert_eq!(open(&k, &id, &[0u8; 100]), Err(BlobError::BadMagic));
        let mut v = vec![0u8; 100];
        v[..4].copy_from_slice(&BLOB_MAGIC);
        v[4] = 9;
        assert_eq!(open(&k, &id, &v), Err(BlobError::UnsupportedVersion(9)));
        assert_eq!(
            open(&k, &id, &vec![0u8; MAX_BLOB_LEN + 1]),
            Err(BlobError::TooLarge(MAX_BLOB_LEN + 1))
        );
    }
}
