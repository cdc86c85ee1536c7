//! `lifeboatctl snapshots list [--agent A] [--source S] [--json]`.
//!
//! Failed backups reported by agents (`ReportFailure`: a dump that failed validation, nothing
//! committed) are listed with the snapshots, in time order, with status `FAILED` and their
//! reason below the table; in JSON they are objects with `"status": "failed"` and `"reason"`.
//! REPLICATED is `-` when no secondary store is configured.

use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::{AdminListSnapshotsRequest, FailedBackup, ReplicationStatusRequest};
use serde_json::json;

use super::snapshots_show::snapshot_json;
use super::{Ctx, Failure, output};
use crate::MAX_MESSAGE_BYTES;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this agent's snapshots.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only this source's snapshots.
    #[arg(long)]
    pub source: Option<String>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES * 16);
    let res = client
        .list_snapshots(AdminListSnapshotsRequest {
            agent_id: a.agent.unwrap_or_default(),
            source: a.source.unwrap_or_default(),
        })
        .await;
    let resp = match res {
        Ok(r) => r,
        Err(s) => return Err(ctx.failure("ListSnapshots", &s).await),
    }
    .into_inner();
    let (snaps, failures) = (resp.snapshots, resp.failures);
    if a.json {
        let mut v: Vec<(i64, serde_json::Value)> = snaps
            .iter()
            .map(|s| {
                let mut j = snapshot_json(s);
                j["status"] = json!(if j["partial"] == json!(true) {
                    "partial"
                } else {
                    "ok"
                });
                (s.committed_at_unix_ms, j)
            })
            .collect();
        v.extend(
            failures
                .iter()
                .map(|f| (f.reported_at_unix_ms, failure_json(f))),
        );
        v.sort_by_key(|(t, _)| *t);
        let v: Vec<_> = v.into_iter().map(|(_, j)| j).collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    // REPLICATED is "-" when the controller has no secondary store (nothing to replicate to).
    let replicating = client
        .replication_status(ReplicationStatusRequest::default())
        .await
        .map_or(true, |r| r.into_inner().configured);
    let mut rows: Vec<(i64, Vec<String>)> = snaps
        .iter()
        .map(|s| {
            let st = s.stats.unwrap_or_default();
            let row = vec![
                s.id.clone(),
                s.agent_id.clone(),
                s.source.clone(),
                output::time(s.committed_at_unix_ms),
                st.files.to_string(),
                output::bytes(st.logical_bytes),
                output::bytes(s.stored_bytes),
                if st.unreadable > 0 {
                    "partial".into()
                } else {
                    "ok".into()
                },
                match (replicating, s.replicated) {
                    (false, _) => "-",
                    (true, true) => "yes",
                    (true, false) => "no",
                }
                .into(),
            ];
            (s.committed_at_unix_ms, row)
        })
        .collect();
    rows.extend(failures.iter().map(|f| {
        let row = vec![
            f.id.clone(),
            f.agent_id.clone(),
            f.source.clone(),
            output::time(f.reported_at_unix_ms),
            "-".into(),
            "-".into(),
            "-".into(),
            "FAILED".into(),
            "-".into(),
        ];
        (f.reported_at_unix_ms, row)
    }));
    rows.sort_by_key(|(t, _)| *t);
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
    print!(
        "{}",
        output::table(
            &[
                "SNAPSHOT",
                "AGENT",
                "SOURCE",
                "COMMITTED",
                "FILES",
                "SIZE",
                "STORED",
                "STATUS",
                "REPLICATED"
            ],
            &rows
        )
    );
    if !failures.is_empty() {
        println!(
            "\nFailed backups (nothing was committed; the previous snapshot is still the latest):"
        );
        for f in &failures {
            println!("  {} {}/{}: {}", f.id, f.agent_id, f.source, f.reason);
        }
    }
    Ok(())
}

fn failure_json(f: &FailedBackup) -> serde_json::Value {
    json!({
        "id": f.id,
        "agent": f.agent_id,
        "source": f.source,
        "status": "failed",
        "reason": f.reason,
        "started_at_unix_ms": f.started_at_unix_ms,
        "finished_at_unix_ms": f.finished_at_unix_ms,
        "reported_at_unix_ms": f.reported_at_unix_ms,
        "reported_at": output::time(f.reported_at_unix_ms),
    })
}
