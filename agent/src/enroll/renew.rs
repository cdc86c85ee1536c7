//! Certificate renewal over the existing mTLS identity.
//!
//! The agent keeps its key pair (it never leaves the VM) and sends a new CSR for it through
//! `RenewCertificate`; the controller answers with a certificate valid for its configured
//! lifetime and keeps the old one valid until the new one is used (or a short overlap ends).
//! `agent.pem` is replaced atomically, so a crash leaves either the old or the new certificate,
//! both valid. [`needs_renewal`] says when: less than a third of the lifetime remains (the
//! daemon checks it periodically and at start; `lifeboat-agent renew` forces it).
//!
//! An agent offline past its expiry cannot renew (its certificate is refused): an operator
//! creates a token naming it (`lifeboatctl token create --agent NAME`) and the agent runs
//! `lifeboat-agent enroll` again in the same directory, keeping its key, id and history.

use std::fs;
use std::path::Path;

use lifeboat_common::ids::AgentId;
use rcgen::KeyPair;

use super::join::replace_file;
use super::{EnrollError, csr_pem};
use crate::client::GrpcRemote;
use crate::config::ControllerConfig;
use crate::error::AgentError;

/// Validity of a PEM certificate file: (not_before, not_after) in Unix ms.
pub fn validity(cert: &Path) -> Result<(i64, i64), AgentError> {
    let pem = fs::read(cert).map_err(|e| AgentError::io("cannot read", cert, e))?;
    let bad = |why: String| {
        AgentError::Invalid(format!(
            "{} is not a usable certificate: {why}",
            cert.display()
        ))
    };
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let c = p.parse_x509().map_err(|e| bad(e.to_string()))?;
    let v = c.validity();
    Ok((
        v.not_before.timestamp() * 1000,
        v.not_after.timestamp() * 1000,
    ))
}

/// Whether less than a third of the certificate's lifetime remains at `now_ms`.
pub fn needs_renewal(not_before: i64, not_after: i64, now_ms: i64) -> bool {
    let lifetime = (not_after - not_before).max(0);
    not_after - now_ms < lifetime / 3
}

/// Renews the certificate named by `cfg.cert` with the key `cfg.key`; returns the new expiry.
pub async fn renew(cfg: &ControllerConfig, remote: &GrpcRemote) -> Result<i64, EnrollError> {
    let pem =
        fs::read_to_string(&cfg.key).map_err(|e| AgentError::io("cannot read", &cfg.key, e))?;
    let key = KeyPair::from_pem(&pem).map_err(|e| {
        AgentError::Invalid(format!("{} is not a usable key: {e}", cfg.key.display()))
    })?;
    let me = remote.who_am_i().await.map_err(AgentError::Remote)?;
    let id = AgentId::new(&me.agent_id).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let r = remote
        .renew_certificate(csr_pem(&key, &id)?)
        .await
        .map_err(AgentError::Remote)?;
    replace_file(&cfg.cert, r.certificate_pem.as_bytes())?;
    tracing::info!(agent = %id, not_after = r.not_after_unix_ms, "certificate renewed");
    Ok(r.not_after_unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_in_the_last_third() {
        assert!(!needs_renewal(0, 3000, 0));
        assert!(!needs_renewal(0, 3000, 2000));
        assert!(needs_renewal(0, 3000, 2001));
        assert!(
            needs_renewal(0, 3000, 5000),
            "expired: renew (will be refused, re-enroll)"
        );
    }
}
