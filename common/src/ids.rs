//! Identifiers. Each is a newtype validated on construction, so code that holds one can trust it.
//!
//! - [`ChunkId`]: 32-byte keyed BLAKE3 hash of a chunk's plaintext (see [`crate::keys`]). It
//!   reveals nothing without the master key, so the controller may store and index it.
//! - [`AgentId`]: the agent's name, bound into its certificate as `lifeboat://agent/<id>`.
//! - [`SnapshotId`]: time-ordered, 20 lowercase hex characters (48-bit ms timestamp, 32 random bits).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A value that failed validation, with what was wrong.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("chunk id must be 32 bytes, got {0}")]
    ChunkIdLength(usize),
    #[error("chunk id must be 64 hex characters: {0:?}")]
    ChunkIdHex(String),
    #[error(
        "invalid agent id {0:?}: use 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
    )]
    AgentId(String),
    #[error("invalid snapshot id {0:?}: expected 20 lowercase hex characters")]
    SnapshotId(String),
    #[error("invalid source name {0:?}: use 1-64 characters of a-z, A-Z, 0-9, '.', '_' or '-'")]
    SourceName(String),
}

/// Length in bytes of a [`ChunkId`]. Do not modify: part of format version 1.
pub const CHUNK_ID_LEN: usize = 32;

/// Keyed BLAKE3 hash of a chunk's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; CHUNK_ID_LEN]);

impl ChunkId {
    pub fn as_bytes(&self) -> &[u8; CHUNK_ID_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Short form for logs and messages (first 12 hex characters).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl TryFrom<&[u8]> for ChunkId {
    type Error = IdError;
    fn try_from(b: &[u8]) -> Result<Self, IdError> {
        let arr: [u8; CHUNK_ID_LEN] = b.try_into().map_err(|_| IdError::ChunkIdLength(b.len()))?;
        Ok(ChunkId(arr))
    }
}

impl FromStr for ChunkId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let v = hex::decode(s).map_err(|_| IdError::ChunkIdHex(s.to_owned()))?;
        ChunkId::try_from(v.as_slice()).map_err(|_| IdError::ChunkIdHex(s.to_owned()))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

/// Converts a list of raw ids (as received on the wire) into [`ChunkId`]s, failing on the first bad one.
pub fn chunk_ids_from_bytes<B: AsRef<[u8]>>(raw: &[B]) -> Result<Vec<ChunkId>, IdError> {
    raw.iter().map(|b| ChunkId::try_from(b.as_ref())).collect()
}

fn valid_name(s: &str, allow_upper: bool) -> bool {
    let ok_char = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, '.' | '_' | '-')
            || (allow_upper && c.is_ascii_uppercase())
    };
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(ok_char)
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// An agent's id: its name in the fleet.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct AgentId(String);

impl AgentId {
    pub fn new(s: &str) -> Result<Self, IdError> {
        if valid_name(s, false) {
            Ok(AgentId(s.to_owned()))
        } else {
            Err(IdError::AgentId(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The URI placed in the agent certificate's subjectAltName.
    pub fn certificate_uri(&self) -> String {
        format!("{AGENT_URI_PREFIX}{}", self.0)
    }
    /// Parses the URI from a certificate's subjectAltName.
    pub fn from_certificate_uri(uri: &str) -> Option<AgentId> {
        uri.strip_prefix(AGENT_URI_PREFIX)
            .and_then(|s| AgentId::new(s).ok())
    }
}

/// URI SAN prefix of agent certificates. Do not modify: shipped certificates carry it.
pub const AGENT_URI_PREFIX: &str = "lifeboat://agent/";
/// URI SAN of the admin (lifeboatctl) certificate. Do not modify.
pub const ADMIN_URI: &str = "lifeboat://admin";

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AgentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        AgentId::new(s)
    }
}

/// Validates a source name (`[[source]] name = ...`).
pub fn validate_source_name(s: &str) -> Result<(), IdError> {
    if valid_name(s, true) {
        Ok(())
    } else {
        Err(IdError::SourceName(s.to_owned()))
    }
}

/// A snapshot id: sortable by creation time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SnapshotId(String);

/// Length of a snapshot id in hex characters.
pub const SNAPSHOT_ID_LEN: usize = 20;

impl SnapshotId {
    /// A new id for a snapshot committed at `unix_ms`.
    pub fn generate(unix_ms: i64) -> Self {
        let mut r = [0u8; 4];
        crate::keys::fill_random(&mut r);
        let ms = (unix_ms.max(0) as u64) & 0xffff_ffff_ffff;
        SnapshotId(format!("{ms:012x}{}", hex::encode(r)))
    }
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() == SNAPSHOT_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(SnapshotId(s.to_owned()))
        } else {
            Err(IdError::SnapshotId(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids() {
        assert!(AgentId::new("web-01").is_ok());
        assert!(AgentId::new("db.prod_2").is_ok());
        for bad in ["", "-x", "Web", "a/b", "a b", &"x".repeat(65)] {
            assert!(AgentId::new(bad).is_err(), "{bad:?}");
        }
        let a = AgentId::new("web-01").expect("valid");
        assert_eq!(AgentId::from_certificate_uri(&a.certificate_uri()), Some(a));
        assert_eq!(AgentId::from_certificate_uri("lifeboat://admin"), None);
    }

    #[test]
    fn snapshot_ids_sort_by_time() {
        let a = SnapshotId::generate(1_000);
        let b = SnapshotId::generate(2_000);
        assert!(a < b);
        assert_eq!(SnapshotId::parse(a.as_str()), Ok(a));
        assert!(SnapshotId::parse("XYZ").is_err());
    }

    #[test]
    fn chunk_id_round_trip() {
        let id = ChunkId([7; 32]);
        assert_eq!(id.to_hex().parse::<ChunkId>(), Ok(id));
        assert_eq!(
            ChunkId::try_from(&[1u8; 31][..]),
            Err(IdError::ChunkIdLength(31))
        );
    }
}
