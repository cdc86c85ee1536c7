//! Reading blobs for restores (ReadChunks): authorization, the region asked for, and chunks
//! that moved.
//!
//! A read plan (chunk → pack, offset, length, hash) is made once per request, then blobs are
//! read one by one. Meanwhile a GC repack ([`crate::gc::repack`]) may move a live chunk to a new
//! pack and delete the old one: the switch commits before the old pack's delete, so when a GET
//! finds no object, [`read_located`] looks the chunk up again and reads it from where it is now.
//! Only then does a read fail over to the secondary (which would otherwise count a healthy
//! primary as damaged) or report data loss.
//!
//! [`stream`] reads neighbouring blobs of one pack with one ranged GET (agents ask in backup
//! order, which is pack order): a run of consecutive plan entries in the same pack, each
//! starting at most [`RUN_GAP`] after the previous one ends, up to [`RUN_BYTES`]. Every blob is
//! still checked against its BLAKE3; if the run's read or any check fails, its blobs go one by
//! one through [`read_blob_any`] (relocation, fallback, a precise error).

use bytes::Bytes;
use lifeboat_common::ids::ChunkId;
use lifeboat_proto::v1 as pb;

use tokio::sync::mpsc;
use tonic::Status;

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
            // A read transaction: one lock for all the lookups, not one per id.
            let tx = c.transaction()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if !snapshots::referenced_by_agent(&tx, &name, &id)? {
                    return Ok(Err(ServiceError::PermissionDenied(format!(
                        "chunk {id} is not referenced by any snapshot of agent {name}"
                    ))));
                }
                let Some(loc) = chunks::location(&tx, &group, &id)? else {
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

/// Largest gap between two blobs read by one GET (the gap's bytes are read and dropped).
pub const RUN_GAP: u64 = 64 << 10;
/// Most bytes one coalesced GET reads.
pub const RUN_BYTES: u64 = 8 << 20;

/// How many plan entries from the start of `plan` one ranged GET can serve.
fn run_len(plan: &[(ChunkId, ChunkLocation)]) -> usize {
    let Some((_, first)) = plan.first() else {
        return 0;
    };
    let mut end = first.offset + u64::from(first.length);
    let mut n = 1;
    for (_, loc) in &plan[1..] {
        let next_end = loc.offset + u64::from(loc.length);
        if loc.pack_key != first.pack_key
            || loc.offset < end
            || loc.offset - end > RUN_GAP
            || next_end - first.offset > RUN_BYTES
        {
            break;
        }
        end = next_end;
        n += 1;
    }
    n
}

/// Reads a run of blobs of one pack from the primary with one GET; `None` if the read or any
/// hash check fails (the caller then reads them one by one).
async fn read_run(store: &Store, run: &[(ChunkId, ChunkLocation)]) -> Option<Vec<Bytes>> {
    let (first, last) = (&run.first()?.1, &run.last()?.1);
    let start = first.offset;
    let data = store
        .get_range(&first.pack_key, start..last.offset + u64::from(last.length))
        .await
        .ok()?;
    let mut out = Vec::with_capacity(run.len());
    for (_, loc) in run {
        let from = usize::try_from(loc.offset - start).ok()?;
        let blob = data.get(from..from.checked_add(loc.length as usize)?)?;
        if blake3::hash(blob).as_bytes() != &loc.blob_hash {
            return None;
        }
        out.push(data.slice(from..from + loc.length as usize));
    }
    Some(out)
}

/// Streams the blobs of `plan` in order into `tx` (ReadChunks) once the controller's read
/// budget admits it ([`crate::read_limit`]); stops at the first error, which is sent, when the
/// receiver goes away, or when it has not taken a blob for the limiter's stall timeout
/// ([`crate::read_limit::STALL_TIMEOUT`]).
pub async fn stream(
    state: State,
    group: String,
    plan: Vec<(ChunkId, ChunkLocation)>,
    region: pb::Region,
    tx: mpsc::Sender<Result<pb::ReadChunksResponse, Status>>,
) {
    let bytes = plan.iter().map(|(_, loc)| u64::from(loc.length)).sum();
    // A client that gives up while waiting for the budget leaves the queue at once.
    let _admitted = tokio::select! {
        permit = state.reads.admit(bytes) => permit,
        () = tx.closed() => return,
    };
    let stall = state.reads.stall();
    let send = |msg| async {
        match tx.send_timeout(msg, stall).await {
            Ok(()) => true,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                tracing::warn!(group = %group, timeout_s = stall.as_secs(), "a restore stream's client took no blob for too long; ending the stream to free its read budget");
                false
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
        }
    };
    let reply = |id: &ChunkId, data: Bytes, from_secondary: bool| pb::ReadChunksResponse {
        blob: Some(pb::Blob {
            id: Bytes::copy_from_slice(id.as_bytes()),
            data,
        }),
        from_secondary,
    };
    let mut i = 0;
    while i < plan.len() {
        let n = run_len(&plan[i..]);
        let run = &plan[i..i + n];
        i += n;
        let together = match (n > 1, region) {
            (true, pb::Region::Any | pb::Region::Primary) => read_run(&state.store, run).await,
            _ => None,
        };
        if let Some(blobs) = together {
            for ((id, _), data) in run.iter().zip(blobs) {
                if !send(Ok(reply(id, data, false))).await {
                    return;
                }
            }
            continue;
        }
        for (id, loc) in run {
            let msg = read_blob_any(&state, &group, id, loc, region)
                .await
                .map(|(data, secondary)| reply(id, data, secondary))
                .map_err(Status::from);
            let failed = msg.is_err();
            if !send(msg).await || failed {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(pack: &str, offset: u64, length: u32) -> (ChunkId, ChunkLocation) {
        (
            ChunkId([offset as u8; 32]),
            ChunkLocation {
                pack_key: pack.into(),
                offset,
                length,
                blob_hash: [0; 32],
            },
        )
    }

    #[test]
    fn runs_stop_at_another_pack_a_gap_a_step_back_or_the_size_cap() {
        let plan = vec![
            loc("a", 0, 100),
            loc("a", 100, 100),
            loc("a", 300, 100),
            loc("b", 400, 100),
        ];
        assert_eq!(
            run_len(&plan),
            3,
            "small gap read through, other pack stops"
        );
        let plan = vec![loc("a", 0, 100), loc("a", 100 + RUN_GAP + 1, 100)];
        assert_eq!(run_len(&plan), 1, "gap too large");
        let plan = vec![loc("a", 500, 100), loc("a", 0, 100)];
        assert_eq!(run_len(&plan), 1, "out of order");
        let big = u32::try_from(RUN_BYTES / 2).expect("fits");
        let plan = vec![
            loc("a", 0, big),
            loc("a", u64::from(big), big),
            loc("a", 2 * u64::from(big), 1),
        ];
        assert_eq!(run_len(&plan), 2, "capped at RUN_BYTES");
        assert_eq!(run_len(&[]), 0);
    }

    #[tokio::test]
    async fn a_run_with_a_bad_blob_is_refused_whole() {
        let store = Store::memory();
        let data = Bytes::from_static(b"aaaabbbbcccc");
        store.put_new("packs/x", data).await.expect("put");
        let mut plan = vec![
            loc("packs/x", 0, 4),
            loc("packs/x", 4, 4),
            loc("packs/x", 8, 4),
        ];
        for (i, b) in [b"aaaa", b"bbbb", b"cccc"].iter().enumerate() {
            plan[i].1.blob_hash = *blake3::hash(&b[..]).as_bytes();
        }
        let got = read_run(&store, &plan).await.expect("one read");
        assert_eq!(
            got.iter().map(|b| &b[..]).collect::<Vec<_>>(),
            [b"aaaa", b"bbbb", b"cccc"]
        );
        plan[1].1.blob_hash = [9; 32];
        assert!(
            read_run(&store, &plan).await.is_none(),
            "falls back blob by blob"
        );
    }
}
