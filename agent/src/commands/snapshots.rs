//! `lifeboat-agent snapshots`.

use lifeboat_common::clock::format_unix_ms;
use lifeboat_common::exit;
use serde_json::json;

use super::{CmdResult, Failure, connect, human_bytes, load_config, print_json};
use crate::cli::{Cli, SnapshotsArgs};
use crate::error::AgentError;
use crate::remote::Remote;

pub async fn run(cli: &Cli, args: &SnapshotsArgs) -> CmdResult {
    let cfg = load_config(cli.config.as_deref())?;
    let remote = connect(&cfg).await?;
    let snaps = remote
        .list_snapshots(args.source.as_deref().unwrap_or(""))
        .await
        .map_err(|e| Failure::new(&AgentError::Remote(e), Some(&cfg)))?;
    if !args.json {
        println!(
            "{:<20}  {:<12}  {:<20}  {:>8}  {:>10}  {:>10}",
            "ID", "SOURCE", "COMMITTED", "FILES", "SIZE", "STORED"
        );
    }
    for s in &snaps {
        if args.json {
            print_json(&json!({
                "id": s.id,
                "source": s.source,
                "started_at_unix_ms": s.started_at_unix_ms,
                "finished_at_unix_ms": s.finished_at_unix_ms,
                "committed_at_unix_ms": s.committed_at_unix_ms,
                "committed_at": format_unix_ms(s.committed_at_unix_ms),
                "files": s.stats.files,
                "dirs": s.stats.dirs,
                "symlinks": s.stats.symlinks,
                "logical_bytes": s.stats.logical_bytes,
                "new_logical_bytes": s.stats.new_logical_bytes,
                "chunks": s.stats.chunks,
                "new_chunks": s.stats.new_chunks,
                "unreadable": s.stats.unreadable,
                "partial": s.stats.unreadable > 0,
                "stored_bytes": s.stored_bytes,
                "reference_count": s.reference_count,
            }));
        } else {
            let partial = if s.stats.unreadable > 0 {
                "  (partial)"
            } else {
                ""
            };
            println!(
                "{:<20}  {:<12}  {:<20}  {:>8}  {:>10}  {:>10}{partial}",
                s.id,
                s.source,
                format_unix_ms(s.committed_at_unix_ms),
                s.stats.files,
                human_bytes(s.stats.logical_bytes),
                human_bytes(s.stored_bytes)
            );
        }
    }
    Ok(exit::SUCCESS)
}
