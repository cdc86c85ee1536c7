//! `lifeboat-agent enroll`: join a controller with a join token.
//!
//! 1. The token's CA fingerprint pins the controller's CA ([`super::pinned`]).
//! 2. The key pair is made here (or the existing `agent.key` is reused, so an agent re-enrolled
//!    after being offline past its expiry keeps its identity); only a CSR is sent.
//! 3. The token and CSR go over TLS verified against the pinned CA; the certificate comes back.
//! 4. `ca.pem`, `agent.pem` (atomically replaced) and, if missing, `agent.toml` are written.
//!
//! The token is a secret: read from a file, stdin or `LIFEBOAT_JOIN_TOKEN`, never logged.

use std::fs::{self, DirBuilder};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use lifeboat_common::ids::AgentId;
use lifeboat_common::join_token::{JoinToken, MAX_TOKEN_LEN};
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use rcgen::KeyPair;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::pinned::{cert_pem, pinned_ca};
use super::{EnrollError, config_text, csr_pem, new_key, write_new};
use crate::error::AgentError;

/// Environment variable that may carry the join token.
pub const ENV_TOKEN: &str = "LIFEBOAT_JOIN_TOKEN";

/// What enrollment produced.
#[derive(Debug)]
pub struct Enrolled {
    pub agent_id: String,
    pub dedup_group: String,
    pub not_after_unix_ms: i64,
    pub config: PathBuf,
    /// Whether `agent.key` was made now (false: an existing key was reused).
    pub new_key: bool,
}

/// Reads the token from `file` (`-` is stdin) or, without one, from [`ENV_TOKEN`].
pub fn read_token(file: Option<&Path>) -> Result<JoinToken, EnrollError> {
    let text = match file {
        Some(p) if p == Path::new("-") => {
            let mut s = String::new();
            std::io::stdin()
                .take(MAX_TOKEN_LEN as u64 + 1)
                .read_to_string(&mut s)
                .map_err(|e| AgentError::io("cannot read the token from", Path::new("stdin"), e))?;
            s
        }
        Some(p) => fs::read_to_string(p).map_err(|e| AgentError::io("cannot read", p, e))?,
        None => std::env::var(ENV_TOKEN).map_err(|_| EnrollError::NoToken)?,
    };
    Ok(JoinToken::decode(&text)?)
}

fn load_or_make_key(path: &Path) -> Result<(KeyPair, bool), EnrollError> {
    if fs::symlink_metadata(path).is_ok() {
        lifeboat_common::tls::check_secret_permissions(path)
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        let pem = fs::read_to_string(path).map_err(|e| AgentError::io("cannot read", path, e))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| {
            AgentError::Invalid(format!("{} is not a usable key: {e}", path.display()))
        })?;
        return Ok((key, false));
    }
    let key = new_key()?;
    write_new(path, key.serialize_pem().as_bytes(), 0o600)?;
    Ok((key, true))
}

/// Writes `bytes` to `path` through a temporary file and a rename (never half-written).
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, bytes, 0o644)?;
    fs::rename(&tmp, path).map_err(|e| AgentError::io("cannot replace", path, e))
}

fn status_error(s: &tonic::Status) -> EnrollError {
    use tonic::Code;
    match s.code() {
        Code::Unavailable if s.message().contains("too many") => {
            EnrollError::Refused(s.message().to_owned())
        }
        Code::Unavailable | Code::Unknown | Code::Cancelled => {
            let text = format!("{s:?}").to_ascii_lowercase();
            if text.contains("certificate") || text.contains("invalid peer") {
                EnrollError::CertificateRefused(s.message().to_owned())
            } else {
                EnrollError::Unreachable {
                    address: String::new(),
                    detail: s.message().to_owned(),
                }
            }
        }
        _ => EnrollError::Refused(s.message().to_owned()),
    }
}

async fn call_enroll(
    token: &JoinToken,
    ca_pem: &str,
    req: pb::EnrollRequest,
) -> Result<pb::EnrollResponse, EnrollError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(lifeboat_common::tls::ENROLL_SERVER_NAME);
    let channel = Endpoint::from_shared(token.address.clone())
        .map_err(|_| EnrollError::Address(token.address.clone()))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .tls_config(tls)
        .map_err(|e| EnrollError::Tls(e.to_string()))?
        .connect()
        .await
        .map_err(|e| {
            let text = format!("{e:?}").to_ascii_lowercase();
            if text.contains("certificate") {
                EnrollError::WrongController(token.address.clone())
            } else {
                EnrollError::Unreachable {
                    address: token.address.clone(),
                    detail: e.to_string(),
                }
            }
        })?;
    EnrollmentServiceClient::new(channel)
        .enroll(req)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| status_error(&s))
}

/// Enrolls into `dir` with `token`; `name` may be omitted when the token names the agent.
pub async fn enroll(
    token: &JoinToken,
    dir: &Path,
    name: Option<&str>,
) -> Result<Enrolled, EnrollError> {
    let ca_der = pinned_ca(token).await?;
    let ca_pem = cert_pem(&ca_der);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| AgentError::io("cannot create directory", dir, e))?;
    let (key, made) = load_or_make_key(&dir.join("agent.key"))?;
    let cn =
        AgentId::new(name.unwrap_or("agent")).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let req = pb::EnrollRequest {
        token: token.encode(),
        agent_id: name.unwrap_or_default().to_owned(),
        csr_pem: csr_pem(&key, &cn)?,
    };
    let r = call_enroll(token, &ca_pem, req).await?;
    replace_file(&dir.join("ca.pem"), ca_pem.as_bytes())?;
    replace_file(&dir.join("agent.pem"), r.certificate_pem.as_bytes())?;
    let config = dir.join("agent.toml");
    if fs::symlink_metadata(&config).is_err() {
        write_new(&config, config_text(&token.address).as_bytes(), 0o600)?;
    }
    tracing::info!(agent = %r.agent_id, group = %r.dedup_group, "enrolled with the controller");
    Ok(Enrolled {
        agent_id: r.agent_id,
        dedup_group: r.dedup_group,
        not_after_unix_ms: r.not_after_unix_ms,
        config,
        new_key: made,
    })
}
