//! Policy resolution: which schedule, RPO objective, bandwidth limit and niceness apply to one
//! source of one agent.
//!
//! Each field resolves on its own, from the most specific stored row that sets it:
//! agent+source > agent > group+source > group > default+source > default > built-in. The
//! built-in policy derives from the user's RPO of 15 minutes: a schedule well inside it
//! (`every 5m` for MySQL, `every 10m` for files and nginx), so that one late or failed run does
//! not breach the objective; no bandwidth limit; niceness 10.
//!
//! Validation ([`check_row`], [`gap_violations`]) refuses what cannot work: an unparsable
//! schedule, a niceness outside 0-19, a zero objective, and (unless forced) a schedule whose
//! longest gap exceeds the objective it resolves with — such a source would breach by design.

use std::time::Duration;

use lifeboat_common::schedule::Schedule;
use lifeboat_proto::v1 as pb;
use rusqlite::Connection;
use thiserror::Error;

use crate::catalog::CatalogError;
use crate::catalog::policies::{self, PolicyRow};

/// The built-in RPO objective.
pub const DEFAULT_RPO: Duration = Duration::from_secs(15 * 60);
/// The built-in schedule of database sources.
pub const DEFAULT_MYSQL_SCHEDULE: &str = "every 5m";
/// The built-in schedule of file and nginx sources.
pub const DEFAULT_FILES_SCHEDULE: &str = "every 10m";
/// The built-in CPU niceness of a backup.
pub const DEFAULT_NICE: i32 = 10;

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("invalid policy scope {0:?}: expected \"default\", \"group:NAME\" or \"agent:ID\"")]
    Scope(String),
    #[error(transparent)]
    Schedule(#[from] lifeboat_common::schedule::ScheduleError),
    #[error("invalid niceness {0}: expected 0 to 19")]
    Nice(i32),
    #[error("invalid RPO objective: it must be at least 1s")]
    Rpo,
    #[error(
        "the schedule would breach the RPO objective by design: {}; shorten the schedule, raise --rpo, or pass --force",
        .0.join("; ")
    )]
    GapExceedsRpo(Vec<String>),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Where a stored policy applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Default,
    Group(String),
    Agent(String),
}

impl Scope {
    pub fn parse(s: &str) -> Result<Scope, PolicyError> {
        let named = |rest: &str| {
            let ok = !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            ok.then(|| rest.to_owned())
                .ok_or_else(|| PolicyError::Scope(s.to_owned()))
        };
        match s.split_once(':') {
            None if s == "default" => Ok(Scope::Default),
            Some(("group", g)) => named(g).map(Scope::Group),
            Some(("agent", a)) => lifeboat_common::ids::AgentId::new(a)
                .map(|id| Scope::Agent(id.as_str().to_owned()))
                .map_err(|_| PolicyError::Scope(s.to_owned())),
            _ => Err(PolicyError::Scope(s.to_owned())),
        }
    }

    /// Specificity rank: higher wins (the source-specific row of a scope ranks above it).
    fn rank(&self, agent: &str, group: &str) -> Option<u8> {
        match self {
            Scope::Agent(a) if a == agent => Some(4),
            Scope::Group(g) if g == group => Some(2),
            Scope::Default => Some(0),
            _ => None,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Default => f.write_str("default"),
            Scope::Group(g) => write!(f, "group:{g}"),
            Scope::Agent(a) => write!(f, "agent:{a}"),
        }
    }
}

/// The built-in schedule of a source kind ("mysql" or anything else).
pub fn builtin_schedule(kind: &str) -> &'static str {
    if kind == "mysql" {
        DEFAULT_MYSQL_SCHEDULE
    } else {
        DEFAULT_FILES_SCHEDULE
    }
}

/// The rows that apply to (agent, group, source), most specific first.
fn applicable<'a>(
    rows: &'a [PolicyRow],
    agent: &str,
    group: &str,
    source: &str,
) -> Vec<&'a PolicyRow> {
    let mut ranked: Vec<(u8, &PolicyRow)> = rows
        .iter()
        .filter_map(|r| {
            let base = Scope::parse(&r.scope).ok()?.rank(agent, group)?;
            match r.source.as_str() {
                "" => Some((base, r)),
                s if s == source => Some((base + 1, r)),
                _ => None,
            }
        })
        .collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
    ranked.into_iter().map(|(_, r)| r).collect()
}

/// The effective policy of one source (pure: `rows` is every stored policy).
pub fn resolve(
    rows: &[PolicyRow],
    agent: &str,
    group: &str,
    source: &str,
    kind: &str,
) -> pb::SourcePolicy {
    let apply = applicable(rows, agent, group, source);
    let first = |f: &dyn Fn(&PolicyRow) -> Option<i64>| apply.iter().find_map(|r| f(r));
    pb::SourcePolicy {
        source: source.to_owned(),
        schedule: apply
            .iter()
            .find_map(|r| r.schedule.clone())
            .unwrap_or_else(|| builtin_schedule(kind).to_owned()),
        rpo_ms: first(&|r| r.rpo_ms)
            .map(crate::catalog::to_u64)
            .unwrap_or(DEFAULT_RPO.as_millis() as u64),
        bandwidth_bytes_per_sec: first(&|r| r.bandwidth).map_or(0, crate::catalog::to_u64),
        nice: apply.iter().find_map(|r| r.nice).unwrap_or(DEFAULT_NICE),
    }
}

/// The effective policy of each of `agent`'s `sources` (name, kind), in the given order.
/// Used by the control stream to push an agent its policy.
pub fn effective_for(
    conn: &Connection,
    agent: &str,
    group: &str,
    sources: &[(String, String)],
) -> Result<Vec<pb::SourcePolicy>, CatalogError> {
    let rows = policies::list(conn)?;
    Ok(sources
        .iter()
        .map(|(name, kind)| resolve(&rows, agent, group, name, kind))
        .collect())
}

/// Checks one row on its own: scope, schedule syntax, niceness, objective.
pub fn check_row(row: &PolicyRow) -> Result<(), PolicyError> {
    Scope::parse(&row.scope)?;
    if let Some(s) = &row.schedule {
        Schedule::parse(s)?;
    }
    if let Some(n) = row.nice
        && !(0..=19).contains(&n)
    {
        return Err(PolicyError::Nice(n));
    }
    if row.rpo_ms.is_some_and(|r| r < 1000) {
        return Err(PolicyError::Rpo);
    }
    Ok(())
}

/// One (agent, group, source, kind) a policy change may affect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub agent: String,
    pub group: String,
    pub source: String,
    pub kind: String,
}

/// The targets whose resolved schedule has a longest gap above their resolved objective, as
/// human descriptions. `now_ms` anchors the cron gap measurement.
pub fn gap_violations(rows: &[PolicyRow], targets: &[Target], now_ms: i64) -> Vec<String> {
    let mut out = Vec::new();
    for t in targets {
        let p = resolve(rows, &t.agent, &t.group, &t.source, &t.kind);
        let Ok(schedule) = Schedule::parse(&p.schedule) else {
            continue;
        };
        let gap = schedule.longest_gap(now_ms);
        if gap.as_millis() > u128::from(p.rpo_ms) {
            let who = match (t.agent.as_str(), t.source.as_str()) {
                ("", "") => "the scope".to_owned(),
                ("", s) => format!("source {s}"),
                (a, "") => format!("agent {a}"),
                (a, s) => format!("{a}/{s}"),
            };
            out.push(format!(
                "{who}: {:?} leaves gaps of {}s, objective {}s",
                p.schedule,
                gap.as_secs(),
                p.rpo_ms / 1000
            ));
        }
    }
    out
}

/// The targets a new row of `scope` must be checked against: the scope itself (with both
/// built-in kinds) plus every known (agent, group, source) it covers.
pub fn targets_for(row: &PolicyRow, known: &[Target]) -> Vec<Target> {
    let scope = Scope::parse(&row.scope).unwrap_or(Scope::Default);
    let (agent, group) = match &scope {
        Scope::Agent(a) => (a.clone(), String::new()),
        Scope::Group(g) => (String::new(), g.clone()),
        Scope::Default => (String::new(), String::new()),
    };
    let mut out: Vec<Target> = ["files", "mysql"]
        .iter()
        .map(|k| Target {
            agent: agent.clone(),
            group: group.clone(),
            source: row.source.clone(),
            kind: (*k).to_owned(),
        })
        .collect();
    out.extend(
        known
            .iter()
            .filter(|t| {
                scope.rank(&t.agent, &t.group).is_some()
                    && (row.source.is_empty() || row.source == t.source)
            })
            .cloned(),
    );
    out
}

/// A stored row as the wire message.
pub fn to_pb(r: &PolicyRow) -> pb::Policy {
    pb::Policy {
        scope: r.scope.clone(),
        source: r.source.clone(),
        schedule: r.schedule.clone(),
        rpo_ms: r.rpo_ms.map(crate::catalog::to_u64),
        bandwidth_bytes_per_sec: r.bandwidth.map(crate::catalog::to_u64),
        nice: r.nice,
        updated_at_unix_ms: r.updated_at,
    }
}

/// A wire policy as a row stamped `now`; the schedule is stored in its canonical form.
pub fn from_pb(p: &pb::Policy, now: i64) -> Result<PolicyRow, PolicyError> {
    let schedule = match &p.schedule {
        Some(s) => Some(Schedule::parse(s)?.to_string()),
        None => None,
    };
    let row = PolicyRow {
        scope: p.scope.trim().to_owned(),
        source: p.source.trim().to_owned(),
        schedule,
        rpo_ms: p.rpo_ms.map(crate::catalog::to_i64),
        bandwidth: p.bandwidth_bytes_per_sec.map(crate::catalog::to_i64),
        nice: p.nice,
        updated_at: now,
    };
    check_row(&row)?;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scope: &str, source: &str) -> PolicyRow {
        PolicyRow {
            scope: scope.into(),
            source: source.into(),
            ..Default::default()
        }
    }

    #[test]
    fn builtin_policy_fits_the_default_objective() {
        let db = resolve(&[], "web-01", "web", "db", "mysql");
        assert_eq!(db.schedule, "every 5m");
        assert_eq!(db.rpo_ms, 900_000);
        assert_eq!((db.bandwidth_bytes_per_sec, db.nice), (0, 10));
        assert_eq!(
            resolve(&[], "web-01", "web", "www", "nginx").schedule,
            "every 10m"
        );
        assert_eq!(
            resolve(&[], "web-01", "web", "etc", "files").schedule,
            "every 10m"
        );
    }

    #[test]
    fn each_field_resolves_from_the_most_specific_row() {
        let rows = vec![
            PolicyRow {
                rpo_ms: Some(3_600_000),
                nice: Some(5),
                ..row("default", "")
            },
            PolicyRow {
                schedule: Some("every 30m".into()),
                ..row("default", "db")
            },
            PolicyRow {
                bandwidth: Some(1000),
                ..row("group:web", "")
            },
            PolicyRow {
                schedule: Some("every 20m".into()),
                ..row("group:web", "db")
            },
            PolicyRow {
                nice: Some(19),
                ..row("agent:web-01", "")
            },
            PolicyRow {
                rpo_ms: Some(60_000),
                ..row("agent:web-01", "db")
            },
            PolicyRow {
                rpo_ms: Some(1),
                ..row("agent:other", "")
            },
        ];
        let p = resolve(&rows, "web-01", "web", "db", "mysql");
        assert_eq!(p.rpo_ms, 60_000, "agent+source");
        assert_eq!(p.nice, 19, "agent");
        assert_eq!(p.schedule, "every 20m", "group+source beats default+source");
        assert_eq!(p.bandwidth_bytes_per_sec, 1000, "group");
        let q = resolve(&rows, "web-02", "db", "db", "mysql");
        assert_eq!(q.schedule, "every 30m", "default+source");
        assert_eq!(
            (q.rpo_ms, q.nice, q.bandwidth_bytes_per_sec),
            (3_600_000, 5, 0)
        );
        let r = resolve(&rows, "web-02", "db", "etc", "files");
        assert_eq!(r.schedule, "every 10m", "built-in for an unnamed source");
    }

    #[test]
    fn validation_refuses_bad_fields_and_names_the_gap() {
        assert!(matches!(
            Scope::parse("groups:x"),
            Err(PolicyError::Scope(_))
        ));
        assert!(matches!(Scope::parse("agent:"), Err(PolicyError::Scope(_))));
        assert!(matches!(
            Scope::parse("agent:Web/01"),
            Err(PolicyError::Scope(_))
        ));
        assert_eq!(
            Scope::parse("agent:web-01").expect("ok"),
            Scope::Agent("web-01".into())
        );
        assert_eq!(
            Scope::parse("group:db").expect("ok").to_string(),
            "group:db"
        );
        let bad = pb::Policy {
            scope: "default".into(),
            schedule: Some("every banana".into()),
            ..Default::default()
        };
        assert!(matches!(from_pb(&bad, 0), Err(PolicyError::Schedule(_))));
        let nice = pb::Policy {
            scope: "default".into(),
            nice: Some(20),
            ..Default::default()
        };
        assert!(matches!(from_pb(&nice, 0), Err(PolicyError::Nice(20))));
        let slow = from_pb(
            &pb::Policy {
                scope: "group:web".into(),
                schedule: Some("every 1h".into()),
                ..Default::default()
            },
            0,
        )
        .expect("syntax is fine");
        let known = vec![Target {
            agent: "web-01".into(),
            group: "web".into(),
            source: "www".into(),
            kind: "nginx".into(),
        }];
        let targets = targets_for(&slow, &known);
        assert_eq!(
            targets.len(),
            3,
            "the scope (two kinds) and the known source"
        );
        let v = gap_violations(std::slice::from_ref(&slow), &targets, 0);
        assert!(
            v.iter()
                .any(|m| m.contains("web-01/www") && m.contains("3600s")),
            "{v:?}"
        );
        let relaxed = PolicyRow {
            rpo_ms: Some(2 * 3_600_000),
            ..slow
        };
        assert!(gap_violations(&[relaxed], &targets, 0).is_empty());
    }

    #[test]
    fn policy_registry_objects_replay_into_a_rebuilt_catalog() {
        use crate::registry::Pending;
        use crate::registry::replay::{Collected, parse};
        let old = PolicyRow {
            rpo_ms: Some(600_000),
            updated_at: 10,
            ..row("group:db", "")
        };
        let new = PolicyRow {
            schedule: Some("every 2m".into()),
            updated_at: 20,
            ..old.clone()
        };
        let mut c = Collected::default();
        // Listing order is key order, not time order: the newer object first.
        for (row, at) in [(&new, 20), (&old, 10)] {
            let p = Pending::policy(row, at);
            assert!(p.key.starts_with("registry/policies/"), "{}", p.key);
            c.add(&p.key, parse(&p.key, &p.bytes).expect("parses"));
        }
        let fleet = c.replay();
        let cat = crate::catalog::Catalog::open_in_memory().expect("open");
        let applied = cat.run_blocking(|conn| fleet.apply(conn)).expect("apply");
        assert_eq!(
            applied.policies, 1,
            "the older event does not replace the newer"
        );
        let rows = cat.run_blocking(|conn| policies::list(conn)).expect("list");
        assert_eq!(rows, vec![new]);
    }
}
