//! `lifeboat-controller recover-ca`: a rebuilt controller gets the fleet's CA back from the CA
//! escrow in the bucket, so every agent certificate and join token stays valid (invariant 4).
//!
//! This one-shot operator command is the only place where the controller host ever handles the
//! escrow passphrase; the serving controller never does. It reads the newest valid envelope under
//! `keys/ca/` straight from the configured store (primary, or the secondary when the primary
//! region is lost), unwraps it locally, checks that the certificate and key form a CA, and writes
//! the config's `ca_cert` / `ca_key` (0644 / 0600).
//!
//! Failure modes: no envelope (error naming the store and what to run), wrong passphrase (nothing
//! written), existing CA files that differ (refused; never overwritten: both are checked before
//! either is written). Existing identical files are a success. Files appear atomically
//! (temporary file, fsync, hard link that fails rather than replace).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lifeboat_common::escrow::{self, CaBundle, EscrowKind, Passphrase};
use thiserror::Error;

use crate::ca::Ca;
use crate::config::{ControllerConfig, StoreConfig};
use crate::store::{Store, StoreError};

/// Which store to read the envelope from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Region {
    Primary,
    Secondary,
}

#[derive(Debug, Error)]
pub enum RecoverCaError {
    #[error(
        "--region secondary needs a [secondary] store in the controller config; none is configured"
    )]
    NoSecondary,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "no CA escrow under keys/ca/ in {location}: on the old controller host, run `lifeboatctl key escrow --ca-key ca.key --ca-cert ca.pem`, or try the other --region"
    )]
    NoEscrow { location: String },
    #[error("cannot unwrap the CA escrow {key}: {source}")]
    Open {
        key: String,
        source: escrow::EscrowError,
    },
    #[error(
        "{path} already exists and differs from the escrowed CA; refusing to overwrite it (move it away first)"
    )]
    Differs { path: PathBuf },
    #[error("the escrowed CA does not load: {0}")]
    BadCa(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key derivation task failed: {0}")]
    Task(String),
}

/// What was recovered.
#[derive(Debug)]
pub struct Recovered {
    pub object_key: String,
    /// Hex SHA-256 of the CA certificate (DER): the fingerprint agents pin.
    pub fingerprint: String,
    /// False when identical files were already in place.
    pub wrote: bool,
}

fn open_store(cfg: &ControllerConfig, region: Region) -> Result<Store, RecoverCaError> {
    let sc = match region {
        Region::Primary => &cfg.store,
        Region::Secondary => cfg.secondary.as_ref().ok_or(RecoverCaError::NoSecondary)?,
    };
    Ok(match sc {
        StoreConfig::Local { path } => Store::local(path)?,
        StoreConfig::S3(s3) => Store::s3(s3)?,
    })
}

/// Reads, unwraps and installs the newest CA escrow.
pub async fn recover_ca(
    cfg: &ControllerConfig,
    region: Region,
    pass: Passphrase,
) -> Result<Recovered, RecoverCaError> {
    let store = open_store(cfg, region)?;
    let found = crate::escrow::newest(&store, EscrowKind::Ca)
        .await?
        .ok_or_else(|| RecoverCaError::NoEscrow {
            location: store.location().to_owned(),
        })?;
    let env = found.envelope.clone();
    let bundle = tokio::task::spawn_blocking(move || escrow::open_ca(&env, &pass))
        .await
        .map_err(|e| RecoverCaError::Task(e.to_string()))?
        .map_err(|source| RecoverCaError::Open {
            key: found.object_key.clone(),
            source,
        })?;
    let (fingerprint, wrote) = install(&cfg.ca_cert, &cfg.ca_key, &bundle)?;
    tracing::info!(key = %found.object_key, fingerprint = %fingerprint, wrote, "CA recovered from escrow");
    Ok(Recovered {
        object_key: found.object_key,
        fingerprint,
        wrote,
    })
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RecoverCaError {
    let path = path.to_owned();
    move |source| RecoverCaError::Io { what, path, source }
}

/// Installs the CA files; returns (fingerprint, wrote).
fn install(cert: &Path, key: &Path, ca: &CaBundle) -> Result<(String, bool), RecoverCaError> {
    let mut todo = Vec::new();
    for (path, bytes, mode) in [(cert, &ca.cert_pem, 0o644), (key, &ca.key_pem, 0o600)] {
        match fs::read(path) {
            Ok(existing) if existing == *bytes => {}
            Ok(_) => {
                return Err(RecoverCaError::Differs {
                    path: path.to_owned(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => todo.push((path, bytes, mode)),
            Err(e) => return Err(io("cannot read", path)(e)),
        }
    }
    // Validate before installing anything: temporary files, loaded as a CA.
    let tmp = |p: &Path| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_else(|| "ca".into());
        p.with_file_name(format!(".{name}.recover-{}", std::process::id()))
    };
    let (tc, tk) = (tmp(cert), tmp(key));
    write_new(&tc, &ca.cert_pem, 0o644)?;
    let loaded = write_new(&tk, &ca.key_pem, 0o600)
        .and_then(|()| Ca::load(&tc, &tk).map_err(|e| RecoverCaError::BadCa(e.to_string())));
    let result = loaded.and_then(|ca_loaded| {
        let der = ca_loaded
            .cert_der()
            .map_err(|e| RecoverCaError::BadCa(e.to_string()))?;
        for (path, _, _) in &todo {
            let from = if *path == cert { &tc } else { &tk };
            fs::hard_link(from, path).map_err(io("cannot create", path))?;
        }
        Ok(crate::auth::fingerprint(&der))
    });
    let _ = fs::remove_file(&tc);
    let _ = fs::remove_file(&tk);
    let fp = result?;
    if let Some(dir) = key.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync directory", dir))?;
    }
    Ok((fp, !todo.is_empty()))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RecoverCaError> {
    let _ = fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("cannot create", path))?;
    f.write_all(bytes).map_err(io("cannot write", path))?;
    f.sync_all().map_err(io("cannot sync", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_writes_once_accepts_identical_refuses_different() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        let (ca, key_pem) = Ca::generate().expect("ca");
        let bundle = CaBundle {
            cert_pem: ca.cert_pem().as_bytes().to_vec(),
            key_pem: key_pem.into_bytes(),
        };
        let (fp, wrote) = install(&cert, &key, &bundle).expect("install");
        assert!(wrote);
        assert_eq!(fp, crate::auth::fingerprint(&ca.cert_der().expect("der")));
        assert!(Ca::load(&cert, &key).is_ok());
        let (_, again) = install(&cert, &key, &bundle).expect("identical");
        assert!(!again);

        let (other, other_key) = Ca::generate().expect("ca");
        let different = CaBundle {
            cert_pem: other.cert_pem().as_bytes().to_vec(),
            key_pem: other_key.into_bytes(),
        };
        let e = install(&cert, &key, &different).expect_err("different");
        assert!(matches!(e, RecoverCaError::Differs { .. }), "{e}");
        assert_eq!(fs::read(&cert).expect("cert"), bundle.cert_pem);
        let garbage = CaBundle {
            cert_pem: b"junk".to_vec(),
            key_pem: b"junk".to_vec(),
        };
        let empty = tempfile::tempdir().expect("tempdir");
        let (c2, k2) = (empty.path().join("ca.pem"), empty.path().join("ca.key"));
        assert!(matches!(
            install(&c2, &k2, &garbage),
            Err(RecoverCaError::BadCa(_))
        ));
        assert!(!c2.exists() && !k2.exists());
        assert_eq!(fs::read_dir(empty.path()).expect("ls").count(), 0);
    }
}
