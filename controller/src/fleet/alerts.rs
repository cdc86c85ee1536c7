//! Alert events from successive compliance assessments.
//!
//! Each (agent, source, condition) has a *last alerted* state, persisted by the caller (the
//! catalog) and passed in. An alert fires when a condition starts firing and its last alerted
//! state was not firing; a recovery is sent only when the last alerted state was firing. So:
//! - a controller restart, which recomputes everything from the catalog, repeats nothing and
//!   never announces a recovery for a problem it did not announce;
//! - a condition first seen firing (a new controller, a host that never backed up) alerts once.

use std::collections::BTreeMap;

use serde::Serialize;

use super::rpo::{Compliance, RpoState};
use super::status::FleetStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The newest committed snapshot is older than the objective.
    RpoBreached,
    /// The newest snapshot restorable from the secondary is older than the objective.
    ReplicatedRpoBreached,
    /// The last backup run failed (including a dump that failed validation).
    BackupFailing,
    /// An agent that keeps a control stream (`lifeboat-agent run`) has been away longer than
    /// its schedule's period (keyed by agent, source "").
    Disconnected,
}

/// The persisted key: (agent, source, condition).
pub type Key = (String, String, Condition);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub agent: String,
    pub source: String,
    pub condition: Condition,
    /// True: the condition started; false: it recovered.
    pub firing: bool,
    pub detail: String,
    pub at_unix_ms: i64,
}

/// One condition of one (agent, source), firing or not, with a human detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub agent: String,
    pub source: String,
    pub condition: Condition,
    pub firing: bool,
    pub detail: String,
}

/// Every observation of a fleet status: the conditions of each source, and of each agent's
/// control-stream link. `started_ms` is when this controller started: an agent is judged
/// away only from then on, so a restart gives agents a full period to reconnect.
pub fn observe(status: &FleetStatus, started_ms: i64) -> Vec<Observation> {
    let mut out: Vec<Observation> = status
        .sources
        .iter()
        .flat_map(|s| source_observations(&s.compliance))
        .collect();
    for l in status.links.iter().filter(|l| l.uses_control) {
        let away = status.now_ms - l.last_seen_ms.max(started_ms);
        let firing = l.connected == Some(false) && away > l.period_ms;
        out.push(Observation {
            agent: l.agent.clone(),
            source: String::new(),
            condition: Condition::Disconnected,
            firing,
            detail: format!(
                "control stream {} (last seen {}s ago; schedule period {}s)",
                if l.connected == Some(true) {
                    "connected"
                } else {
                    "not connected"
                },
                (status.now_ms - l.last_seen_ms).max(0) / 1000,
                l.period_ms / 1000
            ),
        });
    }
    out
}

/// The observations of one source's assessment.
pub fn source_observations(c: &Compliance) -> Vec<Observation> {
    conditions(c)
        .into_iter()
        .map(|(condition, firing, detail)| Observation {
            agent: c.agent.clone(),
            source: c.source.clone(),
            condition,
            firing,
            detail,
        })
        .collect()
}

/// The conditions one assessment shows, each firing or not, with a human detail.
pub fn conditions(c: &Compliance) -> Vec<(Condition, bool, String)> {
    let age = |a: Option<i64>| match a {
        Some(ms) => format!("newest snapshot is {}s old", ms / 1000),
        None => "no snapshot yet".to_owned(),
    };
    let objective = c.objective_ms / 1000;
    let mut out = vec![(
        Condition::RpoBreached,
        c.state == RpoState::Breached,
        format!("{} (objective {objective}s)", age(c.age_ms)),
    )];
    if let Some(s) = c.replicated_state {
        out.push((
            Condition::ReplicatedRpoBreached,
            s == RpoState::Breached,
            format!(
                "secondary: {} (objective {objective}s)",
                age(c.replicated_age_ms)
            ),
        ));
    }
    out.push((
        Condition::BackupFailing,
        c.last_error.is_some(),
        c.last_error
            .clone()
            .unwrap_or_else(|| "last backup succeeded".into()),
    ));
    out
}

/// Compares `observations` with the last alerted states; returns the alerts to send and the
/// states to persist (keys no longer observed are dropped).
pub fn evaluate(
    last: &BTreeMap<Key, bool>,
    observations: &[Observation],
    now_ms: i64,
) -> (Vec<Alert>, BTreeMap<Key, bool>) {
    let mut alerts = Vec::new();
    let mut next = BTreeMap::new();
    for o in observations {
        let key = (o.agent.clone(), o.source.clone(), o.condition);
        let was = last.get(&key).copied().unwrap_or(false);
        if o.firing != was {
            alerts.push(Alert {
                agent: o.agent.clone(),
                source: o.source.clone(),
                condition: o.condition,
                firing: o.firing,
                detail: o.detail.clone(),
                at_unix_ms: now_ms,
            });
        }
        next.insert(key, o.firing);
    }
    (alerts, next)
}

#[cfg(test)]
mod tests {
    use super::super::rpo::{SourceFacts, assess};
    use super::*;

    const MIN: i64 = 60_000;

    fn facts(last_success: Option<i64>) -> SourceFacts {
        SourceFacts {
            agent: "db-01".into(),
            source: "db".into(),
            objective_ms: 15 * MIN,
            expected_since_ms: 0,
            last_success_ms: last_success,
            last_replicated_ms: None,
            secondary_configured: false,
            last_failure: None,
        }
    }

    fn fired(a: &[Alert]) -> Vec<(Condition, bool)> {
        a.iter().map(|a| (a.condition, a.firing)).collect()
    }

    #[test]
    fn breach_then_recovery_each_alert_once() {
        let mut state = BTreeMap::new();
        let mut run = |f: &SourceFacts, now: i64| {
            let (alerts, next) = evaluate(&state, &source_observations(&assess(f, now)), now);
            state = next;
            fired(&alerts)
        };
        assert_eq!(run(&facts(Some(0)), 10 * MIN), vec![], "healthy: silent");
        assert_eq!(
            run(&facts(Some(0)), 16 * MIN),
            vec![(Condition::RpoBreached, true)]
        );
        assert_eq!(run(&facts(Some(0)), 30 * MIN), vec![], "no repeat");
        assert_eq!(
            run(&facts(Some(31 * MIN)), 32 * MIN),
            vec![(Condition::RpoBreached, false)],
            "recovery once"
        );
        assert_eq!(run(&facts(Some(31 * MIN)), 33 * MIN), vec![]);
    }

    #[test]
    fn a_restart_repeats_nothing_and_invents_no_recovery() {
        // Persisted: breached. After a restart the same facts give no alert.
        let key = ("db-01".to_owned(), "db".to_owned(), Condition::RpoBreached);
        let last = BTreeMap::from([(key.clone(), true)]);
        let (alerts, _) = evaluate(
            &last,
            &source_observations(&assess(&facts(Some(0)), 20 * MIN)),
            20 * MIN,
        );
        assert!(alerts.is_empty(), "{alerts:?}");
        // Nothing persisted (new controller) and healthy: no "recovered" noise.
        let (alerts, next) = evaluate(
            &BTreeMap::new(),
            &source_observations(&assess(&facts(Some(0)), MIN)),
            MIN,
        );
        assert!(alerts.is_empty(), "{alerts:?}");
        assert_eq!(next.get(&key), Some(&false));
    }

    #[test]
    fn a_failed_backup_alerts_and_recovers_with_its_reason() {
        let mut f = facts(Some(0));
        f.last_failure = Some((5 * MIN, "dump is empty while poc_db has 3 rows".into()));
        let (alerts, state) = evaluate(
            &BTreeMap::new(),
            &source_observations(&assess(&f, 6 * MIN)),
            6 * MIN,
        );
        assert_eq!(fired(&alerts), vec![(Condition::BackupFailing, true)]);
        assert!(alerts[0].detail.contains("dump is empty"), "{alerts:?}");
        f.last_success_ms = Some(7 * MIN);
        let (alerts, _) = evaluate(&state, &source_observations(&assess(&f, 8 * MIN)), 8 * MIN);
        assert_eq!(fired(&alerts), vec![(Condition::BackupFailing, false)]);
    }

    #[test]
    fn an_agent_away_longer_than_its_period_is_disconnected_once_and_recovers() {
        use super::super::status::AgentLink;
        let link = |connected, last_seen_ms| AgentLink {
            agent: "web-01".into(),
            uses_control: true,
            connected: Some(connected),
            last_seen_ms,
            period_ms: 10 * MIN,
        };
        let status = |now_ms, links| FleetStatus {
            now_ms,
            secondary_configured: false,
            sources: vec![],
            links,
        };
        let started = 0;
        // Away 5 min of a 10 min period: not yet.
        let (a, st) = evaluate(
            &BTreeMap::new(),
            &observe(&status(15 * MIN, vec![link(false, 10 * MIN)]), started),
            15 * MIN,
        );
        assert!(a.is_empty(), "{a:?}");
        let (a, st) = evaluate(
            &st,
            &observe(&status(21 * MIN, vec![link(false, 10 * MIN)]), started),
            21 * MIN,
        );
        assert_eq!(fired(&a), vec![(Condition::Disconnected, true)]);
        assert_eq!(a[0].source, "");
        // A controller that started 2 min ago gives the agent a full period again.
        let (a, _) = evaluate(
            &BTreeMap::new(),
            &observe(&status(21 * MIN, vec![link(false, 10 * MIN)]), 19 * MIN),
            21 * MIN,
        );
        assert!(a.is_empty(), "{a:?}");
        // Back: recovered once. An agent that never used a control stream is never judged.
        let (a, _) = evaluate(
            &st,
            &observe(&status(22 * MIN, vec![link(true, 22 * MIN)]), started),
            22 * MIN,
        );
        assert_eq!(fired(&a), vec![(Condition::Disconnected, false)]);
        let mut cli_only = link(false, 0);
        cli_only.uses_control = false;
        assert!(observe(&status(99 * MIN, vec![cli_only]), started).is_empty());
    }
}
