//! The `Forget` RPC (AdminService, admin certificate only): request validation, the plan over
//! the catalog, and the answer with every snapshot's keep/remove decision and reasons.

use std::collections::HashMap;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::ids::AgentId;
use lifeboat_proto::v1 as pb;

use super::rules::Rules;
use crate::catalog::snapshots;
use crate::error::ServiceError;
use crate::service::State;
use crate::wire;

/// Converts wire rules; a `keep_within_ms` beyond i64 is refused.
pub fn rules_from_pb(r: Option<&pb::RetentionRules>) -> Result<Rules, ServiceError> {
    let Some(r) = r else {
        return Ok(Rules::default());
    };
    if i64::try_from(r.keep_within_ms).is_err() {
        return Err(ServiceError::invalid(format!(
            "rules.keep_within_ms {} is too large",
            r.keep_within_ms
        )));
    }
    Ok(Rules {
        last: r.keep_last,
        hourly: r.keep_hourly,
        daily: r.keep_daily,
        weekly: r.keep_weekly,
        monthly: r.keep_monthly,
        yearly: r.keep_yearly,
        within_ms: (r.keep_within_ms > 0).then_some(r.keep_within_ms),
    })
}

/// Rules as wire rules.
pub fn rules_to_pb(r: &Rules) -> pb::RetentionRules {
    pb::RetentionRules {
        keep_last: r.last,
        keep_hourly: r.hourly,
        keep_daily: r.daily,
        keep_weekly: r.weekly,
        keep_monthly: r.monthly,
        keep_yearly: r.yearly,
        keep_within_ms: r.within_ms.unwrap_or(0),
    }
}

/// Handles `Forget`: validates, plans, forgets unless dry run, answers with every decision.
pub async fn forget(
    state: &State,
    r: pb::ForgetRequest,
) -> Result<pb::ForgetResponse, ServiceError> {
    let agent = match r.agent_id.as_str() {
        "" => None,
        a => Some(
            AgentId::new(a)
                .map_err(|e| ServiceError::invalid(format!("agent_id: {e}")))?
                .to_string(),
        ),
    };
    let source = match r.source.as_str() {
        "" => None,
        s => Some(wire::source(s)?),
    };
    let rules = rules_from_pb(r.rules.as_ref())?;
    if rules.is_empty() && !r.allow_empty_rules {
        return Err(ServiceError::invalid(
            "no retention rule given (keep-last, keep-hourly, keep-daily, keep-weekly, keep-monthly, \
             keep-yearly, keep-within): nothing would be forgotten; give at least one rule",
        ));
    }
    let dry_run = r.dry_run;
    let now = now_unix_ms();
    let (outcome, rows) = state
        .catalog
        .run(move |c| {
            // Read the full rows first: forgotten ones are no longer listed afterwards.
            let rows = snapshots::list(c, agent.as_deref(), source.as_deref())?;
            let outcome =
                super::apply(c, agent.as_deref(), source.as_deref(), &rules, dry_run, now)?;
            Ok((outcome, rows))
        })
        .await?;
    let by_id: HashMap<&str, &snapshots::SnapshotRow> =
        rows.iter().map(|r| (r.id.as_str(), r)).collect();
    let groups = outcome
        .groups
        .iter()
        .map(|g| pb::ForgetGroup {
            agent_id: g.agent.clone(),
            source: g.source.clone(),
            decisions: g
                .decisions
                .iter()
                .map(|d| pb::ForgetDecision {
                    snapshot: by_id.get(d.id.as_str()).map(|r| wire::snapshot_to_pb(r)),
                    keep: d.keep,
                    reasons: if d.damaged && !d.keep {
                        vec!["damaged".to_owned()]
                    } else {
                        d.reasons.iter().map(ToString::to_string).collect()
                    },
                })
                .collect(),
        })
        .collect();
    if !dry_run {
        for g in &outcome.groups {
            for id in g.removed() {
                tracing::info!(agent = %g.agent, source = %g.source, snapshot = %id, "snapshot forgotten");
            }
        }
    }
    tracing::info!(
        dry_run,
        forgotten = outcome.forgotten,
        groups = outcome.groups.len(),
        "forget applied"
    );
    Ok(pb::ForgetResponse {
        groups,
        forgotten: outcome.forgotten,
        dry_run,
    })
}
