//! AdminService storage calls: `GetStorageStats` (catalog usage) and `ListOrphans` (objects the
//! catalog does not know). Both are read-only.

use lifeboat_proto::v1 as pb;

use super::State;
use crate::catalog::inventory::{self, Usage};
use crate::error::ServiceError;
use crate::store::orphans::{self, DEFAULT_LIMIT, OrphansError};

fn usage_to_pb(u: &Usage) -> pb::StorageUsage {
    pb::StorageUsage {
        name: u.name.clone(),
        dedup_group: u.dedup_group.clone(),
        snapshots: u.snapshots,
        logical_bytes: u.logical_bytes,
        stored_bytes: u.stored_bytes,
        chunks: u.chunks,
        packs: u.packs,
        agents: u.agents,
    }
}

/// Usage per agent, per dedup group and in total (definitions in [`inventory`]).
pub async fn stats(state: &State) -> Result<pb::GetStorageStatsResponse, ServiceError> {
    let r = state.catalog.run(|c| inventory::usage(c)).await?;
    Ok(pb::GetStorageStatsResponse {
        total: Some(usage_to_pb(&r.total)),
        agents: r.agents.iter().map(usage_to_pb).collect(),
        groups: r.groups.iter().map(usage_to_pb).collect(),
    })
}

/// Objects the catalog does not know, at most `limit` (0 or more than the default: the default).
pub async fn list_orphans(
    state: &State,
    r: pb::ListOrphansRequest,
) -> Result<pb::ListOrphansResponse, ServiceError> {
    let limit = match usize::try_from(r.limit) {
        Ok(0) | Err(_) => DEFAULT_LIMIT,
        Ok(n) => n.min(DEFAULT_LIMIT),
    };
    let report = orphans::find(&state.catalog, &state.store, limit)
        .await
        .map_err(|e| match e {
            OrphansError::Store(e) => ServiceError::from(e),
            OrphansError::Catalog(e) => ServiceError::from(e),
        })?;
    tracing::info!(
        orphans = report.count,
        bytes = report.bytes,
        scanned = report.scanned,
        "orphan scan"
    );
    Ok(pb::ListOrphansResponse {
        orphans: report
            .orphans
            .into_iter()
            .map(|(key, size)| pb::OrphanObject { key, size })
            .collect(),
        orphan_count: report.count,
        orphan_bytes: report.bytes,
        objects_scanned: report.scanned,
        truncated: report.truncated,
    })
}
