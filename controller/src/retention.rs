//! Retention: which snapshots to keep, and forgetting the rest.
//!
//! The rules engine ([`rules`]) is pure: given one group's snapshots (agent, source) it decides
//! keep/remove and says which rules keep each one. [`apply`] runs it over the catalog and, unless
//! it is a dry run, marks the removed snapshots forgotten (`snapshots.forgotten_at`) in one
//! transaction. It is reached two ways: the admin-only `Forget` RPC (`lifeboatctl forget`) and
//! the `[retention]` worker ([`worker`]) that applies the configured default rules on a schedule.
//!
//! Invariants:
//! - Forgetting deletes nothing. A forgotten snapshot disappears at once from listings,
//!   "latest", lookups and ReadChunks authorization; its rows and objects stay until GC (a later
//!   step) frees whatever no live snapshot references.
//! - Agents can never forget: the RPC is on AdminService and requires the admin certificate.
//! - The group's newest snapshot is always kept, and rules with nothing set keep everything, so
//!   neither an empty rule set nor a typo can empty a group.
//! - Times are the controller's commit times (its own clock), never the agent's, so an agent
//!   cannot push its other snapshots out of a retention window by lying about the time.
//! - The plan and the update run under the catalog's single writer lock, so a snapshot
//!   committed concurrently is either planned or untouched, never forgotten unseen.

pub mod period;
pub mod rpc;
pub mod rules;
pub mod worker;

#[cfg(test)]
mod tests;

use rusqlite::Connection;

use crate::catalog::CatalogError;
use crate::catalog::snapshots::{self, RetentionRow};
use rules::{Candidate, Decision, Rules};

/// The plan for one (agent, source) group, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    pub agent: String,
    pub source: String,
    pub decisions: Vec<Decision>,
}

impl GroupPlan {
    /// Ids this plan removes.
    pub fn removed(&self) -> impl Iterator<Item = &str> {
        self.decisions
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.id.as_str())
    }
}

/// What [`apply`] computed and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub groups: Vec<GroupPlan>,
    /// Snapshots marked forgotten (0 on a dry run).
    pub forgotten: u64,
}

/// Groups live snapshots (ordered by agent, source) into plans.
pub fn plan_groups(rows: &[RetentionRow], rules: &Rules) -> Vec<GroupPlan> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let (agent, source) = (&rows[start].agent, &rows[start].source);
        let end = rows[start..]
            .iter()
            .position(|r| &r.agent != agent || &r.source != source)
            .map_or(rows.len(), |n| start + n);
        let candidates: Vec<Candidate> = rows[start..end]
            .iter()
            .map(|r| Candidate {
                id: r.id.clone(),
                time_ms: r.committed_at,
                damaged: r.damaged,
            })
            .collect();
        groups.push(GroupPlan {
            agent: agent.clone(),
            source: source.clone(),
            decisions: rules::plan(rules, &candidates),
        });
        start = end;
    }
    groups
}

/// Plans retention for the live snapshots of `agent`/`source` (None: all) and, unless
/// `dry_run`, forgets the removed ones at `now` in one transaction.
pub fn apply(
    conn: &mut Connection,
    agent: Option<&str>,
    source: Option<&str>,
    rules: &Rules,
    dry_run: bool,
    now: i64,
) -> Result<Outcome, CatalogError> {
    let rows = snapshots::retention_rows(conn, agent, source)?;
    let groups = plan_groups(&rows, rules);
    let forgotten = if dry_run {
        0
    } else {
        let ids: Vec<String> = groups
            .iter()
            .flat_map(|g| g.removed().map(str::to_owned))
            .collect();
        snapshots::forget(conn, &ids, now)?
    };
    Ok(Outcome { groups, forgotten })
}
