//! The agent's error type and how it maps to exit codes and operator messages.
//!
//! Library code returns [`AgentError`]; the CLI turns it into a message with [`describe`] (which
//! adds the controller address and the config path to network and certificate failures) and an
//! exit code with [`AgentError::exit_code`]. Errors are logged once, by the CLI or the daemon loop.

use std::io;
use std::path::{Path, PathBuf};

use lifeboat_common::blob::BlobError;
use lifeboat_common::config::ConfigError;
use lifeboat_common::exit;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::KeyError;
use lifeboat_common::manifest::ManifestError;
use thiserror::Error;

use crate::client::{ClientSetupError, FailureClass, classify};
use crate::remote::RemoteError;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    ClientSetup(#[from] ClientSetupError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("manifest of snapshot {snapshot} is unusable: {source}")]
    Manifest {
        snapshot: String,
        source: ManifestError,
    },
    /// A backup could not write its manifest (a chunk list that did not read back from the
    /// scratch file); reading a snapshot's manifest fails with [`AgentError::Manifest`].
    #[error("cannot write the manifest: {0}")]
    ManifestWrite(#[from] ManifestError),
    #[error("chunk {} of {what} failed verification: {source}", .id.short())]
    Blob {
        what: String,
        id: ChunkId,
        source: BlobError,
    },
    #[error("restore of {path} failed: {source}; no damaged file was left under its real name")]
    RestoreFile {
        path: String,
        source: Box<AgentError>,
    },
    #[error(
        "restore refused {} entr{} that would have been written through a symlink or non-directory (the target tree may have been tampered with): {}",
        .0.len(), if .0.len() == 1 { "y" } else { "ies" }, .0.join("; ")
    )]
    Refused(Vec<String>),
    #[error(
        "commit of source {source_name} still misses {missing} chunks after {attempts} attempts; the controller may be losing data, check its logs"
    )]
    CommitGaveUp {
        source_name: String,
        missing: usize,
        attempts: u32,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("backup of source {0} was cancelled before its commit; nothing was committed")]
    Cancelled(String),
    #[error("internal worker failed: {0}")]
    Worker(String),
    #[error(transparent)]
    Mysql(#[from] crate::mysql::MysqlError),
    /// A dump failed validation: a failed backup, nothing committed.
    #[error(
        "backup of source {source_name} FAILED, nothing was committed (the latest snapshot is unchanged): {what}: {reason}"
    )]
    DumpFailed {
        source_name: String,
        /// "database app", "users and grants", "the server check".
        what: String,
        reason: String,
    },
    /// A restored database does not match the snapshot.
    #[error("restore of database {database} FAILED verification: {differences}; {outcome}")]
    RestoreVerify {
        database: String,
        differences: String,
        outcome: String,
    },
}

impl AgentError {
    pub fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        AgentError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }

    /// The controller failure inside this error, if any.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            AgentError::Remote(r) => Some(r),
            AgentError::RestoreFile { source, .. } => source.remote(),
            _ => None,
        }
    }

    /// The class of a controller failure inside this error.
    pub fn class(&self) -> FailureClass {
        self.remote().map_or(FailureClass::Other, classify)
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self.class() {
            FailureClass::Unreachable => exit::UNREACHABLE,
            FailureClass::CertificateRefused => exit::CERTIFICATE_REFUSED,
            FailureClass::Other => exit::ERROR,
        }
    }
}

/// The operator-facing message: network and certificate failures name the controller address
/// and what to check in the config file.
pub fn describe(err: &AgentError, address: &str, config: &Path) -> String {
    match err.class() {
        FailureClass::Unreachable => format!(
            "controller unreachable at {address}: {err}; check that the controller is running and [controller] address in {} (or LIFEBOAT_ADDRESS)",
            config.display()
        ),
        FailureClass::CertificateRefused => format!(
            "the controller refused this agent's certificate ({err}): was it added with `lifeboatctl agent add`, revoked, or expired? Check [controller] ca/cert in {}; to enroll again, keeping this agent's identity and history: `lifeboatctl token create --agent NAME` on the controller, then `lifeboat-agent enroll --token-file FILE --dir DIR` here",
            config.display()
        ),
        FailureClass::Other => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_failure_class() {
        let unauth = AgentError::Remote(RemoteError::Status {
            op: "BeginSession",
            status: tonic::Status::unauthenticated("revoked"),
        });
        assert_eq!(unauth.exit_code(), exit::CERTIFICATE_REFUSED);
        let msg = describe(
            &unauth,
            "https://x:1",
            Path::new("/etc/lifeboat/agent.toml"),
        );
        assert!(
            msg.contains("lifeboatctl agent add") && msg.contains("/etc/lifeboat/agent.toml"),
            "{msg}"
        );
        let nested = AgentError::RestoreFile {
            path: "/var/www/a".into(),
            source: Box::new(AgentError::Remote(RemoteError::Transport {
                op: "ReadChunks",
                source: Box::new(io::Error::new(io::ErrorKind::ConnectionReset, "reset")),
            })),
        };
        assert_eq!(nested.exit_code(), exit::UNREACHABLE);
        assert_eq!(AgentError::Invalid("x".into()).exit_code(), exit::ERROR);
    }
}
