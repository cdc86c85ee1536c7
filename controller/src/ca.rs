//! The controller's private certificate authority.
//!
//! `init` creates the CA (ECDSA P-256 via aws-lc-rs), the server certificate and the admin client
//! certificate. `AddAgent` signs an agent's CSR: only the CSR's public key is used. Whatever names
//! or extensions the CSR asks for are ignored; the certificate carries exactly one SAN, the URI
//! `lifeboat://agent/<id>`, the client-auth EKU, and is valid for [`AGENT_CERT_DAYS`] days. The
//! agent's private key never leaves the agent.
//!
//! Failure modes: unreadable or malformed CA files, a CSR that does not parse or whose signature
//! does not verify (each a distinct [`CaError`] naming the file or the request).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::ids::{ADMIN_URI, AgentId};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use thiserror::Error;
use x509_parser::time::ASN1Time;

/// Validity of the CA certificate.
pub const CA_DAYS: i64 = 3650;
/// Validity of the server and admin certificates.
pub const SERVICE_CERT_DAYS: i64 = 825;
/// Validity of agent certificates.
pub const AGENT_CERT_DAYS: i64 = 365;
/// The DNS names every server certificate carries.
pub const SERVER_NAMES: [&str; 3] = [
    "lifeboat-controller",
    lifeboat_common::tls::ENROLL_SERVER_NAME,
    "localhost",
];

const DAY_SECS: i64 = 86_400;

#[derive(Debug, Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable CA file: {reason}")]
    BadCaFile { path: PathBuf, reason: String },
    #[error(
        "the certificate signing request is not valid ({0}); create it with `lifeboat-agent init`"
    )]
    BadCsr(String),
    #[error("invalid subject alternative name {name:?}: {reason}")]
    BadSan { name: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

fn gen_err(e: impl std::fmt::Display) -> CaError {
    CaError::Generate(e.to_string())
}

/// A freshly made certificate with its private key (PEM).
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
}

/// A certificate signed for a CSR (the key stays with the requester).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub not_after_unix_ms: i64,
}

fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    lifeboat_common::keys::fill_random(&mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

/// Sets validity to [now - 1 h, now + days] and returns not_after in Unix ms.
fn set_validity(params: &mut CertificateParams, days: i64) -> Result<i64, CaError> {
    let now = now_unix_ms() / 1000;
    let not_after = now + days * DAY_SECS;
    params.not_before = ASN1Time::from_timestamp(now - 3600)
        .map_err(gen_err)?
        .to_datetime();
    params.not_after = ASN1Time::from_timestamp(not_after)
        .map_err(gen_err)?
        .to_datetime();
    Ok(not_after * 1000)
}

fn leaf_params(cn: &str, days: i64) -> Result<(CertificateParams, i64), CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.serial_number = Some(random_serial());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let not_after = set_validity(&mut params, days)?;
    Ok((params, not_after))
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    let ia5 = uri.to_owned().try_into().map_err(|e| CaError::BadSan {
        name: uri.to_owned(),
        reason: format!("{e}"),
    })?;
    Ok(SanType::URI(ia5))
}

/// Parses `--san` values: an IP address or a DNS name.
pub fn parse_san(name: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name.to_owned().try_into().map_err(|e| CaError::BadSan {
        name: name.to_owned(),
        reason: format!("{e}"),
    })?;
    Ok(SanType::DnsName(dns))
}

/// The private CA: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA. Returns it and its key PEM (to be written with mode 0600).
    pub fn generate() -> Result<(Ca, String), CaError> {
        let key = new_key()?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // A random suffix keeps CAs of different controllers apart (an unknown CA is then
        // reported as UnknownIssuer rather than as a bad signature from a same-named CA).
        let mut tag = [0u8; 4];
        lifeboat_common::keys::fill_random(&mut tag);
        dn.push(
            DnType::CommonName,
            format!("Lifeboat controller CA {}", hex::encode(tag)),
        );
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_DAYS)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let ca = Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// Loads the CA from its certificate and key files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CaError::Read {
                path: p.to_owned(),
                source,
            })
        };
        lifeboat_common::tls::check_secret_permissions(key_path).map_err(|e| {
            CaError::BadCaFile {
                path: key_path.to_owned(),
                reason: e.to_string(),
            }
        })?;
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::BadCaFile {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CaError::BadCaFile {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Ca { cert_pem, issuer })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues the controller's server certificate: the standard names plus `extra_sans`.
    pub fn issue_server(&self, extra_sans: &[String]) -> Result<IssuedKey, CaError> {
        let key = new_key()?;
        let (mut params, _) = leaf_params("lifeboat-controller", SERVICE_CERT_DAYS)?;
        let mut sans = Vec::new();
        for n in SERVER_NAMES
            .iter()
            .map(|s| s.to_string())
            .chain(["127.0.0.1".to_owned(), "::1".to_owned()])
        {
            sans.push(parse_san(&n)?);
        }
        for n in extra_sans {
            let san = parse_san(n)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(IssuedKey {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the admin client certificate (URI SAN `lifeboat://admin`).
    pub fn issue_admin(&self) -> Result<IssuedKey, CaError> {
        let key = new_key()?;
        let (mut params, _) = leaf_params("lifeboat admin", SERVICE_CERT_DAYS)?;
        params.subject_alt_names = vec![uri_san(ADMIN_URI)?];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(IssuedKey {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's CSR. Only its public key is used; the certificate names `agent` alone.
    pub fn sign_agent_csr(&self, csr_pem: &str, agent: &AgentId) -> Result<IssuedCert, CaError> {
        self.sign_agent(csr_pem, agent, None)
    }
}

impl Ca {
    /// Signs an agent's CSR valid from `not_before_ms` to `not_after_ms` (Unix ms). Used for
    /// enrollment and renewal with configurable lifetimes, and by tests to make an already
    /// expired certificate. Like [`Ca::sign_agent_csr`], only the CSR's public key is used.
    pub fn sign_agent_csr_between(
        &self,
        csr_pem: &str,
        agent: &AgentId,
        not_before_ms: i64,
        not_after_ms: i64,
    ) -> Result<IssuedCert, CaError> {
        self.sign_agent(csr_pem, agent, Some((not_before_ms, not_after_ms)))
    }

    /// The one signing path for agent certificates: the URI SAN of `agent`, client-auth only,
    /// the default lifetime unless `window` (Unix ms) is given.
    fn sign_agent(
        &self,
        csr_pem: &str,
        agent: &AgentId,
        window: Option<(i64, i64)>,
    ) -> Result<IssuedCert, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let (mut params, mut not_after_unix_ms) = leaf_params(agent.as_str(), AGENT_CERT_DAYS)?;
        if let Some((not_before_ms, not_after_ms)) = window {
            params.not_before = ASN1Time::from_timestamp(not_before_ms / 1000)
                .map_err(gen_err)?
                .to_datetime();
            params.not_after = ASN1Time::from_timestamp(not_after_ms / 1000)
                .map_err(gen_err)?
                .to_datetime();
            not_after_unix_ms = (not_after_ms / 1000) * 1000;
        }
        params.subject_alt_names = vec![uri_san(&agent.certificate_uri())?];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(gen_err)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            not_after_unix_ms,
        })
    }

    /// The CA certificate (DER), e.g. to compute its fingerprint for join tokens.
    pub fn cert_der(&self) -> Result<Vec<u8>, CaError> {
        let mut r = std::io::Cursor::new(self.cert_pem.as_bytes());
        let der = rustls_pemfile_first(&mut r).ok_or_else(|| CaError::BadCaFile {
            path: PathBuf::from("ca.pem"),
            reason: "no certificate in the CA PEM".into(),
        })?;
        Ok(der)
    }
}

fn rustls_pemfile_first(r: &mut std::io::Cursor<&[u8]>) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_reader_iter(r)
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::uri_sans;

    fn csr_asking_for(names: Vec<String>) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "evil");
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    #[test]
    fn csr_names_are_ignored() {
        let (ca, _) = Ca::generate().expect("ca");
        let csr = csr_asking_for(vec!["lifeboat-controller".into(), "10.0.0.1".into()]);
        let agent = AgentId::new("web-01").expect("id");
        let issued = ca.sign_agent_csr(&csr, &agent).expect("sign");
        assert_eq!(
            uri_sans(&issued.cert_der).expect("parse"),
            vec!["lifeboat://agent/web-01".to_owned()]
        );
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.cert_der).expect("x509");
        let san = cert
            .subject_alternative_name()
            .expect("ext")
            .expect("present");
        assert_eq!(san.value.general_names.len(), 1, "only the agent URI");
        let days = (issued.not_after_unix_ms - now_unix_ms()) / 86_400_000;
        assert!((364..=365).contains(&days), "{days}");
    }

    #[test]
    fn garbage_csr_is_a_clear_error() {
        let (ca, _) = Ca::generate().expect("ca");
        let agent = AgentId::new("web-01").expect("id");
        let e = ca.sign_agent_csr("hello", &agent).expect_err("garbage");
        assert!(matches!(e, CaError::BadCsr(_)), "{e}");
    }

    #[test]
    fn admin_cert_carries_admin_uri() {
        let (ca, _) = Ca::generate().expect("ca");
        let admin = ca.issue_admin().expect("admin");
        assert_eq!(
            uri_sans(&admin.cert_der).expect("parse"),
            vec![ADMIN_URI.to_owned()]
        );
        let server = ca
            .issue_server(&["backup.example.com".into()])
            .expect("srv");
        assert!(server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
