//! Who is calling: the peer certificate → [`Identity`].
//!
//! The TLS layer already checked that the client certificate chains to our CA. Here we take the
//! leaf certificate's SHA-256 fingerprint and its URI SANs, and require both to agree with the
//! catalog: an agent is identified only if the fingerprint is that agent's *current* certificate
//! and the certificate's URI SAN names the same agent; the admin only if the fingerprint is
//! recorded as admin and the SAN is `lifeboat://admin`. Anything else is `Unauthenticated`.
//! A valid identity calling the other service is `PermissionDenied`. Checked on every call.

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::ids::{ADMIN_URI, AgentId};
use tonic::Request;
use x509_parser::extensions::GeneralName;

use crate::catalog::{Catalog, agents, credentials};
use crate::error::ServiceError;

/// An authenticated agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCtx {
    pub id: AgentId,
    pub group: String,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Agent(AgentCtx),
    Admin,
}

/// Hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// The URI subjectAltNames of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect())
}

/// The caller's leaf certificate: fingerprint and URI SANs.
#[derive(Debug, Clone)]
pub struct PeerCert {
    pub fingerprint: String,
    pub uris: Vec<String>,
}

/// Reads the leaf certificate from the request's TLS connection info.
pub fn peer_cert<T>(req: &Request<T>) -> Result<PeerCert, ServiceError> {
    let certs = req.peer_certs().ok_or_else(|| {
        ServiceError::Unauthenticated("no client certificate on this connection".into())
    })?;
    let leaf = certs.first().ok_or_else(|| {
        ServiceError::Unauthenticated("no client certificate on this connection".into())
    })?;
    let uris = uri_sans(leaf).map_err(|e| {
        ServiceError::Unauthenticated(format!("client certificate does not parse: {e}"))
    })?;
    Ok(PeerCert {
        fingerprint: fingerprint(leaf),
        uris,
    })
}

/// Resolves a peer certificate to an identity using the catalog; updates the agent's last_seen.
/// Revoked, replaced and expired agent certificates are `Unauthenticated`.
pub async fn identify(catalog: &Catalog, peer: PeerCert) -> Result<Identity, ServiceError> {
    let fp = peer.fingerprint.clone();
    let now = now_unix_ms();
    let (agent, admin) = catalog
        .run(move |c| {
            let agent = credentials::resolve(c, &fp, now)?;
            if let Some(a) = &agent {
                agents::touch(c, &a.id, now)?;
            }
            let admin = agent.is_none() && agents::is_admin(c, &fp)?;
            Ok((agent, admin))
        })
        .await?;
    if let Some(cur) = agent {
        let id = AgentId::new(&cur.id).map_err(|e| ServiceError::Internal(e.to_string()))?;
        if !peer.uris.iter().any(|u| *u == id.certificate_uri()) {
            return Err(ServiceError::Unauthenticated(format!(
                "certificate is recorded for agent {id} but does not name it"
            )));
        }
        if cur.not_after <= now {
            return Err(ServiceError::Unauthenticated(format!(
                "the certificate of agent {id} has expired; enroll it again with a new join token (`lifeboatctl token create --agent {id}`)"
            )));
        }
        return Ok(Identity::Agent(AgentCtx {
            id,
            group: cur.group,
        }));
    }
    if admin && peer.uris.iter().any(|u| u == ADMIN_URI) {
        return Ok(Identity::Admin);
    }
    tracing::warn!(fingerprint = %peer.fingerprint, "unknown client certificate refused");
    Err(ServiceError::Unauthenticated(
        "this certificate is not enrolled (unknown, replaced or revoked); enroll the agent with a join token (`lifeboatctl token create`)".into(),
    ))
}

/// Re-checks, during a long call or stream, that the agent has not been revoked since the call
/// started (`lifeboatctl agent revoke` aborts uploads in progress).
pub async fn still_enrolled(catalog: &Catalog, agent: &AgentCtx) -> Result<(), ServiceError> {
    let id = agent.id.to_string();
    let revoked = catalog
        .run(move |c| credentials::is_revoked(c, &id))
        .await?;
    if revoked {
        tracing::warn!(agent = %agent.id, "call of a revoked agent aborted");
        return Err(ServiceError::Unauthenticated(format!(
            "agent {} has been revoked; an operator must enroll it again",
            agent.id
        )));
    }
    Ok(())
}

/// Requires an agent caller.
pub async fn require_agent<T>(
    catalog: &Catalog,
    req: &Request<T>,
) -> Result<AgentCtx, ServiceError> {
    match identify(catalog, peer_cert(req)?).await? {
        Identity::Agent(a) => Ok(a),
        Identity::Admin => Err(ServiceError::PermissionDenied(
            "the admin certificate cannot call the agent service".into(),
        )),
    }
}

/// Requires the admin caller.
pub async fn require_admin<T>(catalog: &Catalog, req: &Request<T>) -> Result<(), ServiceError> {
    match identify(catalog, peer_cert(req)?).await? {
        Identity::Admin => Ok(()),
        Identity::Agent(a) => Err(ServiceError::PermissionDenied(format!(
            "agent {} cannot call the admin service; use lifeboatctl with the admin certificate",
            a.id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;
    use crate::catalog::agents::AgentRow;

    #[tokio::test]
    async fn fingerprint_and_san_must_agree() {
        let (ca, _) = Ca::generate().expect("ca");
        let admin = ca.issue_admin().expect("admin");
        let cat = Catalog::open_in_memory().expect("catalog");
        let afp = fingerprint(&admin.cert_der);
        assert_eq!(afp.len(), 64);
        let fp2 = afp.clone();
        cat.run(move |c| agents::insert_admin(c, &fp2, 0))
            .await
            .expect("admin");
        let peer = PeerCert {
            fingerprint: afp.clone(),
            uris: uri_sans(&admin.cert_der).expect("sans"),
        };
        assert_eq!(identify(&cat, peer).await.expect("admin"), Identity::Admin);
        // Recorded as an agent's fingerprint but the SAN names someone else.
        cat.run(|c| {
            agents::insert(
                c,
                &AgentRow {
                    id: "web-01".into(),
                    dedup_group: "web-01".into(),
                    cert_sha256: "ff".into(),
                    not_after: 0,
                    created_at: 0,
                    last_seen: 0,
                    snapshots: 0,
                },
            )
            .map(|_| ())
        })
        .await
        .expect("agent");
        let liar = PeerCert {
            fingerprint: "ff".into(),
            uris: vec!["lifeboat://agent/db-01".into()],
        };
        assert!(matches!(
            identify(&cat, liar).await,
            Err(ServiceError::Unauthenticated(_))
        ));
        let unknown = PeerCert {
            fingerprint: "00".into(),
            uris: vec![ADMIN_URI.into()],
        };
        assert!(matches!(
            identify(&cat, unknown).await,
            Err(ServiceError::Unauthenticated(_))
        ));
    }
}
