//! Finding the controller's CA by the fingerprint in a join token (no trust on first use).
//!
//! The controller presents its server certificate followed by its CA certificate. We open a
//! plain TLS connection whose verifier only *records* the presented chain and then aborts the
//! handshake (nothing is sent, the token included). A certificate in that chain whose SHA-256
//! equals the token's fingerprint is the CA — authentic whoever sent it, because the hash pins
//! it. The real connection then verifies the controller normally against that CA alone, so a
//! server that merely copied the CA certificate (without a server key signed by it) is refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_common::join_token::JoinToken;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::EnrollError;

const CONNECT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct CaptureChain {
    chain: Mutex<Vec<Vec<u8>>>,
    schemes: Vec<SignatureScheme>,
}

const CAPTURED: &str = "lifeboat: chain captured";

impl ServerCertVerifier for CaptureChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut c) = self.chain.lock() {
            c.push(end_entity.to_vec());
            c.extend(intermediates.iter().map(|i| i.to_vec()));
        }
        // Never accept: this connection only learns the chain.
        Err(rustls::Error::General(CAPTURED.into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(CAPTURED.into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(CAPTURED.into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// `host` and `port` of an https URL.
pub fn host_port(address: &str) -> Result<(String, u16), EnrollError> {
    let uri: tonic::codegen::http::Uri = address
        .parse()
        .map_err(|_| EnrollError::Address(address.to_owned()))?;
    let host = uri
        .host()
        .ok_or_else(|| EnrollError::Address(address.to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// Connects to the token's controller and returns the DER of the CA the token pins.
pub async fn pinned_ca(token: &JoinToken) -> Result<Vec<u8>, EnrollError> {
    let (host, port) = host_port(&token.address)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(CaptureChain {
        chain: Mutex::new(Vec::new()),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EnrollError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let unreachable = |detail: String| EnrollError::Unreachable {
        address: token.address.clone(),
        detail,
    };
    let tcp = tokio::time::timeout(CONNECT_WAIT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let name = ServerName::try_from(lifeboat_common::tls::ENROLL_SERVER_NAME)
        .map_err(|e| EnrollError::Tls(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // The handshake fails by design once the chain is captured.
    let _ = tokio::time::timeout(CONNECT_WAIT, connector.connect(name, tcp)).await;
    let chain = verifier
        .chain
        .lock()
        .map_err(|_| EnrollError::Tls("capture lock poisoned".into()))?
        .clone();
    if chain.is_empty() {
        return Err(unreachable(
            "no TLS certificate received (is this a Lifeboat controller?)".into(),
        ));
    }
    chain
        .into_iter()
        .find(|c| token.pins(c))
        .ok_or_else(|| EnrollError::WrongController(token.address.clone()))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// PEM text of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn pem_round_trips() {
        for len in [1usize, 2, 3, 100, 301] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let pem = cert_pem(&der);
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).expect("parse");
            assert_eq!(back.as_ref(), der.as_slice(), "len {len}");
        }
    }
}
