//! The fleet's RPO status: catalog facts for every known (agent, source), judged by
//! [`super::rpo::assess`] at a given `now`.
//!
//! Known sources are those with a snapshot, a reported failure, or an agent+source policy, of
//! agents that are not revoked. Facts:
//! - last success: the newest committed snapshot that is neither forgotten nor flagged by the
//!   catalog rebuild (it is what a restore would use);
//! - last replicated: [`queue::newest_replicated`] (record copied to the secondary);
//! - last failure: the newest reported failure (by finish time); `assess` ignores it when a
//!   success came later;
//! - expected since: the agent's enrollment;
//! - objective: the effective policy ([`super::policy::resolve`]).
//!
//! Everything is recomputed from the catalog on each call, so `lifeboatctl status`, `/metrics`
//! and the alert worker agree and a restarted controller gives the same answer.
//!
//! Connection state comes from the control stream's registry through [`Presence`]; without it
//! ([`NoPresence`]) only the catalog's `last_seen` is known and `connected` stays unknown.

use std::collections::{BTreeMap, BTreeSet};

use lifeboat_proto::v1 as pb;
use rusqlite::Connection;

use super::policy::{self, Target};
use super::rpo::{self, Compliance, RpoState, SourceFacts};
use crate::catalog::CatalogError;
use crate::catalog::policies;
use crate::replication::queue;

/// Which agents hold a live control stream. Implemented by the control-stream registry.
pub trait Presence: Send + Sync + std::fmt::Debug {
    /// `None` when unknown (no registry).
    fn connected(&self, agent: &str) -> Option<bool>;
}

/// No registry: connection state unknown.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPresence;

impl Presence for NoPresence {
    fn connected(&self, _agent: &str) -> Option<bool> {
        None
    }
}

/// One row of the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    pub compliance: Compliance,
    pub last_success_ms: Option<i64>,
    /// How long the run of that snapshot took.
    pub last_duration_ms: Option<i64>,
    pub last_seen_ms: i64,
    pub connected: Option<bool>,
}

/// One agent's control-stream link, for the disconnect alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLink {
    pub agent: String,
    /// The agent announced a version on a control stream at least once (it runs `run`).
    pub uses_control: bool,
    pub connected: Option<bool>,
    pub last_seen_ms: i64,
    /// The longest gap of its sources' effective schedules: being away longer than this
    /// means at least one backup slot passed unseen.
    pub period_ms: i64,
}

/// The whole fleet at `now_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetStatus {
    pub now_ms: i64,
    pub secondary_configured: bool,
    pub sources: Vec<SourceStatus>,
    pub links: Vec<AgentLink>,
}

struct AgentInfo {
    group: String,
    created_at: i64,
    last_seen: i64,
    version: String,
}

fn agents(conn: &Connection) -> Result<BTreeMap<String, AgentInfo>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT id, dedup_group, created_at, last_seen, version FROM agents WHERE revoked_at IS NULL",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            AgentInfo {
                group: r.get(1)?,
                created_at: r.get(2)?,
                last_seen: r.get(3)?,
                version: r.get(4)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn pairs(conn: &Connection) -> Result<BTreeSet<(String, String)>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT agent, source FROM snapshots UNION SELECT agent, source FROM backup_failures
         UNION SELECT substr(scope, 7), source FROM policies
             WHERE scope LIKE 'agent:%' AND source != ''",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

type PairMap<T> = BTreeMap<(String, String), T>;

/// Per pair: (commit time, run duration) of the newest restorable snapshot. (SQLite takes the
/// bare columns of an aggregate query from the row holding the MAX.)
fn last_success(conn: &Connection) -> Result<PairMap<(i64, i64)>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT agent, source, MAX(committed_at), finished_at - started_at FROM snapshots
         WHERE forgotten_at IS NULL AND missing_refs = 0 GROUP BY agent, source",
    )?;
    let rows = st.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn last_failure(conn: &Connection) -> Result<PairMap<(i64, String)>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT agent, source, finished_at, reason FROM backup_failures
         ORDER BY finished_at, reported_at, id",
    )?;
    let rows = st.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))?;
    // Later rows overwrite earlier ones: the newest failure per pair remains.
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every known (agent, group, source) as policy targets (kind unknown: "files").
pub fn known_targets(conn: &Connection) -> Result<Vec<Target>, CatalogError> {
    let agents = agents(conn)?;
    Ok(pairs(conn)?
        .into_iter()
        .filter_map(|(agent, source)| {
            let group = agents.get(&agent)?.group.clone();
            Some(Target {
                agent,
                group,
                source,
                kind: "files".into(),
            })
        })
        .collect())
}

/// Reads the facts and judges every known source at `now_ms`.
pub fn collect(
    conn: &Connection,
    now_ms: i64,
    secondary_configured: bool,
    presence: &dyn Presence,
) -> Result<FleetStatus, CatalogError> {
    let agents = agents(conn)?;
    let rows = policies::list(conn)?;
    let success = last_success(conn)?;
    let failure = last_failure(conn)?;
    let replicated: PairMap<i64> = queue::newest_replicated(conn)?
        .into_iter()
        .map(|(a, s, _, at)| ((a, s), at))
        .collect();
    let mut sources = Vec::new();
    let mut periods: BTreeMap<String, i64> = BTreeMap::new();
    for key in pairs(conn)? {
        let Some(info) = agents.get(&key.0) else {
            continue;
        };
        let effective = policy::resolve(&rows, &key.0, &info.group, &key.1, "files");
        let gap = lifeboat_common::schedule::Schedule::parse(&effective.schedule)
            .map_or(0, |s| s.longest_gap(now_ms).as_millis() as i64);
        let period = periods.entry(key.0.clone()).or_default();
        *period = (*period).max(gap);
        let facts = SourceFacts {
            agent: key.0.clone(),
            source: key.1.clone(),
            objective_ms: crate::catalog::to_i64(effective.rpo_ms),
            expected_since_ms: info.created_at,
            last_success_ms: success.get(&key).map(|s| s.0),
            last_replicated_ms: replicated.get(&key).copied(),
            secondary_configured,
            last_failure: failure.get(&key).cloned(),
        };
        sources.push(SourceStatus {
            compliance: rpo::assess(&facts, now_ms),
            last_success_ms: facts.last_success_ms,
            last_duration_ms: success.get(&key).map(|s| s.1.max(0)),
            last_seen_ms: info.last_seen,
            connected: presence.connected(&key.0),
        });
    }
    let links = agents
        .iter()
        .map(|(agent, info)| AgentLink {
            agent: agent.clone(),
            uses_control: !info.version.is_empty(),
            connected: presence.connected(agent),
            last_seen_ms: info.last_seen,
            period_ms: periods.get(agent).copied().unwrap_or_else(|| {
                lifeboat_common::schedule::Schedule::parse(policy::builtin_schedule("files"))
                    .map_or(0, |s| s.longest_gap(now_ms).as_millis() as i64)
            }),
        })
        .collect();
    Ok(FleetStatus {
        now_ms,
        secondary_configured,
        sources,
        links,
    })
}

/// Escapes a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The fleet part of `/metrics` (Prometheus text format): per (agent, source) the last success
/// time, whether the last run succeeded, the age of the newest snapshot and the objective (all
/// in seconds), whether the objective is breached; per agent whether it is connected (only when
/// a [`Presence`] knows).
pub fn prometheus_text(s: &FleetStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let per_source = |f: &dyn Fn(&SourceStatus) -> Option<String>| {
        s.sources
            .iter()
            .filter_map(|r| {
                let labels = format!(
                    "agent=\"{}\",source=\"{}\"",
                    label(&r.compliance.agent),
                    label(&r.compliance.source)
                );
                f(r).map(|v| (labels, v))
            })
            .collect::<Vec<_>>()
    };
    let secs = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
    family(
        "lifeboat_backup_last_success_timestamp_seconds",
        "Commit time of the newest restorable snapshot, per agent and source.",
        per_source(&|r| r.last_success_ms.map(secs)),
    );
    family(
        "lifeboat_backup_last_run_success",
        "1 when the last backup run of the source succeeded, 0 when it failed.",
        per_source(&|r| Some(u8::from(r.compliance.last_error.is_none()).to_string())),
    );
    family(
        "lifeboat_backup_duration_seconds",
        "How long the run of the newest restorable snapshot took, per agent and source.",
        per_source(&|r| r.last_duration_ms.map(secs)),
    );
    family(
        "lifeboat_rpo_seconds",
        "Age of the newest restorable snapshot, per agent and source (absent before the first).",
        per_source(&|r| r.compliance.age_ms.map(secs)),
    );
    family(
        "lifeboat_rpo_objective_seconds",
        "The RPO objective of the source's effective policy.",
        per_source(&|r| Some(secs(r.compliance.objective_ms))),
    );
    family(
        "lifeboat_rpo_breached",
        "1 when the source breaches its RPO objective (also before any snapshot, once the objective has passed).",
        per_source(&|r| Some(u8::from(r.compliance.state == RpoState::Breached).to_string())),
    );
    if s.secondary_configured {
        family(
            "lifeboat_rpo_replicated_seconds",
            "Age of the newest snapshot restorable from the secondary, per agent and source.",
            per_source(&|r| r.compliance.replicated_age_ms.map(secs)),
        );
    }
    let mut agents: BTreeMap<&str, bool> = BTreeMap::new();
    for r in &s.sources {
        if let Some(c) = r.connected {
            agents.insert(&r.compliance.agent, c);
        }
    }
    family(
        "lifeboat_agent_connected",
        "1 when the agent holds a control stream to this controller.",
        agents
            .into_iter()
            .map(|(a, c)| (format!("agent=\"{}\"", label(a)), u8::from(c).to_string()))
            .collect(),
    );
    out
}

/// The wire name of a state.
pub fn state_name(s: RpoState) -> &'static str {
    match s {
        RpoState::Ok => "ok",
        RpoState::AtRisk => "at_risk",
        RpoState::Breached => "breached",
    }
}

/// The status as the `FleetStatus` answer.
pub fn to_pb(s: &FleetStatus) -> pb::FleetStatusResponse {
    let sources = s
        .sources
        .iter()
        .map(|r| {
            let c = &r.compliance;
            let (replicated_age_ms, replicated_state) = match c.replicated_state {
                None => (0, String::new()),
                Some(st) => (c.replicated_age_ms.unwrap_or(-1), state_name(st).to_owned()),
            };
            pb::SourceStatus {
                agent_id: c.agent.clone(),
                source: c.source.clone(),
                last_success_unix_ms: r.last_success_ms.unwrap_or(0),
                age_ms: c.age_ms.unwrap_or(0),
                objective_ms: crate::catalog::to_u64(c.objective_ms),
                state: state_name(c.state).to_owned(),
                replicated_age_ms,
                replicated_state,
                last_error: c.last_error.clone().unwrap_or_default(),
                connected: r.connected.unwrap_or(false),
                last_seen_unix_ms: r.last_seen_ms,
            }
        })
        .collect();
    pb::FleetStatusResponse {
        sources,
        now_unix_ms: s.now_ms,
        secondary_configured: s.secondary_configured,
    }
}

#[cfg(test)]
pub(crate) mod tests;
