//! The GC worker (`gc-worker`): runs [`super::run`] every `[gc] interval` (the first run one
//! interval after start-up), and the `RunGc` RPC's answer. A failed run is logged and retried
//! at the next interval; every phase is restartable (tombstones, condemned marks are rows).

use std::time::Duration;

use lifeboat_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::{GcError, Report};
use crate::error::ServiceError;
use crate::service::State;

fn secondary_delay(state: &State) -> Option<Duration> {
    state
        .secondary
        .as_ref()
        .map(|_| state.replication.settings.delete_delay)
}

/// One run with the controller's settings.
pub async fn run_once(state: &State, dry_run: bool) -> Result<Report, GcError> {
    super::run(
        &state.catalog,
        &state.store,
        &state.gc,
        secondary_delay(state),
        dry_run,
    )
    .await
}

/// Starts the worker unless `[gc] interval` is zero; returns whether it started.
pub fn spawn(state: State, shutdown: CancellationToken) -> bool {
    let interval = state.gc.interval;
    if interval.is_zero() {
        info!("gc: [gc] interval = 0; garbage collection runs only on `lifeboatctl gc`");
        return false;
    }
    let span = tracing::info_span!("gc-worker");
    tokio::spawn(
        async move {
            info!(interval_secs = interval.as_secs(), "gc worker started");
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
                if let Err(e) = run_once(&state, false).await {
                    warn!(error = %e, "garbage collection failed; retrying at the next interval");
                }
            }
            info!("gc worker stopped");
        }
        .instrument(span),
    );
    true
}

/// `AdminService.RunGc`.
pub async fn answer(
    state: &State,
    r: &pb::RunGcRequest,
) -> Result<pb::RunGcResponse, ServiceError> {
    let rep = run_once(state, r.dry_run).await.map_err(|e| match e {
        GcError::Catalog(e) => ServiceError::from(e),
        GcError::Orphans(e) => ServiceError::Unavailable(e.to_string()),
    })?;
    Ok(to_pb(&rep))
}

/// The wire form of a report.
pub fn to_pb(r: &Report) -> pb::RunGcResponse {
    pb::RunGcResponse {
        dry_run: r.dry_run,
        cutoff_unix_ms: r.cutoff,
        chunks_condemned: r.condemned,
        bytes_condemned: r.condemned_bytes,
        chunks_revived: r.swept.revived,
        chunks_swept: r.swept.chunks,
        packs_swept: r.swept.packs,
        snapshots_swept: r.swept.snapshots,
        objects_deleted: r.finished.deleted,
        bytes_reclaimed: r.finished.bytes,
        objects_kept: r.finished.kept,
        objects_deferred: r.finished.deferred + r.finished.failed,
        orphans: r.orphans.orphans,
        orphan_bytes: r.orphans.bytes,
        objects_scanned: r.orphans.scanned,
        duration_ms: r.duration_ms,
        repack_candidates: r.repacked.candidates,
        packs_repacked: r.repacked.packs,
        repack_chunks_moved: r.repacked.chunks_moved,
        repack_bytes_read: r.repacked.bytes_read,
        repack_bytes_written: r.repacked.bytes_written,
        repack_deferred: r.repacked.deferred,
        repack_skipped: r.repacked.skipped,
        empty_packs: r.repacked.empty_packs,
        snapshots_waiting: r.forgotten_waiting,
    }
}
