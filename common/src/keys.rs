//! The fleet master key and what is derived from it.
//!
//! The master key is 32 random bytes created by the operator (`lifeboatctl key init`) and copied
//! to every agent of the fleet. The controller never receives it (trust invariant 1). Three keys
//! are derived from it with BLAKE3's key derivation, each under its own context string:
//!
//! | context                              | use                                            |
//! |--------------------------------------|------------------------------------------------|
//! | `lifeboat 2026-11 chunk id v1`       | keyed BLAKE3 of a chunk's plaintext = its id    |
//! | `lifeboat 2026-11 blob key v1`       | XChaCha20-Poly1305 key for every blob           |
//! | `lifeboat 2026-11 chunker seed v1`   | first 8 bytes: seed of the FastCDC gear table   |
//!
//! The context strings are part of format version 1: do not modify. Keyed ids mean a stolen
//! bucket cannot be probed for known content by hash; the seeded gear table blunts (does not
//! remove) the chunk-length fingerprinting known from restic and Borg.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ids::ChunkId;

/// Length of the master key file in bytes. Do not modify.
pub const MASTER_KEY_LEN: usize = 32;

const CTX_CHUNK_ID: &str = "lifeboat 2026-11 chunk id v1";
const CTX_BLOB_KEY: &str = "lifeboat 2026-11 blob key v1";
const CTX_CHUNKER_SEED: &str = "lifeboat 2026-11 chunker seed v1";

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read master key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "master key file {path} must hold exactly {MASTER_KEY_LEN} bytes, found {len}; was it copied in text mode or truncated?"
    )]
    Length { path: PathBuf, len: usize },
    #[error(
        "master key file {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot create master key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Fills `buf` from the operating system's random source.
///
/// Panics only if the OS has no random source at all, in which case no key or nonce could be
/// made safely and stopping is the right thing to do.
pub fn fill_random(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random source failed");
}

/// The fleet master key. Its bytes are never printed (no `Debug` of contents).
#[derive(Clone)]
pub struct MasterKey([u8; MASTER_KEY_LEN]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = [0u8; MASTER_KEY_LEN];
        fill_random(&mut k);
        MasterKey(k)
    }

    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        MasterKey(bytes)
    }

    /// The raw key bytes, for wrapping it in an escrow envelope or a paper export
    /// ([`crate::escrow`]). Never log or print them.
    pub fn expose_bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.0
    }

    /// Reads a key file, refusing one that other users can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let bytes = fs::read(path).map_err(read_err)?;
        let arr: [u8; MASTER_KEY_LEN] =
            bytes.as_slice().try_into().map_err(|_| KeyError::Length {
                path: path.to_owned(),
                len: bytes.len(),
            })?;
        Ok(MasterKey(arr))
    }

    /// Writes the key to a new file with mode 0600; never overwrites an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let create_err = |source| KeyError::Create {
            path: path.to_owned(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(create_err)?;
        f.write_all(&self.0).map_err(create_err)?;
        f.sync_all().map_err(create_err)?;
        Ok(())
    }

    /// Derives the data keys used by the chunk pipeline.
    pub fn data_keys(&self) -> DataKeys {
        let seed_bytes = blake3::derive_key(CTX_CHUNKER_SEED, &self.0);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&seed_bytes[..8]);
        DataKeys {
            id_key: blake3::derive_key(CTX_CHUNK_ID, &self.0),
            blob_key: blake3::derive_key(CTX_BLOB_KEY, &self.0),
            // A zero seed would select fastcdc's unseeded table; map it away.
            chunker_seed: u64::from_le_bytes(seed).max(1),
        }
    }
}

/// Keys derived from the master key; cheap to clone, never printed.
#[derive(Clone)]
pub struct DataKeys {
    id_key: [u8; 32],
    blob_key: [u8; 32],
    chunker_seed: u64,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys(..)")
    }
}

impl DataKeys {
    /// The id of a chunk: keyed BLAKE3 of its plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    pub fn blob_key(&self) -> &[u8; 32] {
        &self.blob_key
    }

    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_distinct_and_stable() {
        let mk = MasterKey::from_bytes([42; 32]);
        let a = mk.data_keys();
        let b = mk.data_keys();
        assert_eq!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_ne!(a.id_key, a.blob_key);
        let other = MasterKey::from_bytes([43; 32]).data_keys();
        assert_ne!(a.chunk_id(b"x"), other.chunk_id(b"x"));
        assert_ne!(a.chunker_seed(), other.chunker_seed());
    }

    #[test]
    fn key_file_round_trip_and_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("master.key");
        let mk = MasterKey::generate();
        mk.write_new(&p).expect("write");
        assert!(mk.write_new(&p).is_err(), "must not overwrite");
        let loaded = MasterKey::load(&p).expect("load");
        assert_eq!(loaded.0, mk.0);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            MasterKey::load(&p),
            Err(KeyError::Permissions { .. })
        ));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&p, b"short").expect("write");
        assert!(matches!(
            MasterKey::load(&p),
            Err(KeyError::Length { len: 5, .. })
        ));
    }
}
