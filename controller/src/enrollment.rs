//! Enrollment with join tokens, renewal and revocation: the certificate lifecycle of agents.
//!
//! - [`create_token`] (admin): a random secret; the catalog stores only its SHA-256.
//! - [`enroll`] (no client certificate): token checked (known, unexpired, uses left) and
//!   consumed in one catalog call, CSR signed for [`Policy::cert_lifetime`]. A token that names
//!   an existing agent re-enrolls it (new certificate, same id, group and history; a revocation
//!   is cleared) — the documented path back for an agent that was offline past its expiry.
//! - [`renew`] (the agent itself, over mTLS): new CSR → new certificate; the old one stays valid
//!   until the new one is used or [`Policy::renew_overlap`] passes.
//! - [`revoke`] (admin): the agent's fingerprints stop matching; checked on every call and on
//!   every upload message ([`crate::auth::still_enrolled`]).
//!
//! Enrollment attempts are rate-limited per source address ([`RateLimiter`]); the limiter is
//! in memory (a restart resets it, which only helps an attacker by one window).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::ids::AgentId;
use lifeboat_common::join_token::JoinToken;
use lifeboat_proto::v1 as pb;

use crate::auth::{AgentCtx, fingerprint};
use crate::catalog::agents::{self, AgentRow};
use crate::catalog::credentials;
use crate::catalog::tokens::{self, Refusal, TokenRow};
use crate::error::ServiceError;
use crate::registry::{Change, Pending};
use crate::service::State;

/// The controller's clock for certificate decisions: the wall clock plus an offset that only
/// tests change ([`Clock::advance`]), so expiry and renewal are tested without sleeping. The TLS
/// layer reads the same clock (it is the server config's rustls `TimeProvider`).
#[derive(Debug, Clone, Default)]
pub struct Clock(Arc<AtomicI64>);

impl Clock {
    /// Now, in Unix ms.
    pub fn now_ms(&self) -> i64 {
        now_unix_ms().saturating_add(self.0.load(Ordering::Relaxed))
    }

    /// Moves this clock forward (tests).
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(ms(by), Ordering::Relaxed);
    }
}

impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let ms = u64::try_from(self.now_ms()).ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            Duration::from_millis(ms),
        ))
    }
}

/// Lifetimes and limits of enrollment; tests shorten them.
#[derive(Debug)]
pub struct Policy {
    /// The clock certificates are issued and checked by (shared with the TLS layer).
    pub clock: Clock,
    /// Validity of agent certificates issued by enrollment and renewal.
    pub cert_lifetime: Duration,
    /// How long a renewed agent's previous certificate stays valid.
    pub renew_overlap: Duration,
    /// Default join-token lifetime.
    pub token_ttl: Duration,
    /// Enrollment attempts allowed per source address per [`Policy::rate_window`].
    pub rate_limit: u32,
    pub rate_window: Duration,
    pub limiter: RateLimiter,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            clock: Clock::default(),
            cert_lifetime: Duration::from_secs(30 * 86_400),
            renew_overlap: Duration::from_secs(3600),
            token_ttl: Duration::from_secs(3600),
            rate_limit: 10,
            rate_window: Duration::from_secs(60),
            limiter: RateLimiter::default(),
        }
    }
}

/// Fixed-window counter of attempts per address.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl RateLimiter {
    /// Counts an attempt; `false` when the address is over `limit` in the current window.
    pub fn allow(&self, ip: IpAddr, now_ms: i64, limit: u32, window: Duration) -> bool {
        let Ok(mut w) = self.windows.lock() else {
            return false;
        };
        let win = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now_ms - *start < win);
        }
        let e = w.entry(ip).or_insert((now_ms, 0));
        if now_ms - e.0 >= win {
            *e = (now_ms, 0);
        }
        e.1 = e.1.saturating_add(1);
        e.1 <= limit
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn group_name(raw: &str) -> Result<Option<String>, ServiceError> {
    if raw.is_empty() {
        return Ok(None);
    }
    AgentId::new(raw).map(|g| Some(g.to_string())).map_err(|_| {
        ServiceError::invalid(format!(
            "invalid dedup group {raw:?}: use the same characters as an agent id"
        ))
    })
}

/// Creates a join token (admin).
pub async fn create_token(
    state: &State,
    r: pb::CreateJoinTokenRequest,
) -> Result<pb::CreateJoinTokenResponse, ServiceError> {
    let agent = match r.agent_id.as_str() {
        "" => None,
        a => Some(
            AgentId::new(a)
                .map_err(|e| ServiceError::invalid(e.to_string()))?
                .to_string(),
        ),
    };
    let group = group_name(&r.dedup_group)?;
    if r.address.is_empty() {
        return Err(ServiceError::invalid(
            "address: empty; give the controller URL agents dial",
        ));
    }
    let ca_der = state
        .ca
        .cert_der()
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    let token = JoinToken::generate(&ca_der, &r.address);
    let now = state.enrollment.clock.now_ms();
    let ttl = match r.ttl_seconds {
        0 => state.enrollment.token_ttl,
        s => Duration::from_secs(s.min(30 * 86_400)),
    };
    let row = TokenRow {
        secret_sha256: token.secret_hash(),
        agent: agent.clone(),
        name_prefix: r.name_prefix.clone(),
        dedup_group: group,
        uses_left: r.uses.max(1),
        expires_at: now.saturating_add(ms(ttl)),
        created_at: now,
    };
    let expires_at = row.expires_at;
    state.catalog.run(move |c| tokens::insert(c, &row)).await?;
    tracing::info!(agent = ?agent, uses = r.uses.max(1), expires_at, "join token created");
    Ok(pb::CreateJoinTokenResponse {
        token: token.encode(),
        expires_at_unix_ms: expires_at,
    })
}

fn refusal_message(r: &Refusal) -> &'static str {
    match r {
        Refusal::Unknown => {
            "the join token is not known to this controller (mistyped, tampered with, or for another controller); create a new one with `lifeboatctl token create`"
        }
        Refusal::Expired => {
            "the join token has expired; create a new one with `lifeboatctl token create`"
        }
        Refusal::Used => {
            "the join token has already been used; create a new one with `lifeboatctl token create`"
        }
    }
}

/// Picks the agent name from the token and the request.
fn chosen_name(t: &TokenRow, requested: &str) -> Result<AgentId, ServiceError> {
    let name = match (&t.agent, requested) {
        (Some(a), "") => a.clone(),
        (Some(a), r) if r == a => a.clone(),
        (Some(a), r) => {
            return Err(ServiceError::PermissionDenied(format!(
                "this join token enrolls agent {a}, not {r}"
            )));
        }
        (None, "") => {
            return Err(ServiceError::invalid("give the agent's name (--name)"));
        }
        (None, r) => r.to_owned(),
    };
    if !name.starts_with(&t.name_prefix) {
        return Err(ServiceError::PermissionDenied(format!(
            "this join token only enrolls names starting with {:?}",
            t.name_prefix
        )));
    }
    AgentId::new(&name).map_err(|e| ServiceError::invalid(e.to_string()))
}

/// Writes the registry event of an enrollment (durable before the catalog records it,
/// [`crate::registry`]); refuses first a name that is taken and not named by the token, so a
/// refused enrollment leaves no event behind.
async fn enrollment_event(
    state: &State,
    row: &AgentRow,
    group: &str,
    names_agent: bool,
    now: i64,
) -> Result<Pending, ServiceError> {
    let name = row.id.clone();
    let exists = state
        .catalog
        .run(move |c| Ok(crate::catalog::grants::group_of(c, &name)?.is_some()))
        .await?;
    if exists && !names_agent {
        return Err(already_exists_name(&row.id));
    }
    let event = Pending::agent(
        &row.id,
        now,
        Change::Added {
            group: group.to_owned(),
            cert_sha256: row.cert_sha256.clone(),
            not_after_unix_ms: row.not_after,
        },
    );
    event.put(&state.store, state.store_deadline).await?;
    Ok(event)
}

/// Enrolls an agent with a join token (no client certificate).
pub async fn enroll(
    state: &State,
    peer: Option<IpAddr>,
    r: pb::EnrollRequest,
) -> Result<pb::EnrollResponse, ServiceError> {
    let now = state.enrollment.clock.now_ms();
    let p = &state.enrollment;
    let ip = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if !p.limiter.allow(ip, now, p.rate_limit, p.rate_window) {
        tracing::warn!(peer = %ip, "enrollment rate limit hit");
        return Err(ServiceError::Unavailable(format!(
            "too many enrollment attempts from {ip}; wait a minute and try again"
        )));
    }
    let token =
        JoinToken::decode(&r.token).map_err(|e| ServiceError::Unauthenticated(e.to_string()))?;
    let hash = token.secret_hash();
    let h2 = hash.clone();
    let row = state
        .catalog
        .run(move |c| tokens::check(c, &h2, now))
        .await?;
    let t = row.map_err(|why| {
        tracing::warn!(peer = %ip, reason = ?why, "join token refused");
        ServiceError::Unauthenticated(refusal_message(&why).into())
    })?;
    let id = chosen_name(&t, &r.agent_id)?;
    let issued = state
        .ca
        .sign_agent_csr_between(&r.csr_pem, &id, now - 3_600_000, now + ms(p.cert_lifetime))
        .map_err(|e| ServiceError::invalid(e.to_string()))?;
    let group = t.dedup_group.clone().unwrap_or_else(|| id.to_string());
    let agent_row = AgentRow {
        id: id.to_string(),
        dedup_group: group.clone(),
        cert_sha256: fingerprint(&issued.cert_der),
        not_after: issued.not_after_unix_ms,
        created_at: now,
        last_seen: 0,
        snapshots: 0,
    };
    let names_agent = t.agent.is_some();
    let peer_s = ip.to_string();
    let event = enrollment_event(state, &agent_row, &group, names_agent, now).await?;
    let outcome = state
        .catalog
        .run(move |c| {
            let tx = c.transaction()?;
            // Re-checked inside the transaction: two racing enrollments cannot both use it.
            if let Err(why) = tokens::check(&tx, &hash, now)? {
                return Ok(Err(why));
            }
            let ok = agents::insert(&tx, &agent_row)?
                || (names_agent
                    && credentials::reenroll(
                        &tx,
                        &agent_row.id,
                        &agent_row.cert_sha256,
                        agent_row.not_after,
                    )?);
            if !ok {
                return Ok(Ok(false));
            }
            tokens::consume(&tx, &hash, &agent_row.id, &peer_s, now)?;
            event.enqueue(&tx, now)?;
            tx.commit()?;
            Ok(Ok(true))
        })
        .await?;
    match outcome {
        Err(why) => return Err(ServiceError::Unauthenticated(refusal_message(&why).into())),
        Ok(false) => return Err(already_exists(&id)),
        Ok(true) => {}
    }
    tracing::info!(agent = %id, group = %group, peer = %ip, "agent enrolled with a join token");
    Ok(pb::EnrollResponse {
        agent_id: id.to_string(),
        dedup_group: group,
        certificate_pem: issued.cert_pem,
        ca_pem: state.ca.cert_pem().to_owned(),
        not_after_unix_ms: issued.not_after_unix_ms,
    })
}

fn already_exists(id: &AgentId) -> ServiceError {
    already_exists_name(id.as_str())
}

fn already_exists_name(id: &str) -> ServiceError {
    ServiceError::AlreadyExists(format!(
        "agent {id} already exists; choose another --name, or re-enroll it with a token made by `lifeboatctl token create --agent {id}`"
    ))
}

/// Renews the calling agent's certificate.
pub async fn renew(
    state: &State,
    agent: &AgentCtx,
    r: pb::RenewCertificateRequest,
) -> Result<pb::RenewCertificateResponse, ServiceError> {
    let now = state.enrollment.clock.now_ms();
    let p = &state.enrollment;
    let issued = state
        .ca
        .sign_agent_csr_between(
            &r.csr_pem,
            &agent.id,
            now - 3_600_000,
            now + ms(p.cert_lifetime),
        )
        .map_err(|e| ServiceError::invalid(e.to_string()))?;
    let (id, fp, na) = (
        agent.id.to_string(),
        fingerprint(&issued.cert_der),
        issued.not_after_unix_ms,
    );
    let overlap = now + ms(p.renew_overlap);
    let event = Pending::agent(
        &id,
        now,
        Change::Renewed {
            cert_sha256: fp.clone(),
            not_after_unix_ms: na,
            prev_valid_until_unix_ms: overlap,
        },
    );
    event
        .record(state, move |c| {
            credentials::renew(c, &id, &fp, na, overlap)?;
            Ok(true)
        })
        .await?;
    tracing::info!(agent = %agent.id, not_after = na, "agent certificate renewed");
    Ok(pb::RenewCertificateResponse {
        certificate_pem: issued.cert_pem,
        not_after_unix_ms: na,
    })
}

/// Revokes an agent (admin).
pub async fn revoke(
    state: &State,
    r: pb::RevokeAgentRequest,
) -> Result<pb::RevokeAgentResponse, ServiceError> {
    let id = AgentId::new(&r.agent_id).map_err(|e| ServiceError::invalid(e.to_string()))?;
    let now = state.enrollment.clock.now_ms();
    let name = id.to_string();
    let found = state
        .catalog
        .run(move |c| credentials::revoke(c, &name, now))
        .await?;
    let Some(fps) = found else {
        return Err(ServiceError::NotFound(format!(
            "agent {id} is not enrolled; see `lifeboatctl agent list`"
        )));
    };
    // The catalog row takes effect now, even with the bucket down; the registry object lets a
    // rebuilt catalog keep the revocation. Its key is a function of the revoked_certs rows, so
    // one that could not be written now is written at the next start
    // ([`crate::registry::backfill`]).
    let event = crate::registry::revocation(id.as_str(), now, fps);
    match event.put(&state.store, state.store_deadline).await {
        Ok(()) => {
            state.catalog.run(move |c| event.enqueue(c, now)).await?;
        }
        Err(e) => {
            tracing::warn!(agent = %id, key = %event.key, error = %e, "revocation not written to the bucket registry yet; retried at the next start");
        }
    }
    tracing::warn!(agent = %id, "agent revoked");
    Ok(pb::RevokeAgentResponse {
        revoked_at_unix_ms: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_counts_per_address_and_window() {
        let l = RateLimiter::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let w = Duration::from_secs(60);
        assert!(l.allow(a, 0, 2, w));
        assert!(l.allow(a, 1, 2, w));
        assert!(!l.allow(a, 2, 2, w), "third attempt in the window refused");
        assert!(l.allow(b, 2, 2, w), "other addresses unaffected");
        assert!(l.allow(a, 60_000, 2, w), "new window");
    }
}
