//! `lifeboatctl agent list [--json] [--wait-connected A | --wait-disconnected A] [--timeout D]`.
//!
//! The STATE column (`state` in JSON) is `revoked` for an agent cut off by `agent revoke` (until
//! it enrolls again with a new token), `expired` when its certificate's validity has ended (it
//! can renew only with a new token), and `active` otherwise. CONNECTED (`connected`) is whether
//! the agent holds its control stream open now; VERSION (`version`) is what its last hello said
//! since the controller started ("" / `-` if it has not connected since).

use lifeboat_common::clock::now_unix_ms;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::{Agent, ListAgentsRequest};
use serde_json::json;

use super::{Ctx, Failure, output};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Answer only once this agent holds its control stream (the controller wakes the call on
    /// every connect; exit 1 after --timeout).
    #[arg(long, value_name = "AGENT", conflicts_with = "wait_disconnected")]
    pub wait_connected: Option<String>,
    /// Answer only once this agent's control stream is gone.
    #[arg(long, value_name = "AGENT")]
    pub wait_disconnected: Option<String>,
    /// How long --wait-connected/--wait-disconnected may wait.
    #[arg(long, default_value = "60s", value_parser = lifeboat_common::clock::parse_duration)]
    pub timeout: std::time::Duration,
}

/// The agent's state at `now` (unix ms).
pub fn state(a: &Agent, now: i64) -> &'static str {
    if a.revoked_at_unix_ms != 0 {
        "revoked"
    } else if a.not_after_unix_ms != 0 && a.not_after_unix_ms < now {
        "expired"
    } else {
        "active"
    }
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let (wait_agent, wait_connected) = match (&a.wait_connected, &a.wait_disconnected) {
        (Some(x), _) => (x.clone(), true),
        (None, Some(x)) => (x.clone(), false),
        (None, None) => (String::new(), false),
    };
    let req = ListAgentsRequest {
        wait_agent,
        wait_connected,
        timeout_ms: u64::try_from(a.timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let req_wait = req.wait_agent.clone();
    let res = client.list_agents(req).await;
    let agents = match res {
        Ok(r) => r,
        // DEADLINE_EXCEEDED for a --wait-… is the controller's answer (exit 1), not an
        // unreachable controller.
        Err(s) if !req_wait.is_empty() && s.code() == tonic::Code::DeadlineExceeded => {
            return Err(Failure::error(s.message()));
        }
        Err(s) => return Err(ctx.failure("ListAgents", &s).await),
    }
    .into_inner()
    .agents;
    let now = now_unix_ms();
    if a.json {
        let v: Vec<_> = agents
            .iter()
            .map(|g| {
                json!({
                    "id": g.id,
                    "state": state(g, now),
                    "revoked_at_unix_ms": g.revoked_at_unix_ms,
                    "dedup_group": g.dedup_group,
                    "created_at_unix_ms": g.created_at_unix_ms,
                    "certificate_sha256": g.certificate_sha256,
                    "not_after_unix_ms": g.not_after_unix_ms,
                    "last_seen_unix_ms": g.last_seen_unix_ms,
                    "snapshots": g.snapshots,
                    "connected": g.connected,
                    "version": g.version,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|g| {
            vec![
                g.id.clone(),
                state(g, now).to_owned(),
                g.dedup_group.clone(),
                g.snapshots.to_string(),
                if g.connected { "yes" } else { "no" }.to_owned(),
                output::time(g.last_seen_unix_ms),
                if g.version.is_empty() {
                    "-".to_owned()
                } else {
                    g.version.clone()
                },
                output::time(g.not_after_unix_ms),
                g.certificate_sha256.chars().take(16).collect(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "AGENT",
                "STATE",
                "GROUP",
                "SNAPSHOTS",
                "CONNECTED",
                "LAST SEEN",
                "VERSION",
                "CERT NOT AFTER",
                "CERT SHA256"
            ],
            &rows
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_shows_revoked_before_expired() {
        let now = 1_800_000_000_000;
        let a = Agent {
            not_after_unix_ms: now + 1,
            ..Agent::default()
        };
        assert_eq!(state(&a, now), "active");
        let expired = Agent {
            not_after_unix_ms: now - 1,
            ..a.clone()
        };
        assert_eq!(state(&expired, now), "expired");
        let revoked = Agent {
            revoked_at_unix_ms: now - 5,
            ..expired
        };
        assert_eq!(state(&revoked, now), "revoked");
    }
}
