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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The newest committed snapshot is older than the objective.
    RpoBreached,
    /// The newest snapshot restorable from the secondary is older than the objective.
    ReplicatedRpoBreached,
    /// The last backup run failed (including a dump that failed validation).
    BackupFailing,
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

/// Compares `assessments` with the last alerted states; returns the alerts to send and the
/// states to persist (keys of sources no longer assessed are dropped).
pub fn evaluate(
    last: &BTreeMap<Key, bool>,
    assessments: &[Compliance],
    now_ms: i64,
) -> (Vec<Alert>, BTreeMap<Key, bool>) {
    let mut alerts = Vec::new();
    let mut next = BTreeMap::new();
    for c in assessments {
        for (condition, firing, detail) in conditions(c) {
            let key = (c.agent.clone(), c.source.clone(), condition);
            let was = last.get(&key).copied().unwrap_or(false);
            if firing != was {
                alerts.push(Alert {
                    agent: c.agent.clone(),
                    source: c.source.clone(),
                    condition,
                    firing,
                    detail,
                    at_unix_ms: now_ms,
                });
            }
            next.insert(key, firing);
        }
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
            let (alerts, next) = evaluate(&state, &[assess(f, now)], now);
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
        let (alerts, _) = evaluate(&last, &[assess(&facts(Some(0)), 20 * MIN)], 20 * MIN);
        assert!(alerts.is_empty(), "{alerts:?}");
        // Nothing persisted (new controller) and healthy: no "recovered" noise.
        let (alerts, next) = evaluate(&BTreeMap::new(), &[assess(&facts(Some(0)), MIN)], MIN);
        assert!(alerts.is_empty(), "{alerts:?}");
        assert_eq!(next.get(&key), Some(&false));
    }

    #[test]
    fn a_failed_backup_alerts_and_recovers_with_its_reason() {
        let mut f = facts(Some(0));
        f.last_failure = Some((5 * MIN, "dump is empty while poc_db has 3 rows".into()));
        let (alerts, state) = evaluate(&BTreeMap::new(), &[assess(&f, 6 * MIN)], 6 * MIN);
        assert_eq!(fired(&alerts), vec![(Condition::BackupFailing, true)]);
        assert!(alerts[0].detail.contains("dump is empty"), "{alerts:?}");
        f.last_success_ms = Some(7 * MIN);
        let (alerts, _) = evaluate(&state, &[assess(&f, 8 * MIN)], 8 * MIN);
        assert_eq!(fired(&alerts), vec![(Condition::BackupFailing, false)]);
    }
}
