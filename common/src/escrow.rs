//! Key escrow: a secret (the fleet master key, or the controller's CA) wrapped under a key derived
//! from an operator's passphrase, so a brand-new host can get it back (trust invariant 4).
//!
//! Byte layout of an envelope, format version 1 (do not modify; a change is a new version):
//!
//! ```text
//! offset  size  field
//! 0       4     magic b"LBKE"
//! 4       1     format version = 1
//! 5       1     kind: 1 = master key, 2 = CA (certificate + key PEMs)
//! 6       4     Argon2id memory cost m, KiB (u32 LE)
//! 10      4     Argon2id time cost t (u32 LE)
//! 14      4     Argon2id parallelism p (u32 LE)
//! 18      16    salt (random per envelope)
//! 34      24    XChaCha20 nonce (random per envelope)
//! 58      n+16  XChaCha20-Poly1305 ciphertext of the secret, then its tag
//! ```
//!
//! The wrapping key is Argon2id (version 0x13, 32-byte output) of the passphrase's UTF-8 bytes
//! with the salt and the stored parameters. The associated data is the whole header (bytes
//! 0..58), so a kind or a parameter cannot be changed without failing the tag.
//!
//! Invariants and failure modes:
//! - The parameters have a floor ([`KdfParams::FLOOR`]) checked on seal *and* on open: an
//!   envelope whose header was lowered (to make a stolen bucket cheaper to attack, or to make a
//!   victim unwrap under weak parameters) is refused before any derivation. A ceiling
//!   ([`KdfParams::CEILING`]) bounds the memory a tampered header can make us allocate.
//! - Sealing requires a passphrase of minimum strength ([`passphrase::check_strength`]); opening
//!   does not (an old envelope must stay openable).
//! - A wrong passphrase and a damaged envelope are indistinguishable by design (AEAD):
//!   [`EscrowError::WrongPassphrase`] says both.
//! - Nothing here logs or prints a passphrase or a secret; [`Secret`] has no `Debug` contents.
//!
//! The controller only ever parses the header ([`EnvelopeHeader::parse`]) to validate an
//! envelope on receipt; it never sees the passphrase or the plaintext.

pub mod paper;
pub mod passphrase;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use thiserror::Error;

use crate::keys::{MASTER_KEY_LEN, MasterKey, fill_random};
pub use passphrase::Passphrase;

/// Magic at the start of every envelope. Do not modify.
pub const ENVELOPE_MAGIC: [u8; 4] = *b"LBKE";
/// Current envelope format version. Do not modify the meaning of a shipped version.
pub const ENVELOPE_VERSION: u8 = 1;
/// Header length: magic, version, kind, m, t, p, salt, nonce.
pub const HEADER_LEN: usize = 58;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The largest secret an envelope may hold (a CA certificate and key in PEM fit easily).
pub const MAX_SECRET_LEN: usize = 64 * 1024;
/// The largest valid envelope.
pub const MAX_ENVELOPE_LEN: usize = HEADER_LEN + MAX_SECRET_LEN + TAG_LEN;

/// What an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscrowKind {
    /// The fleet master key (32 bytes).
    Master,
    /// The controller's CA: certificate and private key PEMs ([`CaBundle`]).
    Ca,
}

impl EscrowKind {
    /// The name used on the wire and in object keys (`keys/<kind>/…`).
    pub fn as_str(self) -> &'static str {
        match self {
            EscrowKind::Master => "master",
            EscrowKind::Ca => "ca",
        }
    }

    /// Parses `"master"` or `"ca"`.
    pub fn parse(s: &str) -> Result<Self, EscrowError> {
        match s {
            "master" => Ok(EscrowKind::Master),
            "ca" => Ok(EscrowKind::Ca),
            other => Err(EscrowError::UnknownKindName(other.to_owned())),
        }
    }

    fn byte(self) -> u8 {
        match self {
            EscrowKind::Master => 1,
            EscrowKind::Ca => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, EscrowError> {
        match b {
            1 => Ok(EscrowKind::Master),
            2 => Ok(EscrowKind::Ca),
            other => Err(EscrowError::UnknownKind(other)),
        }
    }
}

impl std::fmt::Display for EscrowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Argon2id cost parameters, stored in the envelope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes over the memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// The lowest parameters accepted on seal and open: 64 MiB, 3 passes (ADR 0007).
    pub const FLOOR: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };
    /// What new envelopes use: 256 MiB, 3 passes, 1 lane (ADR 0007 has the measurements).
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 256 * 1024,
        t: 3,
        p: 1,
    };
    /// The highest parameters accepted: bounds what a tampered header can make us allocate.
    pub const CEILING: KdfParams = KdfParams {
        m_kib: 4 * 1024 * 1024,
        t: 64,
        p: 16,
    };

    /// Checks floor and ceiling.
    pub fn check(&self) -> Result<(), EscrowError> {
        let (f, c) = (Self::FLOOR, Self::CEILING);
        if self.m_kib < f.m_kib || self.t < f.t || self.p < f.p {
            return Err(EscrowError::BelowFloor(*self));
        }
        if self.m_kib > c.m_kib || self.t > c.t || self.p > c.p {
            return Err(EscrowError::AboveCeiling(*self));
        }
        Ok(())
    }
}

impl std::fmt::Display for KdfParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "m={} KiB, t={}, p={}", self.m_kib, self.t, self.p)
    }
}

#[derive(Debug, Error)]
pub enum EscrowError {
    #[error("escrow envelope is {0} bytes, too short to be an envelope (damaged or truncated)")]
    Truncated(usize),
    #[error("escrow envelope is {0} bytes, larger than the {MAX_ENVELOPE_LEN}-byte limit")]
    TooLarge(usize),
    #[error("not a Lifeboat key escrow envelope (bad magic)")]
    BadMagic,
    #[error(
        "escrow envelope format version {0} is not supported by this version of Lifeboat (knows 1)"
    )]
    UnsupportedVersion(u8),
    #[error("escrow envelope has unknown kind byte {0} (known: 1 master, 2 ca)")]
    UnknownKind(u8),
    #[error("unknown escrow kind {0:?}: use \"master\" or \"ca\"")]
    UnknownKindName(String),
    #[error("escrow envelope holds a {found} secret, expected {expected}")]
    KindMismatch {
        expected: EscrowKind,
        found: EscrowKind,
    },
    #[error(
        "escrow envelope's Argon2id parameters ({0}) are below the floor (m >= 65536 KiB, t >= 3, p >= 1): refused; the envelope was tampered with or made by a tool that does not enforce the floor"
    )]
    BelowFloor(KdfParams),
    #[error(
        "escrow envelope's Argon2id parameters ({0}) are above the ceiling (m <= 4 GiB, t <= 64, p <= 16): refused as damaged or tampered"
    )]
    AboveCeiling(KdfParams),
    #[error("secret is {0} bytes, larger than the {MAX_SECRET_LEN}-byte limit")]
    SecretTooLarge(usize),
    #[error("Argon2id key derivation failed: {0}")]
    Kdf(String),
    #[error(
        "wrong passphrase or damaged escrow envelope (authentication failed); nothing was written"
    )]
    WrongPassphrase,
    #[error("escrow envelope decrypted, but its content is malformed: {0}")]
    BadSecret(&'static str),
    #[error(transparent)]
    Weak(#[from] passphrase::WeakPassphrase),
}

/// A decrypted secret; its bytes are never printed.
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The parsed, validated header of an envelope (everything but the ciphertext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub kind: EscrowKind,
    pub params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
}

impl EnvelopeHeader {
    /// Parses and validates an envelope's header: size bounds, magic, version, kind, and the
    /// parameters against floor and ceiling. The controller calls this on receipt.
    pub fn parse(envelope: &[u8]) -> Result<Self, EscrowError> {
        if envelope.len() < HEADER_LEN + TAG_LEN {
            return Err(EscrowError::Truncated(envelope.len()));
        }
        if envelope.len() > MAX_ENVELOPE_LEN {
            return Err(EscrowError::TooLarge(envelope.len()));
        }
        if envelope[..4] != ENVELOPE_MAGIC {
            return Err(EscrowError::BadMagic);
        }
        if envelope[4] != ENVELOPE_VERSION {
            return Err(EscrowError::UnsupportedVersion(envelope[4]));
        }
        let kind = EscrowKind::from_byte(envelope[5])?;
        let u32_at = |o: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&envelope[o..o + 4]);
            u32::from_le_bytes(b)
        };
        let params = KdfParams {
            m_kib: u32_at(6),
            t: u32_at(10),
            p: u32_at(14),
        };
        params.check()?;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&envelope[18..34]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&envelope[34..HEADER_LEN]);
        Ok(EnvelopeHeader {
            kind,
            params,
            salt,
            nonce,
        })
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&ENVELOPE_MAGIC);
        h[4] = ENVELOPE_VERSION;
        h[5] = self.kind.byte();
        h[6..10].copy_from_slice(&self.params.m_kib.to_le_bytes());
        h[10..14].copy_from_slice(&self.params.t.to_le_bytes());
        h[14..18].copy_from_slice(&self.params.p.to_le_bytes());
        h[18..34].copy_from_slice(&self.salt);
        h[34..].copy_from_slice(&self.nonce);
        h
    }

    fn cipher(&self, passphrase: &Passphrase) -> Result<XChaCha20Poly1305, EscrowError> {
        let p = &self.params;
        let params = Params::new(p.m_kib, p.t, p.p, Some(32))
            .map_err(|e| EscrowError::Kdf(e.to_string()))?;
        let mut key = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), &self.salt, &mut key)
            .map_err(|e| EscrowError::Kdf(e.to_string()))?;
        Ok(XChaCha20Poly1305::new(&Key::from(key)))
    }
}

/// Wraps `secret` under `passphrase` (which must meet the minimum strength) with `params`
/// (which must be at or above the floor).
pub fn seal(
    kind: EscrowKind,
    params: KdfParams,
    passphrase: &Passphrase,
    secret: &[u8],
) -> Result<Vec<u8>, EscrowError> {
    passphrase::check_strength(passphrase.as_str())?;
    params.check()?;
    if secret.len() > MAX_SECRET_LEN {
        return Err(EscrowError::SecretTooLarge(secret.len()));
    }
    let mut header = EnvelopeHeader {
        kind,
        params,
        salt: [0; SALT_LEN],
        nonce: [0; NONCE_LEN],
    };
    fill_random(&mut header.salt);
    fill_random(&mut header.nonce);
    let cipher = header.cipher(passphrase)?;
    let aad = header.encode();
    let mut out = Vec::with_capacity(HEADER_LEN + secret.len() + TAG_LEN);
    out.extend_from_slice(&aad);
    out.extend_from_slice(secret);
    let tag = cipher
        .encrypt_inout_detached(
            &XNonce::from(header.nonce),
            &aad,
            out[HEADER_LEN..].as_mut().into(),
        )
        .map_err(|_| EscrowError::SecretTooLarge(secret.len()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Unwraps an envelope of kind `expected`. The header is validated (floor included) before the
/// expensive derivation; a wrong passphrase or any damage gives [`EscrowError::WrongPassphrase`].
pub fn open(
    envelope: &[u8],
    expected: EscrowKind,
    passphrase: &Passphrase,
) -> Result<Secret, EscrowError> {
    let header = EnvelopeHeader::parse(envelope)?;
    if header.kind != expected {
        return Err(EscrowError::KindMismatch {
            expected,
            found: header.kind,
        });
    }
    let cipher = header.cipher(passphrase)?;
    let body = &envelope[HEADER_LEN..];
    let (ct, tag) = body.split_at(body.len() - TAG_LEN);
    let mut buf = ct.to_vec();
    let tag = Tag::try_from(tag).map_err(|_| EscrowError::WrongPassphrase)?;
    cipher
        .decrypt_inout_detached(
            &XNonce::from(header.nonce),
            &envelope[..HEADER_LEN],
            buf.as_mut_slice().into(),
            &tag,
        )
        .map_err(|_| EscrowError::WrongPassphrase)?;
    Ok(Secret(buf))
}

/// Seals the fleet master key.
pub fn seal_master(
    key: &MasterKey,
    params: KdfParams,
    passphrase: &Passphrase,
) -> Result<Vec<u8>, EscrowError> {
    seal(EscrowKind::Master, params, passphrase, key.expose_bytes())
}

/// Opens a master-key envelope.
pub fn open_master(envelope: &[u8], passphrase: &Passphrase) -> Result<MasterKey, EscrowError> {
    let secret = open(envelope, EscrowKind::Master, passphrase)?;
    let bytes: [u8; MASTER_KEY_LEN] = secret
        .as_bytes()
        .try_into()
        .map_err(|_| EscrowError::BadSecret("a master key must be 32 bytes"))?;
    Ok(MasterKey::from_bytes(bytes))
}

/// The controller's CA as escrowed: certificate and private key, both PEM.
///
/// Encoding inside the envelope: `u32 LE length · certificate PEM · u32 LE length · key PEM`.
pub struct CaBundle {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaBundle(..)")
    }
}

impl CaBundle {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.cert_pem.len() + self.key_pem.len());
        for part in [&self.cert_pem, &self.key_pem] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    fn decode(mut b: &[u8]) -> Result<Self, EscrowError> {
        let mut take = || -> Result<Vec<u8>, EscrowError> {
            let bad = EscrowError::BadSecret("CA bundle lengths do not match its size");
            let len_bytes: [u8; 4] = b.get(..4).and_then(|s| s.try_into().ok()).ok_or(bad)?;
            let len = u32::from_le_bytes(len_bytes) as usize;
            let part = b
                .get(4..4 + len)
                .ok_or(EscrowError::BadSecret("CA bundle is truncated"))?
                .to_vec();
            b = &b[4 + len..];
            Ok(part)
        };
        let cert_pem = take()?;
        let key_pem = take()?;
        if !b.is_empty() {
            return Err(EscrowError::BadSecret("CA bundle has trailing bytes"));
        }
        Ok(CaBundle { cert_pem, key_pem })
    }
}

/// Seals the CA certificate and key.
pub fn seal_ca(
    ca: &CaBundle,
    params: KdfParams,
    passphrase: &Passphrase,
) -> Result<Vec<u8>, EscrowError> {
    seal(EscrowKind::Ca, params, passphrase, &ca.encode())
}

/// Opens a CA envelope.
pub fn open_ca(envelope: &[u8], passphrase: &Passphrase) -> Result<CaBundle, EscrowError> {
    let secret = open(envelope, EscrowKind::Ca, passphrase)?;
    CaBundle::decode(secret.as_bytes())
}

#[cfg(test)]
mod tests;
