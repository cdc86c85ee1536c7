//! The admin client: connecting with the admin certificate, and classifying failures into the
//! exit codes of `lifeboat_common::exit` (4 unreachable, 5 certificate refused, 1 otherwise).
//!
//! With TLS 1.3 a server that refuses our certificate does so *after* the client considers the
//! handshake done, so the refusal surfaces on the first call as a transport error whose source
//! chain mentions the TLS alert. [`classify`] therefore looks at both the status code and the
//! error chain.

use std::error::Error as StdError;
use std::time::Duration;

use lifeboat_common::exit;
use thiserror::Error;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::config::CtlConfig;

/// How long to wait for a TCP + TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] lifeboat_common::tls::TlsError),
    #[error("invalid controller address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("cannot connect to the controller at {address}: {detail}")]
    Connect {
        address: String,
        detail: String,
        code: i32,
    },
}

impl ClientError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Connect { code, .. } => *code,
            _ => exit::ERROR,
        }
    }
}

fn chain_text(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn mentions_certificate(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "alert",
        "certificate",
        "unknownissuer",
        "unknown ca",
        "badsignature",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// The exit code for a failed call.
pub fn classify(status: &Status) -> i32 {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => exit::CERTIFICATE_REFUSED,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            if mentions_certificate(&describe(status)) {
                exit::CERTIFICATE_REFUSED
            } else if status.code() == Code::Unknown && status.source().is_none() {
                exit::ERROR
            } else {
                exit::UNREACHABLE
            }
        }
        _ => exit::ERROR,
    }
}

/// The exit code for a failed connection attempt.
pub fn classify_transport(e: &tonic::transport::Error) -> i32 {
    if mentions_certificate(&chain_text(e)) {
        exit::CERTIFICATE_REFUSED
    } else {
        exit::UNREACHABLE
    }
}

/// A status with its whole source chain, for messages.
pub fn describe(status: &Status) -> String {
    let mut out = format!("{}: {}", code_name(status.code()), status.message());
    let mut cur = status.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission denied",
        Code::Unavailable => "unavailable",
        Code::NotFound => "not found",
        Code::InvalidArgument => "invalid argument",
        Code::AlreadyExists => "already exists",
        Code::DataLoss => "data loss",
        _ => "error",
    }
}

/// Connects with PEM material.
pub async fn connect_pem(
    address: &str,
    server_name: &str,
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Channel, ClientError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name(server_name);
    let bad = |reason: String| ClientError::Address {
        address: address.to_owned(),
        reason,
    };
    let endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| bad(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| bad(chain_text(&e)))?
        .connect_timeout(CONNECT_TIMEOUT);
    endpoint.connect().await.map_err(|e| ClientError::Connect {
        address: address.to_owned(),
        detail: chain_text(&e),
        code: classify_transport(&e),
    })
}

/// Decides whether the controller refuses our client certificate.
///
/// With TLS 1.3 the server verifies the client certificate after the client has finished its
/// side of the handshake, and hyper reports the resulting alert only as "connection closed".
/// This probe makes one raw TLS connection with the same material and reads the server's first
/// bytes: a fatal alert means the certificate was refused (returned as text); HTTP/2 settings
/// mean it was accepted (None). Each step is bounded by [`CONNECT_TIMEOUT`].
pub async fn probe_refusal(
    address: &str,
    server_name: &str,
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;
    use tokio::time::timeout;

    let host = address
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem).filter_map(Result::ok) {
        roots.add(c).ok()?;
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem).ok()?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .ok()?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(server_name.to_owned()).ok()?;
    let tcp = timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(host))
        .await
        .ok()?
        .ok()?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let mut tls = match timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .ok()?
    {
        Ok(t) => t,
        Err(e) => return mentions_certificate(&e.to_string()).then(|| e.to_string()),
    };
    let mut buf = [0u8; 64];
    match timeout(CONNECT_TIMEOUT, tls.read(&mut buf)).await.ok()? {
        Err(e) if mentions_certificate(&e.to_string()) => Some(e.to_string()),
        _ => None,
    }
}

/// Connects as admin using `lifeboatctl.toml`'s files.
pub async fn connect(cfg: &CtlConfig) -> Result<Channel, ClientError> {
    let ca = lifeboat_common::tls::read_pem(&cfg.ca, false)?;
    let cert = lifeboat_common::tls::read_pem(&cfg.cert, false)?;
    let key = lifeboat_common::tls::read_pem(&cfg.key, true)?;
    connect_pem(&cfg.address, &cfg.server_name, &ca, &cert, &key).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        assert_eq!(
            classify(&Status::unauthenticated("x")),
            exit::CERTIFICATE_REFUSED
        );
        assert_eq!(
            classify(&Status::permission_denied("x")),
            exit::CERTIFICATE_REFUSED
        );
        assert_eq!(
            classify(&Status::unavailable("connection refused")),
            exit::UNREACHABLE
        );
        assert_eq!(
            classify(&Status::unavailable(
                "received fatal alert: CertificateRequired"
            )),
            exit::CERTIFICATE_REFUSED
        );
        assert_eq!(classify(&Status::not_found("x")), exit::ERROR);
        assert_eq!(classify(&Status::invalid_argument("x")), exit::ERROR);
    }
}
