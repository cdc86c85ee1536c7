//! Replaying registry objects into the fleet's current state (used by [`crate::rebuild`]).
//!
//! Agent events are applied in `(at_unix_ms, key)` order. Rules:
//! - `added` creates the agent (group fixed by its first event) or re-enrolls it: new current
//!   certificate, agent revocation cleared;
//! - `renewed` moves the current certificate to "previous" (valid until the given time), unless
//!   the agent is revoked;
//! - `revoked` revokes the agent and every fingerprint it names.
//!
//! Revocation wins: a fingerprint named by any revocation (agent event or legacy
//! `registry/revocations/` object) never authenticates after a rebuild, whatever order the
//! objects arrived in — an agent whose current certificate is revoked comes back revoked, and a
//! revoked previous certificate is dropped.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, params};

use super::{AdminObject, AgentEvent, Change, GrantObject, LegacyRevocation, PolicyObject};
use crate::catalog::CatalogError;

/// One registry object, parsed by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Agent(AgentEvent),
    Admin(AdminObject),
    Grant(GrantObject),
    Revocation(LegacyRevocation),
    Policy(PolicyObject),
    /// A key the registry does not interpret (`registry/role`, future kinds).
    Other,
}

/// Parses the object at `key`; `Err` names what is wrong (the caller counts and skips it).
pub fn parse(key: &str, bytes: &[u8]) -> Result<Parsed, String> {
    let parts: Vec<&str> = key.split('/').collect();
    let bad = |e: serde_json::Error| format!("{key}: not a registry object ({e})");
    match parts.as_slice() {
        ["registry", "agents", agent, _] => {
            let ev: AgentEvent = serde_json::from_slice(bytes).map_err(bad)?;
            if ev.agent != *agent {
                return Err(format!(
                    "{key}: names agent {:?}, not the agent of its key",
                    ev.agent
                ));
            }
            Ok(Parsed::Agent(ev))
        }
        ["registry", "admins", _] => Ok(Parsed::Admin(serde_json::from_slice(bytes).map_err(bad)?)),
        ["registry", "grants", _, _] => {
            Ok(Parsed::Grant(serde_json::from_slice(bytes).map_err(bad)?))
        }
        ["registry", "revocations", _, _] => Ok(Parsed::Revocation(
            serde_json::from_slice(bytes).map_err(bad)?,
        )),
        ["registry", "policies", _] => {
            Ok(Parsed::Policy(serde_json::from_slice(bytes).map_err(bad)?))
        }
        _ => Ok(Parsed::Other),
    }
}

/// An agent's state after replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    pub group: String,
    pub cert_sha256: String,
    pub not_after: i64,
    pub created_at: i64,
    pub prev: Option<(String, i64)>,
    pub revoked_at: Option<i64>,
}

/// Everything the registry objects say, collected before replay.
#[derive(Debug, Default)]
pub struct Collected {
    events: Vec<(String, AgentEvent)>,
    admins: Vec<AdminObject>,
    grants: Vec<GrantObject>,
    /// fingerprint → (agent, revoked at)
    revoked: HashMap<String, (String, i64)>,
    policies: Vec<PolicyObject>,
}

/// The replayed fleet.
#[derive(Debug, Default)]
pub struct Fleet {
    pub agents: BTreeMap<String, AgentState>,
    pub admins: Vec<AdminObject>,
    pub grants: Vec<GrantObject>,
    pub revoked: HashMap<String, (String, i64)>,
    /// Stored policies (any order; [`Fleet::apply`] keeps the newest per scope and source).
    pub policies: Vec<PolicyObject>,
}

impl Collected {
    /// Adds one parsed object.
    pub fn add(&mut self, key: &str, p: Parsed) {
        match p {
            Parsed::Agent(ev) => {
                if let Change::Revoked { cert_sha256 } = &ev.change {
                    for fp in cert_sha256 {
                        self.revoke(fp, &ev.agent, ev.at_unix_ms);
                    }
                }
                self.events.push((key.to_owned(), ev));
            }
            Parsed::Admin(a) => self.admins.push(a),
            Parsed::Grant(g) => self.grants.push(g),
            Parsed::Revocation(r) => self.revoke(&r.cert_sha256, &r.agent, r.revoked_at_unix_ms),
            Parsed::Policy(p) => self.policies.push(p),
            Parsed::Other => {}
        }
    }

    fn revoke(&mut self, fp: &str, agent: &str, at: i64) {
        let e = self
            .revoked
            .entry(fp.to_owned())
            .or_insert_with(|| (agent.to_owned(), at));
        e.1 = e.1.min(at);
    }

    /// Replays the events in time order.
    pub fn replay(mut self) -> Fleet {
        self.events
            .sort_by(|a, b| (a.1.at_unix_ms, &a.0).cmp(&(b.1.at_unix_ms, &b.0)));
        let mut agents: BTreeMap<String, AgentState> = BTreeMap::new();
        for (_, ev) in &self.events {
            apply(&mut agents, ev);
        }
        for (id, a) in agents.iter_mut() {
            if let Some((_, at)) = self.revoked.get(&a.cert_sha256) {
                a.revoked_at = Some(a.revoked_at.unwrap_or(*at));
                a.prev = None;
            }
            if a.prev
                .as_ref()
                .is_some_and(|(fp, _)| self.revoked.contains_key(fp))
            {
                a.prev = None;
            }
            tracing::debug!(agent = %id, revoked = a.revoked_at.is_some(), "agent replayed");
        }
        Fleet {
            agents,
            admins: self.admins,
            grants: self.grants,
            revoked: self.revoked,
            policies: self.policies,
        }
    }
}

fn apply(agents: &mut BTreeMap<String, AgentState>, ev: &AgentEvent) {
    match (&ev.change, agents.get_mut(&ev.agent)) {
        (
            Change::Added {
                group,
                cert_sha256,
                not_after_unix_ms,
            },
            None,
        ) => {
            agents.insert(
                ev.agent.clone(),
                AgentState {
                    group: group.clone(),
                    cert_sha256: cert_sha256.clone(),
                    not_after: *not_after_unix_ms,
                    created_at: ev.at_unix_ms,
                    prev: None,
                    revoked_at: None,
                },
            );
        }
        (
            Change::Added {
                cert_sha256,
                not_after_unix_ms,
                ..
            },
            Some(a),
        ) => {
            a.cert_sha256 = cert_sha256.clone();
            a.not_after = *not_after_unix_ms;
            a.prev = None;
            a.revoked_at = None;
        }
        (
            Change::Renewed {
                cert_sha256,
                not_after_unix_ms,
                prev_valid_until_unix_ms,
            },
            Some(a),
        ) if a.revoked_at.is_none() => {
            let old = std::mem::replace(&mut a.cert_sha256, cert_sha256.clone());
            a.prev = Some((old, *prev_valid_until_unix_ms));
            a.not_after = *not_after_unix_ms;
        }
        (Change::Revoked { .. }, Some(a)) => {
            a.revoked_at = Some(ev.at_unix_ms);
            a.prev = None;
        }
        // A renewal of a revoked agent, or an event for an agent never added: nothing to apply.
        _ => {}
    }
}

/// What [`Fleet::apply`] inserted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub agents: u64,
    pub revoked_agents: u64,
    pub admins: u64,
    pub grants: u64,
    pub revoked_certs: u64,
    pub policies: u64,
}

impl Fleet {
    /// Inserts the fleet into an empty catalog (one transaction, the caller's).
    pub fn apply(&self, conn: &Connection) -> Result<Applied, CatalogError> {
        let mut out = Applied::default();
        for (id, a) in &self.agents {
            let (prev, prev_until) = match &a.prev {
                Some((fp, until)) => (Some(fp.as_str()), *until),
                None => (None, 0),
            };
            out.agents += conn.execute(
                "INSERT OR IGNORE INTO agents (id, dedup_group, cert_sha256, not_after, created_at,
                     last_seen, revoked_at, prev_cert_sha256, prev_valid_until)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8)",
                params![
                    id,
                    a.group,
                    a.cert_sha256,
                    a.not_after,
                    a.created_at,
                    a.revoked_at,
                    prev,
                    prev_until
                ],
            )? as u64;
            out.revoked_agents += u64::from(a.revoked_at.is_some());
        }
        for (fp, (agent, at)) in &self.revoked {
            out.revoked_certs += conn.execute(
                "INSERT OR IGNORE INTO revoked_certs (cert_sha256, agent, revoked_at) VALUES (?1, ?2, ?3)",
                params![fp, agent, at],
            )? as u64;
        }
        for a in &self.admins {
            out.admins += conn.execute(
                "INSERT OR IGNORE INTO admins (cert_sha256, created_at) VALUES (?1, ?2)",
                params![a.cert_sha256, a.created_at_unix_ms],
            )? as u64;
        }
        for g in &self.grants {
            if self.agents.contains_key(&g.agent) && self.agents.contains_key(&g.from_agent) {
                out.grants += conn.execute(
                    "INSERT OR IGNORE INTO restore_grants (agent, from_agent, created_at)
                     VALUES (?1, ?2, ?3)",
                    params![g.agent, g.from_agent, g.created_at_unix_ms],
                )? as u64;
            }
        }
        for p in &self.policies {
            out.policies += u64::from(crate::catalog::policies::upsert_if_newer(
                conn,
                &p.to_row(),
            )?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Pending;

    fn add(c: &mut Collected, p: &Pending) {
        let parsed = parse(&p.key, &p.bytes).expect("parse");
        c.add(&p.key, parsed);
    }

    fn added(fp: &str) -> Change {
        Change::Added {
            group: "web".into(),
            cert_sha256: fp.into(),
            not_after_unix_ms: 100,
        }
    }

    #[test]
    fn replay_order_and_revocation_wins() {
        let mut c = Collected::default();
        let revoke = Pending::agent(
            "a",
            30,
            Change::Revoked {
                cert_sha256: vec!["f2".into()],
            },
        );
        // Arrival order differs from time order: the late copy of the revocation comes first.
        add(&mut c, &revoke);
        add(&mut c, &Pending::agent("a", 10, added("f1")));
        add(
            &mut c,
            &Pending::agent(
                "a",
                20,
                Change::Renewed {
                    cert_sha256: "f2".into(),
                    not_after_unix_ms: 200,
                    prev_valid_until_unix_ms: 25,
                },
            ),
        );
        add(&mut c, &Pending::agent("b", 5, added("g1")));
        add(&mut c, &Pending::admin("ad", 1));
        add(&mut c, &Pending::grant("b", "a", 40));
        let f = c.replay();
        let a = &f.agents["a"];
        assert_eq!(a.cert_sha256, "f2");
        assert_eq!(a.revoked_at, Some(30));
        assert_eq!(a.prev, None);
        assert_eq!(f.agents["b"].revoked_at, None);

        // A renewal that arrives (or is dated) after the revocation cannot unrevoke.
        let mut c = Collected::default();
        add(&mut c, &Pending::agent("a", 10, added("f1")));
        add(
            &mut c,
            &Pending::agent(
                "a",
                5,
                Change::Revoked {
                    cert_sha256: vec!["f1".into()],
                },
            ),
        );
        let f = c.replay();
        assert_eq!(
            f.agents["a"].revoked_at,
            Some(5),
            "revoked fingerprint stays revoked"
        );

        let cat = crate::catalog::Catalog::open_in_memory().expect("open");
        let mut c = Collected::default();
        add(&mut c, &Pending::agent("a", 10, added("f1")));
        add(&mut c, &Pending::agent("b", 11, added("g1")));
        add(&mut c, &Pending::grant("b", "a", 12));
        add(&mut c, &Pending::grant("b", "ghost", 12));
        add(&mut c, &Pending::admin("ad", 1));
        let f = c.replay();
        let applied = cat.run_blocking(|conn| f.apply(conn)).expect("apply");
        assert_eq!(applied.agents, 2);
        assert_eq!(applied.grants, 1, "grant naming an unknown agent skipped");
        assert_eq!(applied.admins, 1);
        assert!(
            cat.run_blocking(|conn| crate::catalog::agents::is_admin(conn, "ad"))
                .expect("admin")
        );
    }

    #[test]
    fn parse_checks_the_key() {
        let p = Pending::agent("a", 1, added("f"));
        let wrong = p.key.replace("/a/", "/b/");
        assert!(parse(&wrong, &p.bytes).is_err());
        assert_eq!(parse("registry/role", b"{}"), Ok(Parsed::Other));
        assert!(parse("registry/admins/x.json", b"garbage").is_err());
    }
}
