//! A plain TLS handshake to the controller, used only to explain a failed call.
//!
//! With TLS 1.3 the client finishes its handshake before the server has checked the client
//! certificate; when the server refuses it, the alert arrives later and tonic reports only
//! "operation was canceled". To tell the operator the truth (exit 5, not 4), the agent then
//! repeats the handshake itself with the same CA, certificate and key and reads briefly: a
//! received alert or a certificate error is returned.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ControllerConfig;

/// How long to wait for the server's verdict after the handshake.
const READ_WAIT: Duration = Duration::from_secs(3);

/// The TLS error the controller's handshake produces with our identity, if any.
pub async fn tls_refusal(cfg: &ControllerConfig) -> Option<rustls::Error> {
    let uri: tonic::codegen::http::Uri = cfg.address.parse().ok()?;
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for c in lifeboat_common::tls::load_certs(&cfg.ca).ok()? {
        roots.add(c).ok()?;
    }
    let certs = lifeboat_common::tls::load_certs(&cfg.cert).ok()?;
    let key = lifeboat_common::tls::load_key(&cfg.key).ok()?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .ok()?;
    let name = ServerName::try_from(cfg.server_name.clone()).ok()?;
    let tcp = tokio::time::timeout(READ_WAIT, TcpStream::connect((host.as_str(), port)))
        .await
        .ok()?
        .ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = match tokio::time::timeout(READ_WAIT, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return rustls_error(&e),
        Err(_) => return None,
    };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(READ_WAIT, tls.read(&mut buf)).await {
        Ok(Err(e)) => rustls_error(&e),
        _ => None,
    }
}

fn rustls_error(e: &std::io::Error) -> Option<rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>().cloned()
}
