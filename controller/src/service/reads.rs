//! Reading blobs for restores (ReadChunks): authorization, the region asked for, and chunks
//! that moved.
//!
//! A read plan (chunk → pack, offset, length, hash) is made once per request, then blobs are
//! read one by one. Meanwhile a GC repack ([`crate::gc::repack`]) may move a live chunk to a new
//! pack and delete the old one: the switch commits before the old pack's delete, so when a GET
//! finds no object, [`read_located`] looks the chunk up again and reads it from where it is now.
//! Only then does a read fail over to the secondary (which would otherwise count a healthy
//! primary as damaged) or report data loss.

use bytes::Bytes;
use lifeboat_common::ids::ChunkId;
use lifeboat_proto::v1 as pb;

use super::State;
use crate::catalog::Catalog;
use crate::catalog::chunks::{self, ChunkLocation};
use crate::catalog::snapshots;
use crate::error::ServiceError;
use crate::store::{Store, StoreError};

/// Checks every id is referenced by the owner's snapshots and returns where each blob lives.
pub async fn authorize(
    state: &State,
    owner: (String, String),
    ids: Vec<ChunkId>,
) -> Result<Vec<(ChunkId, ChunkLocation)>, ServiceError> {
    let (name, group) = owner;
    state
        .catalog
        .run(move |c| {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if !snapshots::referenced_by_agent(c, &name, &id)? {
                    return Ok(Err(ServiceError::PermissionDenied(format!(
                        "chunk {id} is not referenced by any snapshot of agent {name}"
                    ))));
                }
                let Some(loc) = chunks::location(c, &group, &id)? else {
                    return Ok(Err(ServiceError::DataLoss(format!(
                        "chunk {id} is referenced by a snapshot of agent {name} but has no stored copy"
                    ))));
                };
                out.push((id, loc));
            }
            Ok(Ok(out))
        })
        .await?
}

/// Reads one blob from the region asked for (`ReadChunksRequest.region`): ANY
/// reads the primary and, if that fails and a secondary is configured, the secondary
/// ([`crate::replication::fallback`], which also queues a repair of a damaged copy); PRIMARY
/// never falls back; SECONDARY reads only the secondary (checked to exist before streaming).
/// Returns the bytes and whether the secondary served them.
pub async fn read_blob_any(
    state: &State,
    group: &str,
    id: &ChunkId,
    loc: &ChunkLocation,
    region: pb::Region,
) -> Result<(Bytes, bool), ServiceError> {
    if region == pb::Region::Secondary {
        let secondary = crate::replication::fallback::secondary_for(state)?;
        return match read_located(&state.catalog, secondary, group, id, loc).await {
            Ok(d) => Ok((d, true)),
            Err(ServiceError::DataLoss(m)) => Err(ServiceError::DataLoss(format!(
                "{m} in the secondary region; `lifeboatctl replication scrub` re-copies damaged objects, or restore with --region any"
            ))),
            Err(e) => Err(e),
        };
    }
    let err = match read_located(&state.catalog, &state.store, group, id, loc).await {
        Ok(d) => return Ok((d, false)),
        Err(e) => e,
    };
    let Some(secondary) = state
        .secondary
        .as_ref()
        .filter(|_| region == pb::Region::Any)
    else {
        return Err(err);
    };
    let damaged = matches!(
        err,
        ServiceError::DataLoss(_) | ServiceError::Store(crate::store::StoreError::NotFound { .. })
    );
    let end = loc.offset + u64::from(loc.length);
    let served = crate::replication::fallback::read_from_secondary(
        secondary,
        &state.catalog,
        &loc.pack_key,
        loc.offset..end,
        &loc.blob_hash,
        &err.to_string(),
        damaged,
    )
    .await;
    served.map(|d| (d, true)).ok_or(err)
}

/// Reads one blob from `store`; if its pack is gone, looks the chunk up again (a repack may have
/// moved it since the plan was made) and reads it from its new place.
pub async fn read_located(
    catalog: &Catalog,
    store: &Store,
    group: &str,
    id: &ChunkId,
    loc: &ChunkLocation,
) -> Result<Bytes, ServiceError> {
    let err = match read_blob(store, id, loc).await {
        Err(e @ ServiceError::Store(StoreError::NotFound { .. })) => e,
        other => return other,
    };
    let (g, i) = (group.to_owned(), *id);
    let now = catalog.run(move |c| chunks::location(c, &g, &i)).await?;
    match now {
        Some(moved) if moved.pack_key != loc.pack_key => {
            tracing::debug!(chunk = %id, from = %loc.pack_key, to = %moved.pack_key, "chunk was repacked during the read; reading its new pack");
            read_blob(store, id, &moved).await
        }
        _ => Err(err),
    }
}

/// Reads one blob by ranged GET and verifies its BLAKE3 against the catalog.
async fn read_blob(
    store: &Store,
    id: &ChunkId,
    loc: &ChunkLocation,
) -> Result<Bytes, ServiceError> {
    let end = loc.offset + u64::from(loc.length);
    let data = store.get_range(&loc.pack_key, loc.offset..end).await?;
    if data.len() != loc.length as usize || blake3::hash(&data).as_bytes() != &loc.blob_hash {
        return Err(ServiceError::DataLoss(format!(
            "chunk {id} in pack {} does not match its recorded hash (damaged object)",
            loc.pack_key
        )));
    }
    Ok(data)
}
