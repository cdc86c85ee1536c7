//! `lifeboatctl gc [--dry-run] [--json]`: run garbage collection now (docs/gc.md).

use lifeboat_proto::v1::RunGcRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;

use super::{Ctx, Failure, output};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Count what a run would condemn, sweep and delete; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let r = match client.run_gc(RunGcRequest { dry_run: a.dry_run }).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("RunGc", &s).await),
    };
    if a.json {
        let v = json!({
            "dry_run": r.dry_run,
            "cutoff_unix_ms": r.cutoff_unix_ms,
            "chunks_condemned": r.chunks_condemned,
            "bytes_condemned": r.bytes_condemned,
            "chunks_revived": r.chunks_revived,
            "chunks_swept": r.chunks_swept,
            "packs_swept": r.packs_swept,
            "snapshots_swept": r.snapshots_swept,
            "objects_deleted": r.objects_deleted,
            "bytes_reclaimed": r.bytes_reclaimed,
            "objects_kept": r.objects_kept,
            "objects_deferred": r.objects_deferred,
            "orphans": r.orphans,
            "orphan_bytes": r.orphan_bytes,
            "objects_scanned": r.objects_scanned,
            "duration_ms": r.duration_ms,
            "repack_candidates": r.repack_candidates,
            "packs_repacked": r.packs_repacked,
            "repack_chunks_moved": r.repack_chunks_moved,
            "repack_bytes_read": r.repack_bytes_read,
            "repack_bytes_written": r.repack_bytes_written,
            "repack_deferred": r.repack_deferred,
            "repack_skipped": r.repack_skipped,
            "empty_packs": r.empty_packs,
            "snapshots_waiting": r.snapshots_waiting,
        });
        println!("{v}");
        return Ok(());
    }
    let verb = if r.dry_run { "would be" } else { "were" };
    println!(
        "chunks created before {} may be condemned",
        output::time(r.cutoff_unix_ms)
    );
    println!(
        "{} chunks ({}) {verb} condemned; {} revived",
        r.chunks_condemned,
        output::bytes(r.bytes_condemned),
        r.chunks_revived
    );
    println!(
        "{} chunks, {} packs, {} forgotten snapshots {verb} swept from the catalog",
        r.chunks_swept, r.packs_swept, r.snapshots_swept
    );
    if r.snapshots_waiting > 0 {
        println!(
            "{} forgotten snapshots wait for upload sessions open since before they were forgotten (a run after those sessions end removes them)",
            r.snapshots_waiting
        );
    }
    if r.dry_run {
        println!(
            "{} packs are below the repack threshold; {} packs have no chunk left",
            r.repack_candidates, r.empty_packs
        );
    } else {
        println!(
            "{} of {} mostly-dead packs repacked ({} chunks moved, {} read, {} written; {} left for the next run, {} skipped); {} empty packs dropped",
            r.packs_repacked,
            r.repack_candidates,
            r.repack_chunks_moved,
            output::bytes(r.repack_bytes_read),
            output::bytes(r.repack_bytes_written),
            r.repack_deferred,
            r.repack_skipped,
            r.empty_packs
        );
    }
    println!(
        "{} orphan objects ({}) of {} scanned",
        r.orphans,
        output::bytes(r.orphan_bytes),
        r.objects_scanned
    );
    if !r.dry_run {
        println!(
            "{} objects deleted, {} reclaimed; {} kept (re-used), {} left for the next run; {} ms",
            r.objects_deleted,
            output::bytes(r.bytes_reclaimed),
            r.objects_kept,
            r.objects_deferred,
            r.duration_ms
        );
    }
    Ok(())
}
