//! `lifeboatctl replication status [--json]`: how far the secondary store lags behind.

use lifeboat_common::clock::format_unix_ms;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::{ReplicationStatusRequest, ReplicationWait};
use serde_json::json;

use super::{Ctx, Failure, output};

const ABOUT: &str = "\
Every object written to the primary store is queued and copied to the [secondary] store.
Shows the lag (age of the oldest object not yet copied), objects and bytes pending, the last
copy error, and per agent and source the newest snapshot restorable from the secondary.
The same figures are on the controller's /metrics endpoint.

--wait caught-up answers once nothing is pending (e.g. before retiring a primary region);
--wait error once a copy error is recorded. The controller re-checks after every copy attempt;
past --timeout the command fails (exit 1) and prints the figures at that moment.";

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WaitFor {
    /// Nothing pending.
    CaughtUp,
    /// A copy error is recorded.
    Error,
}

#[derive(Debug, clap::Args)]
#[command(after_help = ABOUT)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Answer only once this holds (or fail after --timeout).
    #[arg(long, value_enum)]
    pub wait: Option<WaitFor>,
    /// How long --wait may take, e.g. 30s, 10m.
    #[arg(long, default_value = "60s", value_parser = lifeboat_common::clock::parse_duration)]
    pub timeout: std::time::Duration,
}

pub async fn status(ctx: &Ctx, a: StatusArgs) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let wait = match a.wait {
        None => ReplicationWait::None,
        Some(WaitFor::CaughtUp) => ReplicationWait::CaughtUp,
        Some(WaitFor::Error) => ReplicationWait::Error,
    };
    let req = ReplicationStatusRequest {
        wait: wait as i32,
        timeout_ms: u64::try_from(a.timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let r = match client.replication_status(req).await {
        Ok(r) => r.into_inner(),
        // The controller answers DEADLINE_EXCEEDED when the --wait condition did not hold in
        // time: that is an answer (exit 1), not an unreachable controller.
        Err(s) if a.wait.is_some() && s.code() == tonic::Code::DeadlineExceeded => {
            return Err(Failure::error(s.message()));
        }
        Err(s) => return Err(ctx.failure("ReplicationStatus", &s).await),
    };
    if a.json {
        let v = json!({
            "configured": r.configured,
            "secondary": r.secondary,
            "lag_seconds": r.lag_ms as f64 / 1000.0,
            "pending_objects": r.pending_objects,
            "pending_bytes": r.pending_bytes,
            "replicated_objects": r.replicated_objects,
            "last_error": (!r.last_error.is_empty()).then(|| json!({
                "key": r.last_error_key,
                "message": r.last_error,
                "at_unix_ms": r.last_error_at_unix_ms,
            })),
            "newest_replicated": r.newest_replicated.iter().map(|s| json!({
                "agent": s.agent_id,
                "source": s.source,
                "snapshot": s.snapshot_id,
                "committed_at_unix_ms": s.committed_at_unix_ms,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    if !r.configured {
        println!("replication: not configured (add a [secondary] store to controller.toml)");
        return Ok(());
    }
    println!("secondary:  {}", r.secondary);
    println!("lag:        {:.1} s", r.lag_ms as f64 / 1000.0);
    println!(
        "pending:    {} objects, {}",
        r.pending_objects,
        output::bytes(r.pending_bytes)
    );
    println!("replicated: {} objects", r.replicated_objects);
    if r.last_error.is_empty() {
        println!("last error: none");
    } else {
        println!(
            "last error: {} ({}, {})",
            r.last_error,
            r.last_error_key,
            format_unix_ms(r.last_error_at_unix_ms)
        );
    }
    let rows: Vec<Vec<String>> = r
        .newest_replicated
        .iter()
        .map(|s| {
            vec![
                s.agent_id.clone(),
                s.source.clone(),
                s.snapshot_id.clone(),
                format_unix_ms(s.committed_at_unix_ms),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no snapshot is restorable from the secondary yet");
    } else {
        println!("newest snapshots restorable from the secondary:");
        print!(
            "{}",
            output::table(&["AGENT", "SOURCE", "SNAPSHOT", "COMMITTED"], &rows)
        );
    }
    Ok(())
}
