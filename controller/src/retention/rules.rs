//! The keep rules engine: pure, no I/O, no clock.
//!
//! Semantics (restic's, documented in docs/retention.md):
//! - Snapshots of one group (agent, source) are walked newest first; "newest" means the larger
//!   `time_ms` (the controller's commit time), and on equal times the larger id.
//! - `keep-last N` keeps the N newest snapshots.
//! - `keep-hourly/daily/weekly/monthly/yearly N` keeps, for each of the last N distinct UTC
//!   periods that hold a snapshot, the newest snapshot of that period (weeks are ISO weeks).
//!   Periods without a snapshot do not count against N.
//! - `keep-within D` keeps every snapshot whose time is at or after (newest − D), where newest
//!   is the group's newest snapshot — not the wall clock, so a group whose backups stopped is
//!   never emptied by the passage of time.
//! - The group's newest snapshot is always kept ("newest").
//! - A damaged snapshot (its reference set names chunks that no pack holds) never counts as a
//!   kept copy: it does not use up a slot of any rule nor keep a period, so the next intact one
//!   does. It is removed unless it is the group's newest.
//! - Rules with nothing set keep everything ("all"); callers refuse that unless asked.

use std::fmt;

use super::period::Period;

/// Retention rules; zero / `None` means the rule is not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep everything within this many ms before the group's newest snapshot.
    pub within_ms: Option<u64>,
}

impl Rules {
    /// No rule is set: such rules keep every snapshot.
    pub fn is_empty(&self) -> bool {
        *self == Rules::default()
    }
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Last,
    /// A period rule, with the label of the period it keeps (`2025-W24`).
    Period(Period, String),
    Within,
    Newest,
    /// No rule was given: everything is kept.
    All,
}

impl Reason {
    /// The rule's name: `last`, `hourly`, `daily`, `weekly`, `monthly`, `yearly`, `within`,
    /// `newest`, `all`.
    pub fn rule(&self) -> &'static str {
        match self {
            Reason::Last => "last",
            Reason::Period(p, _) => period_rule(*p),
            Reason::Within => "within",
            Reason::Newest => "newest",
            Reason::All => "all",
        }
    }
}

fn period_rule(p: Period) -> &'static str {
    match p {
        Period::Hour => "hourly",
        Period::Day => "daily",
        Period::Week => "weekly",
        Period::Month => "monthly",
        Period::Year => "yearly",
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Period(_, label) => write!(f, "{} {label}", self.rule()),
            _ => f.write_str(self.rule()),
        }
    }
}

/// One snapshot as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub time_ms: i64,
    pub damaged: bool,
}

/// The engine's verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub time_ms: i64,
    pub damaged: bool,
    pub keep: bool,
    /// Every rule that keeps it (empty when removed), in rule order.
    pub reasons: Vec<Reason>,
}

/// A period rule's state while walking: slots left and the last period kept.
struct Bucket {
    period: Period,
    left: u32,
    last: Option<i64>,
}

/// Decides keep/remove for one group's snapshots; the result is newest first.
pub fn plan(rules: &Rules, snapshots: &[Candidate]) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = snapshots.iter().collect();
    sorted.sort_by(|a, b| b.time_ms.cmp(&a.time_ms).then_with(|| b.id.cmp(&a.id)));
    let newest_time = sorted.first().map(|c| c.time_ms);
    let mut last_left = rules.last;
    let mut buckets: Vec<Bucket> = [
        (Period::Hour, rules.hourly),
        (Period::Day, rules.daily),
        (Period::Week, rules.weekly),
        (Period::Month, rules.monthly),
        (Period::Year, rules.yearly),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(period, left)| Bucket {
        period,
        left,
        last: None,
    })
    .collect();
    let empty = rules.is_empty();
    let mut out = Vec::with_capacity(sorted.len());
    for (i, c) in sorted.into_iter().enumerate() {
        let mut reasons = Vec::new();
        if empty {
            reasons.push(Reason::All);
        } else if !c.damaged {
            if last_left > 0 {
                last_left -= 1;
                reasons.push(Reason::Last);
            }
            for b in buckets.iter_mut().filter(|b| b.left > 0) {
                let key = b.period.key(c.time_ms);
                if b.last != Some(key) {
                    b.last = Some(key);
                    b.left -= 1;
                    reasons.push(Reason::Period(b.period, b.period.label(c.time_ms)));
                }
            }
            if let (Some(w), Some(newest)) = (rules.within_ms, newest_time) {
                let w = i64::try_from(w).unwrap_or(i64::MAX);
                if c.time_ms >= newest.saturating_sub(w) {
                    reasons.push(Reason::Within);
                }
            }
        }
        if i == 0 && !empty {
            reasons.push(Reason::Newest);
        }
        out.push(Decision {
            id: c.id.clone(),
            time_ms: c.time_ms,
            damaged: c.damaged,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}
