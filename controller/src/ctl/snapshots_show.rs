//! `lifeboatctl snapshots show ID [--json]` (ID or a unique prefix).

use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::{AdminGetSnapshotRequest, Snapshot};
use serde_json::{Value, json};

use super::{Ctx, Failure, output};
use crate::MAX_MESSAGE_BYTES;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot id, or a unique prefix of one.
    pub id: String,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The stable JSON form of a snapshot (used by `list --json` too).
pub fn snapshot_json(s: &Snapshot) -> Value {
    let st = s.stats.unwrap_or_default();
    json!({
        "id": s.id,
        "agent": s.agent_id,
        "source": s.source,
        "started_at": output::time(s.started_at_unix_ms),
        "finished_at": output::time(s.finished_at_unix_ms),
        "committed_at": output::time(s.committed_at_unix_ms),
        "started_at_unix_ms": s.started_at_unix_ms,
        "finished_at_unix_ms": s.finished_at_unix_ms,
        "committed_at_unix_ms": s.committed_at_unix_ms,
        "files": st.files,
        "dirs": st.dirs,
        "symlinks": st.symlinks,
        "files_read": st.files_read,
        "unreadable": st.unreadable,
        "partial": st.unreadable > 0,
        "logical_bytes": st.logical_bytes,
        "new_logical_bytes": st.new_logical_bytes,
        "deduplicated_bytes": st.logical_bytes.saturating_sub(st.new_logical_bytes),
        "chunks": st.chunks,
        "new_chunks": st.new_chunks,
        "stored_bytes": s.stored_bytes,
        "reference_count": s.reference_count,
        "manifest_chunks": s.manifest_ids.len(),
        "replicated": s.replicated,
    })
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client =
        AdminServiceClient::new(ctx.channel().await?).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let res = client
        .get_snapshot(AdminGetSnapshotRequest {
            snapshot_id: a.id.clone(),
        })
        .await;
    let s = match res {
        Ok(r) => r,
        Err(s) => return Err(ctx.failure("GetSnapshot", &s).await),
    }
    .into_inner();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&snapshot_json(&s)).unwrap_or_default()
        );
        return Ok(());
    }
    let st = s.stats.unwrap_or_default();
    let dur = (s.finished_at_unix_ms - s.started_at_unix_ms).max(0) as f64 / 1000.0;
    let lines = [
        ("snapshot", s.id.clone()),
        ("agent", s.agent_id.clone()),
        ("source", s.source.clone()),
        ("started", output::time(s.started_at_unix_ms)),
        (
            "finished",
            format!("{} ({dur:.1} s)", output::time(s.finished_at_unix_ms)),
        ),
        ("committed", output::time(s.committed_at_unix_ms)),
        (
            "files",
            format!(
                "{} ({} read, {} from cache)",
                st.files,
                st.files_read,
                st.files.saturating_sub(st.files_read)
            ),
        ),
        ("dirs", st.dirs.to_string()),
        ("symlinks", st.symlinks.to_string()),
        (
            "unreadable",
            format!(
                "{}{}",
                st.unreadable,
                if st.unreadable > 0 {
                    " (partial snapshot)"
                } else {
                    ""
                }
            ),
        ),
        ("size", output::bytes(st.logical_bytes)),
        ("new data", output::bytes(st.new_logical_bytes)),
        (
            "deduplicated",
            output::bytes(st.logical_bytes.saturating_sub(st.new_logical_bytes)),
        ),
        ("chunks", format!("{} ({} new)", st.chunks, st.new_chunks)),
        (
            "stored",
            format!(
                "{} (ciphertext, after dedup)",
                output::bytes(s.stored_bytes)
            ),
        ),
        ("references", s.reference_count.to_string()),
        ("manifest chunks", s.manifest_ids.len().to_string()),
    ];
    for (k, v) in lines {
        println!("{:<16} {v}", format!("{k}:"));
    }
    Ok(())
}
