//! The AdminService handlers of fleet operations: `SetPolicy`, `ListPolicies`, `FleetStatus`.
//!
//! `SetPolicy` merges the given fields into the stored row of (scope, source) (unset fields
//! keep their stored value), validates the result ([`super::policy`]), records it as a registry
//! event (object first, then the catalog row and the replication queue row in one transaction,
//! [`crate::registry::Pending::record`]), and pushes the new effective policy to every connected
//! agent over its control stream.

use lifeboat_common::clock::now_unix_ms;
use lifeboat_proto::v1 as pb;
use rusqlite::Connection;

use super::policy::{self, PolicyError};
use super::status;
use crate::catalog::policies::{self, PolicyRow};
use crate::catalog::{CatalogError, grants};
use crate::error::ServiceError;
use crate::service::State;

impl From<PolicyError> for ServiceError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Catalog(c) => ServiceError::Catalog(c),
            PolicyError::GapExceedsRpo(_) => ServiceError::FailedPrecondition(e.to_string()),
            other => ServiceError::InvalidArgument(other.to_string()),
        }
    }
}

/// The merged row and the gap violations it would cause.
fn prepare(
    c: &Connection,
    row: PolicyRow,
    now: i64,
) -> Result<(PolicyRow, Vec<String>), CatalogError> {
    let merged = match policies::get(c, &row.scope, &row.source)? {
        Some(old) => old.merged_with(&row),
        None => row,
    };
    let mut all: Vec<PolicyRow> = policies::list(c)?
        .into_iter()
        .filter(|r| (&r.scope, &r.source) != (&merged.scope, &merged.source))
        .collect();
    all.push(merged.clone());
    let targets = policy::targets_for(&merged, &status::known_targets(c)?);
    let violations = policy::gap_violations(&all, &targets, now);
    Ok((merged, violations))
}

/// `SetPolicy`.
pub async fn set_policy(
    state: &State,
    req: pb::SetPolicyRequest,
) -> Result<pb::SetPolicyResponse, ServiceError> {
    let p = req
        .policy
        .ok_or_else(|| ServiceError::invalid("SetPolicyRequest.policy is missing"))?;
    let now = now_unix_ms();
    let row = policy::from_pb(&p, now)?;
    let (merged, violations) = state.catalog.run(move |c| prepare(c, row, now)).await?;
    if !violations.is_empty() {
        if !req.force {
            return Err(PolicyError::GapExceedsRpo(violations).into());
        }
        tracing::warn!(scope = %merged.scope, source = %merged.source, violations = violations.len(), "policy stored despite schedule gaps above the objective (forced)");
    }
    let stored = merged.clone();
    crate::registry::Pending::policy(&merged, now)
        .record(state, move |c| {
            policies::upsert(c, &stored)?;
            Ok(true)
        })
        .await?;
    tracing::info!(scope = %merged.scope, source = %merged.source, "policy set");
    let pushed_to = push_to_connected(state).await?;
    Ok(pb::SetPolicyResponse {
        policy: Some(policy::to_pb(&merged)),
        pushed_to,
    })
}

/// Sends every connected agent its current effective policy; returns how many got it.
pub async fn push_to_connected(state: &State) -> Result<u32, ServiceError> {
    let live = state.control.connected();
    let agents: Vec<String> = live.iter().map(|(a, _)| a.clone()).collect();
    let groups = state
        .catalog
        .run(move |c| {
            agents
                .iter()
                .map(|a| Ok(grants::group_of(c, a)?.unwrap_or_default()))
                .collect::<Result<Vec<String>, CatalogError>>()
        })
        .await?;
    let mut sent = 0;
    for ((agent, l), group) in live.into_iter().zip(groups) {
        let sources: Vec<(String, String)> = l
            .sources
            .iter()
            .map(|s| (s.name.clone(), s.kind.clone()))
            .collect();
        let (a2, g2) = (agent.clone(), group);
        let effective = state
            .catalog
            .run(move |c| policy::effective_for(c, &a2, &g2, &sources))
            .await?;
        let cmd = pb::controller_command::Command::Policy(pb::AgentPolicy {
            sources: effective,
            heartbeat_ms: super::control::HEARTBEAT_MS,
        });
        match state.control.send(&agent, cmd) {
            Ok(Some(())) => sent += 1,
            Ok(None) => {}
            Err(e) => tracing::warn!(agent = %agent, error = %e, "policy not pushed"),
        }
    }
    Ok(sent)
}

/// `ListPolicies`.
pub async fn list_policies(
    state: &State,
    req: pb::ListPoliciesRequest,
) -> Result<pb::ListPoliciesResponse, ServiceError> {
    let agent = req.agent_id.trim().to_owned();
    let live_sources: Option<Vec<(String, String)>> = state.control.live(&agent).map(|l| {
        l.sources
            .iter()
            .map(|s| (s.name.clone(), s.kind.clone()))
            .collect()
    });
    let who = agent.clone();
    let found = state
        .catalog
        .run(move |c| {
            let rows = policies::list(c)?;
            if agent.is_empty() {
                return Ok(Some((rows, Vec::new())));
            }
            let Some(group) = grants::group_of(c, &agent)? else {
                return Ok(None);
            };
            let sources = match live_sources {
                Some(s) => s,
                None => status::known_targets(c)?
                    .into_iter()
                    .filter(|t| t.agent == agent)
                    .map(|t| (t.source, t.kind))
                    .collect(),
            };
            let eff = policy::effective_for(c, &agent, &group, &sources)?;
            Ok(Some((rows, eff)))
        })
        .await?;
    let Some((rows, effective)) = found else {
        return Err(ServiceError::NotFound(format!(
            "agent {who} is not enrolled; see `lifeboatctl agent list`"
        )));
    };
    Ok(pb::ListPoliciesResponse {
        policies: rows.iter().map(policy::to_pb).collect(),
        effective,
    })
}

/// Presence from the control-stream registry.
impl status::Presence for super::control::Registry {
    fn connected(&self, agent: &str) -> Option<bool> {
        Some(self.live(agent).is_some())
    }
}

/// `FleetStatus` at the fleet clock's now.
pub async fn fleet_status(state: &State) -> Result<pb::FleetStatusResponse, ServiceError> {
    let now = super::clock::now_ms();
    let secondary = state.secondary.is_some();
    let presence = state.control.clone();
    let s = state
        .catalog
        .run(move |c| status::collect(c, now, secondary, presence.as_ref()))
        .await?;
    Ok(status::to_pb(&s))
}
