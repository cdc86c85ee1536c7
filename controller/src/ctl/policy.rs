//! `lifeboatctl policy set|show`: backup policies stored on the controller.
//!
//! `policy set --scope default|group:G|agent:A [--source S] [--schedule SPEC] [--rpo 15m]
//! [--bandwidth 10MiB/s] [--nice N] [--force]` changes the given fields of the (scope, source)
//! policy (other fields keep their stored value or keep inheriting). The controller refuses a
//! schedule whose longest gap exceeds the objective it resolves with, unless `--force`.
//!
//! `policy show [--agent A] [--json]` lists the stored policies and, with `--agent`, the
//! effective policy of each of that agent's sources.

use lifeboat_common::clock::parse_duration;
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;

use super::{Ctx, Failure, output};

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// "default", "group:NAME" or "agent:ID".
    #[arg(long)]
    pub scope: String,
    /// Only this source of the scope (default: every source).
    #[arg(long, default_value = "")]
    pub source: String,
    /// "every 5m", "every 10m jitter 2m" or "cron */15 * * * *".
    #[arg(long)]
    pub schedule: Option<String>,
    /// RPO objective, e.g. 15m.
    #[arg(long)]
    pub rpo: Option<String>,
    /// Upload limit, e.g. 10MiB/s, 500KB/s; 0 for unlimited.
    #[arg(long)]
    pub bandwidth: Option<String>,
    /// CPU niceness of backups, 0-19.
    #[arg(long)]
    pub nice: Option<i32>,
    /// Store even if the schedule leaves gaps longer than the objective.
    #[arg(long)]
    pub force: bool,
    /// Print the stored policy as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Also show this agent's effective policy per source.
    #[arg(long)]
    pub agent: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn rate(b: u64) -> String {
    if b == 0 {
        "unlimited".into()
    } else {
        format!("{}/s", output::bytes(b))
    }
}

fn ms(v: u64) -> String {
    super::status::duration(i64::try_from(v).unwrap_or(i64::MAX))
}

fn policy_json(p: &pb::Policy) -> serde_json::Value {
    json!({
        "scope": p.scope,
        "source": p.source,
        "schedule": p.schedule,
        "rpo_ms": p.rpo_ms,
        "bandwidth_bytes_per_sec": p.bandwidth_bytes_per_sec,
        "nice": p.nice,
        "updated_at_unix_ms": p.updated_at_unix_ms,
    })
}

fn effective_json(p: &pb::SourcePolicy) -> serde_json::Value {
    json!({
        "source": p.source,
        "schedule": p.schedule,
        "rpo_ms": p.rpo_ms,
        "bandwidth_bytes_per_sec": p.bandwidth_bytes_per_sec,
        "nice": p.nice,
    })
}

pub async fn set(ctx: &Ctx, a: SetArgs) -> Result<(), Failure> {
    let rpo_ms = match &a.rpo {
        None => None,
        Some(r) => Some(
            parse_duration(r)
                .map_err(|e| Failure::error(format!("--rpo: {e}")))?
                .as_millis() as u64,
        ),
    };
    let bandwidth = match &a.bandwidth {
        None => None,
        Some(b) => Some(
            lifeboat_common::rate::parse_bytes_per_sec(b)
                .map_err(|e| Failure::error(format!("--bandwidth: {e}")))?,
        ),
    };
    let req = pb::SetPolicyRequest {
        policy: Some(pb::Policy {
            scope: a.scope.clone(),
            source: a.source.clone(),
            schedule: a.schedule.clone(),
            rpo_ms,
            bandwidth_bytes_per_sec: bandwidth,
            nice: a.nice,
            updated_at_unix_ms: 0,
        }),
        force: a.force,
    };
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let r = match client.set_policy(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("SetPolicy", &s).await),
    };
    let p = r.policy.unwrap_or_default();
    if a.json {
        println!(
            "{}",
            json!({"policy": policy_json(&p), "pushed_to": r.pushed_to})
        );
    } else {
        let source = if p.source.is_empty() {
            "every source"
        } else {
            &p.source
        };
        println!(
            "policy of {} ({source}) stored; pushed to {} connected agent(s)",
            p.scope, r.pushed_to
        );
    }
    Ok(())
}

pub async fn show(ctx: &Ctx, a: ShowArgs) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let req = pb::ListPoliciesRequest {
        agent_id: a.agent.clone().unwrap_or_default(),
    };
    let r = match client.list_policies(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("ListPolicies", &s).await),
    };
    if a.json {
        let v = json!({
            "policies": r.policies.iter().map(policy_json).collect::<Vec<_>>(),
            "effective": r.effective.iter().map(effective_json).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = r
        .policies
        .iter()
        .map(|p| {
            vec![
                p.scope.clone(),
                if p.source.is_empty() {
                    "*".into()
                } else {
                    p.source.clone()
                },
                p.schedule.clone().unwrap_or_else(dash),
                p.rpo_ms.map(ms).unwrap_or_else(dash),
                p.bandwidth_bytes_per_sec.map(rate).unwrap_or_else(dash),
                p.nice.map(|n| n.to_string()).unwrap_or_else(dash),
                output::time(p.updated_at_unix_ms),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no stored policies: every source uses the built-in policy");
    } else {
        print!(
            "{}",
            output::table(
                &[
                    "SCOPE",
                    "SOURCE",
                    "SCHEDULE",
                    "RPO",
                    "BANDWIDTH",
                    "NICE",
                    "UPDATED"
                ],
                &rows
            )
        );
    }
    if let Some(agent) = &a.agent {
        println!("\neffective policy of {agent}:");
        let rows: Vec<Vec<String>> = r
            .effective
            .iter()
            .map(|p| {
                vec![
                    p.source.clone(),
                    p.schedule.clone(),
                    ms(p.rpo_ms),
                    rate(p.bandwidth_bytes_per_sec),
                    p.nice.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(&["SOURCE", "SCHEDULE", "RPO", "BANDWIDTH", "NICE"], &rows)
        );
    }
    Ok(())
}
