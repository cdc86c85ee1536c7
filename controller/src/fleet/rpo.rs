//! RPO compliance of one (agent, source), computed from catalog facts and a clock.
//!
//! The age that counts is that of the newest *committed* snapshot (a failed or running backup
//! protects nothing). Before the first success, the age runs from when the source was first
//! expected to back up (the agent's enrollment or the policy's creation), so a host that never
//! backs up breaches after one objective instead of never appearing at all — the silent
//! failure the issue describes (PBS, Borg, Kopia fleets stalled for months).
//!
//! With a secondary store, the same is computed for the newest snapshot restorable from the
//! secondary: that is the RPO that survives the loss of the primary region.

use serde::Serialize;

/// What the catalog knows about one (agent, source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFacts {
    pub agent: String,
    pub source: String,
    /// The RPO objective in ms (from the policy; 15 minutes by default).
    pub objective_ms: i64,
    /// When this source was first expected to have a backup (enrollment, policy creation).
    pub expected_since_ms: i64,
    pub last_success_ms: Option<i64>,
    /// Newest snapshot whose objects are all in the secondary; `None` also when none is.
    pub last_replicated_ms: Option<i64>,
    pub secondary_configured: bool,
    /// The newest failure reported after the last success (time, reason).
    pub last_failure: Option<(i64, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RpoState {
    /// The newest restorable copy is younger than the objective.
    Ok,
    /// Within the objective, but the last run failed: the next miss breaches.
    AtRisk,
    /// Older than the objective (or never backed up for longer than the objective).
    Breached,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Compliance {
    pub agent: String,
    pub source: String,
    pub objective_ms: i64,
    /// Age of the newest committed snapshot; `None` before the first one.
    pub age_ms: Option<i64>,
    pub state: RpoState,
    /// Age of the newest snapshot restorable from the secondary (`None`: none, or no secondary).
    pub replicated_age_ms: Option<i64>,
    /// `None` without a secondary.
    pub replicated_state: Option<RpoState>,
    pub last_error: Option<String>,
}

/// Judges one source at `now_ms`.
pub fn assess(f: &SourceFacts, now_ms: i64) -> Compliance {
    let age = f.last_success_ms.map(|t| (now_ms - t).max(0));
    let exposure = age.unwrap_or((now_ms - f.expected_since_ms).max(0));
    let failing = f
        .last_failure
        .as_ref()
        .filter(|(at, _)| f.last_success_ms.is_none_or(|s| *at > s));
    let state = judge(exposure, f.objective_ms, failing.is_some());
    let (replicated_age_ms, replicated_state) = if f.secondary_configured {
        let age = f.last_replicated_ms.map(|t| (now_ms - t).max(0));
        let exposure = age.unwrap_or((now_ms - f.expected_since_ms).max(0));
        (age, Some(judge(exposure, f.objective_ms, false)))
    } else {
        (None, None)
    };
    Compliance {
        agent: f.agent.clone(),
        source: f.source.clone(),
        objective_ms: f.objective_ms,
        age_ms: age,
        state,
        replicated_age_ms,
        replicated_state,
        last_error: failing.map(|(_, why)| why.clone()),
    }
}

fn judge(exposure_ms: i64, objective_ms: i64, failing: bool) -> RpoState {
    if exposure_ms > objective_ms {
        RpoState::Breached
    } else if failing {
        RpoState::AtRisk
    } else {
        RpoState::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn facts() -> SourceFacts {
        SourceFacts {
            agent: "web-01".into(),
            source: "db".into(),
            objective_ms: 15 * MIN,
            expected_since_ms: 0,
            last_success_ms: None,
            last_replicated_ms: None,
            secondary_configured: false,
            last_failure: None,
        }
    }

    #[test]
    fn a_host_that_never_backs_up_breaches_after_one_objective() {
        let f = facts();
        assert_eq!(assess(&f, 10 * MIN).state, RpoState::Ok);
        let c = assess(&f, 16 * MIN);
        assert_eq!(c.state, RpoState::Breached);
        assert_eq!(c.age_ms, None, "no snapshot: no age, but a breach");
    }

    #[test]
    fn age_counts_from_the_last_success_and_a_failure_puts_it_at_risk() {
        let mut f = facts();
        f.last_success_ms = Some(100 * MIN);
        let c = assess(&f, 110 * MIN);
        assert_eq!((c.state, c.age_ms), (RpoState::Ok, Some(10 * MIN)));
        f.last_failure = Some((105 * MIN, "dump exited with status 2".into()));
        let c = assess(&f, 110 * MIN);
        assert_eq!(c.state, RpoState::AtRisk);
        assert_eq!(c.last_error.as_deref(), Some("dump exited with status 2"));
        assert_eq!(assess(&f, 116 * MIN).state, RpoState::Breached);
        // A failure older than the last success is history, not a risk.
        f.last_failure = Some((90 * MIN, "old".into()));
        assert_eq!(assess(&f, 110 * MIN).state, RpoState::Ok);
        assert_eq!(assess(&f, 110 * MIN).last_error, None);
    }

    #[test]
    fn the_secondary_has_its_own_age() {
        let mut f = facts();
        f.secondary_configured = true;
        f.last_success_ms = Some(100 * MIN);
        f.last_replicated_ms = Some(80 * MIN);
        let c = assess(&f, 101 * MIN);
        assert_eq!(c.state, RpoState::Ok);
        assert_eq!(c.replicated_age_ms, Some(21 * MIN));
        assert_eq!(c.replicated_state, Some(RpoState::Breached));
        f.secondary_configured = false;
        assert_eq!(assess(&f, 101 * MIN).replicated_state, None);
    }
}
