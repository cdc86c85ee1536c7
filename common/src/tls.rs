//! TLS plumbing shared by every binary.
//!
//! One rustls crypto provider is compiled in: aws-lc-rs (object_store's S3 client requires it).
//! [`install_crypto_provider`] makes it the process default; call it first thing in `main` and in
//! tests that build TLS configs. PEM files are read with clear errors naming the path; private key
//! files must not be readable by group or others.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key: {reason}")]
    NoKey { path: PathBuf, reason: String },
    #[error("private key {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    KeyPermissions { path: PathBuf, mode: u32 },
}

/// The TLS server name (SNI) under which the controller accepts clients WITHOUT a certificate,
/// for enrollment with a join token only. Under every other name a client certificate from the
/// fleet CA is required at the handshake. The controller's certificate carries this name too.
/// Do not modify: agents and certificates in the field use it.
pub const ENROLL_SERVER_NAME: &str = "lifeboat-enroll";

/// Installs aws-lc-rs as the process-wide rustls provider. Safe to call more than once.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Refuses a secret file that group or others can read.
pub fn check_secret_permissions(path: &Path) -> Result<(), TlsError> {
    let meta = fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Reads a PEM private key, refusing one that other users can read.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_secret_permissions(path)?;
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::NoKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Reads a PEM file as text (for APIs such as tonic's that take PEM), checking key permissions
/// when `secret` is set.
pub fn read_pem(path: &Path, secret: bool) -> Result<Vec<u8>, TlsError> {
    if secret {
        check_secret_permissions(path)?;
    }
    read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_errors_for_missing_and_empty_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let e = load_certs(&missing).expect_err("missing");
        assert!(e.to_string().contains("nope.pem"));
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "hello").expect("write");
        assert!(matches!(
            load_certs(&empty),
            Err(TlsError::NoCertificate { .. })
        ));
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            load_key(&empty),
            Err(TlsError::KeyPermissions { .. })
        ));
    }
}
