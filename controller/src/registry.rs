//! The agent registry in the bucket: append-only JSON objects, one per change, so that a catalog
//! rebuilt from the bucket alone ([`crate::rebuild`]) knows the fleet (agents, their dedup groups
//! and certificate fingerprints, admins, restore grants, revocations).
//!
//! Object keys (format 1, see `docs/format.md`):
//!
//! | key | body |
//! |---|---|
//! | `registry/agents/<agent>/<unix ms, 13 digits>-<8 hex>.json` | one [`AgentEvent`] |
//! | `registry/admins/<cert sha256>.json` | an [`AdminObject`] |
//! | `registry/grants/<agent>/<from agent>-<unix ms>.json` | a [`GrantObject`] |
//! | `registry/revocations/<agent>/<cert sha256>` | legacy revocation (read by rebuild only) |
//! | `registry/policies/<unix ms, 13 digits>-<8 hex>.json` | a [`PolicyObject`]: the full row of one (scope, source) |
//!
//! Invariants:
//! - objects are never overwritten or deleted ([`Store::put_new`]); a change is a new object, so
//!   a late copy (replication, a restored backup of the bucket) can add an old event but never
//!   replace a newer one. Replaying every event in `(at, key)` order gives the current state, and
//!   a revoked fingerprint stays revoked whatever follows ([`replay`]);
//! - no secrets: fingerprints, ids, groups and times only (never keys or token secrets);
//! - write order: the object is put (durable) first, then one catalog transaction records the
//!   change and queues the object for the secondary ([`Pending::enqueue`]). A crash in between
//!   leaves an event the catalog never applied; callers check the change is possible before
//!   putting, so such an event describes a change that was about to happen (a rebuilt catalog
//!   applies it — at worst a certificate that was signed but never delivered becomes the
//!   agent's current one, and the agent re-enrolls with a token).

pub mod backfill;
pub mod replay;

use std::time::Duration;

use bytes::Bytes;
use lifeboat_common::clock::now_unix_ms;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::catalog::CatalogError;
use crate::error::ServiceError;
use crate::replication::queue::{self, Kind, NewObject};
use crate::service::State;
use crate::store::Store;

/// Format of every registry object. Do not change the meaning of a shipped version.
pub const REGISTRY_FORMAT: u32 = 1;

/// What happened to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Change {
    /// Enrolled (by `agent add` or a join token), or re-enrolled with a new certificate (which
    /// clears an earlier revocation of the *agent*, never of a revoked fingerprint).
    Added {
        group: String,
        cert_sha256: String,
        not_after_unix_ms: i64,
    },
    /// Renewed: the previous certificate stays valid until `prev_valid_until_unix_ms`.
    Renewed {
        cert_sha256: String,
        not_after_unix_ms: i64,
        prev_valid_until_unix_ms: i64,
    },
    /// Revoked: these fingerprints never authenticate again.
    Revoked { cert_sha256: Vec<String> },
}

/// One object under `registry/agents/<agent>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEvent {
    pub format: u32,
    pub agent: String,
    pub at_unix_ms: i64,
    #[serde(flatten)]
    pub change: Change,
}

/// `registry/admins/<cert sha256>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminObject {
    pub format: u32,
    pub cert_sha256: String,
    pub created_at_unix_ms: i64,
}

/// `registry/grants/<agent>/<from>-<ms>.json`: `agent` may restore `from_agent`'s snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantObject {
    pub format: u32,
    pub agent: String,
    pub from_agent: String,
    pub created_at_unix_ms: i64,
}

/// `registry/policies/<ms>-<hash>.json`: the full stored policy of (scope, source) after a
/// `policy set`; replay keeps the newest `updated_at_unix_ms` per (scope, source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyObject {
    pub format: u32,
    pub scope: String,
    pub source: String,
    pub schedule: Option<String>,
    pub rpo_ms: Option<i64>,
    pub bandwidth_bytes_per_sec: Option<i64>,
    pub nice: Option<i32>,
    pub updated_at_unix_ms: i64,
}

impl PolicyObject {
    pub fn from_row(r: &crate::catalog::policies::PolicyRow) -> Self {
        PolicyObject {
            format: REGISTRY_FORMAT,
            scope: r.scope.clone(),
            source: r.source.clone(),
            schedule: r.schedule.clone(),
            rpo_ms: r.rpo_ms,
            bandwidth_bytes_per_sec: r.bandwidth,
            nice: r.nice,
            updated_at_unix_ms: r.updated_at,
        }
    }

    pub fn to_row(&self) -> crate::catalog::policies::PolicyRow {
        crate::catalog::policies::PolicyRow {
            scope: self.scope.clone(),
            source: self.source.clone(),
            schedule: self.schedule.clone(),
            rpo_ms: self.rpo_ms,
            bandwidth: self.bandwidth_bytes_per_sec,
            nice: self.nice,
            updated_at: self.updated_at_unix_ms,
        }
    }
}

/// The legacy revocation object (`registry/revocations/<agent>/<fp>`), read by rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LegacyRevocation {
    pub agent: String,
    pub cert_sha256: String,
    pub revoked_at_unix_ms: i64,
}

/// The event revoking `fps` of `agent` at `at` (fingerprints sorted, so the key is a function of
/// the catalog's `revoked_certs` rows).
pub fn revocation(agent: &str, at: i64, mut fps: Vec<String>) -> Pending {
    fps.sort();
    fps.dedup();
    Pending::agent(agent, at, Change::Revoked { cert_sha256: fps })
}

/// A registry object ready to put and then queue.
#[derive(Debug, Clone)]
pub struct Pending {
    pub key: String,
    pub bytes: Bytes,
}

fn json<T: Serialize>(v: &T) -> Bytes {
    // Serializing a struct of strings and integers cannot fail.
    Bytes::from(serde_json::to_vec_pretty(v).unwrap_or_default())
}

/// The key prefix of one agent's events.
pub fn agent_prefix(agent: &str) -> String {
    format!("registry/agents/{agent}/")
}

impl Pending {
    /// An agent event; the key sorts by time and is unique per content.
    pub fn agent(agent: &str, at_unix_ms: i64, change: Change) -> Self {
        let ev = AgentEvent {
            format: REGISTRY_FORMAT,
            agent: agent.to_owned(),
            at_unix_ms,
            change,
        };
        let bytes = json(&ev);
        let h = blake3::hash(&bytes).to_hex();
        let key = format!(
            "{}{:013}-{}.json",
            agent_prefix(agent),
            at_unix_ms.max(0),
            &h[..8]
        );
        Pending { key, bytes }
    }

    /// An admin certificate.
    pub fn admin(cert_sha256: &str, created_at_unix_ms: i64) -> Self {
        Pending {
            key: format!("registry/admins/{cert_sha256}.json"),
            bytes: json(&AdminObject {
                format: REGISTRY_FORMAT,
                cert_sha256: cert_sha256.to_owned(),
                created_at_unix_ms,
            }),
        }
    }

    /// A restore grant.
    pub fn grant(agent: &str, from_agent: &str, created_at_unix_ms: i64) -> Self {
        Pending {
            key: format!(
                "registry/grants/{agent}/{from_agent}-{:013}.json",
                created_at_unix_ms.max(0)
            ),
            bytes: json(&GrantObject {
                format: REGISTRY_FORMAT,
                agent: agent.to_owned(),
                from_agent: from_agent.to_owned(),
                created_at_unix_ms,
            }),
        }
    }

    /// A stored policy (the whole merged row of its scope and source).
    pub fn policy(row: &crate::catalog::policies::PolicyRow, at_unix_ms: i64) -> Self {
        let bytes = json(&PolicyObject::from_row(row));
        let h = blake3::hash(&bytes).to_hex();
        Pending {
            key: format!(
                "registry/policies/{:013}-{}.json",
                at_unix_ms.max(0),
                &h[..8]
            ),
            bytes,
        }
    }

    /// The replication queue row for this object.
    pub fn queued(&self) -> NewObject {
        NewObject {
            key: self.key.clone(),
            kind: Kind::Registry,
            size: self.bytes.len() as u64,
            blake3: *blake3::hash(&self.bytes).as_bytes(),
        }
    }

    /// Puts the object into the primary (durable when this returns), under `deadline`.
    pub async fn put(&self, store: &Store, deadline: Duration) -> Result<(), ServiceError> {
        crate::deadline::put(store, deadline, &self.key, self.bytes.clone()).await?;
        Ok(())
    }

    /// Queues the object for the secondary: call inside the transaction recording the change.
    pub fn enqueue(&self, conn: &Connection, now: i64) -> Result<(), CatalogError> {
        queue::enqueue(conn, &self.queued(), now)
    }

    /// Puts the object, then runs `change` and queues the object in one catalog transaction.
    /// `change` returning `Ok(false)` (the change did not apply) rolls the transaction back; the
    /// object then stays as an event the catalog never applied (see the module docs).
    pub async fn record<F>(self, state: &State, change: F) -> Result<bool, ServiceError>
    where
        F: FnOnce(&Connection) -> Result<bool, CatalogError> + Send + 'static,
    {
        self.put(&state.store, state.store_deadline).await?;
        let now = now_unix_ms();
        Ok(state
            .catalog
            .run(move |c| {
                let tx = c.transaction()?;
                if !change(&tx)? {
                    return Ok(false);
                }
                self.enqueue(&tx, now)?;
                tx.commit()?;
                Ok(true)
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time_and_bodies_hold_no_secrets() {
        let a = Pending::agent(
            "web-01",
            1_700_000_000_000,
            Change::Added {
                group: "web".into(),
                cert_sha256: "ab".repeat(32),
                not_after_unix_ms: 5,
            },
        );
        let b = Pending::agent(
            "web-01",
            1_700_000_000_001,
            Change::Revoked {
                cert_sha256: vec!["ab".repeat(32)],
            },
        );
        assert!(a.key.starts_with("registry/agents/web-01/1700000000000-"));
        assert!(a.key < b.key, "time order is key order");
        let ev: AgentEvent = serde_json::from_slice(&b.bytes).expect("parse");
        assert_eq!(ev.at_unix_ms, 1_700_000_000_001);
        assert!(matches!(ev.change, Change::Revoked { .. }));
        let v: serde_json::Value = serde_json::from_slice(&a.bytes).expect("json");
        assert_eq!(v["event"], "added");
        assert_eq!(v["format"], 1);
        let text = String::from_utf8_lossy(&a.bytes).to_lowercase();
        assert!(!text.contains("key") && !text.contains("secret"), "{text}");
        assert_eq!(
            Pending::admin("cc", 1).key,
            "registry/admins/cc.json",
            "one object per admin certificate"
        );
        assert_eq!(
            Pending::grant("new", "old", 7).key,
            "registry/grants/new/old-0000000000007.json"
        );
        assert_eq!(a.queued().kind, Kind::Registry);
    }
}
