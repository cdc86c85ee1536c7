//! `lifeboat-agent init`: the agent's identity, made on the VM.
//!
//! Generates an ECDSA P-256 key pair (aws-lc-rs) into `agent.key` (mode 0600; it never leaves
//! the VM), a CSR `agent.csr` with subject CN = the agent's name (the controller binds the id
//! into the certificate itself and ignores requested SANs), and a commented `agent.toml`.
//! Existing files are never overwritten: if any of the three exists, nothing is written.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use lifeboat_common::ids::AgentId;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::error::AgentError;

pub mod join;
pub mod pinned;
pub mod renew;

/// Why enrollment or renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Token(#[from] lifeboat_common::join_token::JoinTokenError),
    #[error(
        "no join token: give --token-file FILE (or '-' for stdin) or set LIFEBOAT_JOIN_TOKEN; tokens are never accepted as command-line arguments"
    )]
    NoToken,
    #[error("invalid controller address {0:?} in the join token")]
    Address(String),
    #[error("cannot reach the controller at {address}: {detail}")]
    Unreachable { address: String, detail: String },
    #[error(
        "the server at {0} does not present the CA pinned by the join token: refusing it (wrong address, or someone in between); check the token and the address"
    )]
    WrongController(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("the controller refused the enrollment: {0}")]
    Refused(String),
    #[error("the controller refused our certificate: {0}")]
    CertificateRefused(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl EnrollError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        use lifeboat_common::exit;
        match self {
            EnrollError::NoToken => exit::USAGE,
            EnrollError::Unreachable { .. } => exit::UNREACHABLE,
            EnrollError::WrongController(_) | EnrollError::CertificateRefused(_) => {
                exit::CERTIFICATE_REFUSED
            }
            EnrollError::Agent(a) => a.exit_code(),
            _ => exit::ERROR,
        }
    }
}

/// Placeholder written when `--controller` is not given.
pub const ADDRESS_PLACEHOLDER: &str = "https://CONTROLLER-HOST:7443";

/// The files `init` created.
#[derive(Debug)]
pub struct InitOutput {
    pub key: PathBuf,
    pub csr: PathBuf,
    pub config: PathBuf,
}

/// Creates DIR (0700), the key, the CSR and the config.
pub fn init(name: &str, dir: &Path, controller: Option<&str>) -> Result<InitOutput, AgentError> {
    let id = AgentId::new(name).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let out = InitOutput {
        key: dir.join("agent.key"),
        csr: dir.join("agent.csr"),
        config: dir.join("agent.toml"),
    };
    for p in [&out.key, &out.csr, &out.config] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(AgentError::Invalid(format!(
                "{} already exists; init never overwrites files (remove it or choose another --dir)",
                p.display()
            )));
        }
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| AgentError::io("cannot create directory", dir, e))?;
    let key = new_key()?;
    let csr = csr_pem(&key, &id)?;
    write_new(&out.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&out.csr, csr.as_bytes(), 0o644)?;
    write_new(
        &out.config,
        config_text(controller.unwrap_or(ADDRESS_PLACEHOLDER)).as_bytes(),
        0o600,
    )?;
    Ok(out)
}

/// A new ECDSA P-256 key pair (made here; the private key never leaves this VM).
pub fn new_key() -> Result<KeyPair, AgentError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AgentError::Invalid(format!("cannot generate a key pair: {e}")))
}

/// A CSR for `key` with CN = the agent id (the controller ignores everything but the key).
pub fn csr_pem(key: &KeyPair, id: &AgentId) -> Result<String, AgentError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| AgentError::Invalid(format!("cannot build the CSR: {e}")))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.as_str());
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|c| c.pem())
        .map_err(|e| AgentError::Invalid(format!("cannot build the CSR: {e}")))
}

pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AgentError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| AgentError::io("cannot create", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| AgentError::io("cannot write", path, e))
}

/// The commented `agent.toml` written by `init`.
pub fn config_text(address: &str) -> String {
    format!(
        r#"# Lifeboat agent configuration. Relative paths are resolved against this file's directory.

# Local state (the file cache). Only a cache: deleting it costs one full read of every file.
state_dir = "state"
# The fleet master key (32 bytes, mode 0600). Copy it here from the operator; never commit it.
master_key = "master.key"
# zstd level for chunks (0 = none, 1-22; 3 is a good default).
zstd_level = 3

[controller]
# Overridden by the environment variable LIFEBOAT_ADDRESS.
address = "{address}"
# The name in the controller's certificate.
server_name = "lifeboat-controller"
# Written by `lifeboatctl agent add NAME --csr agent.csr --out DIR`.
ca = "ca.pem"
cert = "agent.pem"
# Made by `lifeboat-agent init`; never leaves this VM.
key = "agent.key"

# One [[source]] per thing to back up.
[[source]]
name = "web"
kind = "files"
paths = ["/var/www", "/etc/nginx"]
# Patterns without '/' match file names; patterns with '/' match absolute paths ('**' crosses '/').
exclude = ["*.swp"]
# How often `lifeboat-agent run` backs this source up (keep it below your RPO).
interval = "1h"
# Optional chunker parameters in bytes (defaults: 256 KiB / 1 MiB / 4 MiB).
# chunker = {{ min = 262144, avg = 1048576, max = 4194304 }}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_creates_key_csr_and_config_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("agent");
        let out = init("web-01", &d, Some("https://10.0.0.5:7443")).expect("init");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&out.key), 0o600);
        let csr = fs::read_to_string(&out.csr).expect("csr");
        assert!(csr.contains("BEGIN CERTIFICATE REQUEST"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).expect("parse csr");
        let cn = parsed.params.distinguished_name.get(&DnType::CommonName);
        assert!(
            matches!(cn, Some(rcgen::DnValue::Utf8String(s)) if s == "web-01"),
            "{cn:?}"
        );
        let cfg = fs::read_to_string(&out.config).expect("config");
        assert!(cfg.contains("https://10.0.0.5:7443"));
        let key_before = fs::read(&out.key).expect("key");
        assert!(init("web-01", &d, None).is_err());
        assert_eq!(fs::read(&out.key).expect("key"), key_before);
        assert!(init("Bad Name", &dir.path().join("x"), None).is_err());
    }
}
