//! The commit path (CommitSnapshot): header, reference batches → checks → objects → catalog.
//!
//! Order of effects (acknowledged means durable; a snapshot is visible only when complete):
//! 1. every referenced id and manifest id must be stored for the caller's dedup group; otherwise
//!    the response lists (up to [`MAX_MISSING_REPORTED`]) missing ids and nothing is written;
//! 2. the reference set (sorted, distinct, manifest ids included) is written as segment objects
//!    ([`crate::refset`], a few puts at a time: they are independent, and all have landed before
//!    the next step), then the snapshot record ([`crate::record`]), each fsync'd;
//! 3. one catalog transaction inserts the snapshot and its reference sets
//!    ([`crate::catalog::refsets`]: only sets no earlier snapshot of the group has), and queues the
//!    segments and the record for the secondary ([`crate::replication::queue::insert_snapshot_in`]);
//! 4. the response carries the new snapshot id.
//!
//! A crash between 2 and 3 leaves unreferenced objects (harmless, collectable), never a visible
//! snapshot with missing data. Every put runs under the server's store deadline
//! ([`crate::deadline`]).
//!
//! The check in 1 trusts the catalog: a chunk row exists only after its pack was put and
//! fsync'd, and only an admin action (GC) removes packs, after their rows. Commit therefore does
//! not HEAD every pack: an object lost behind the controller's back (deleted by hand, a damaged
//! disk) cannot be healed by re-upload anyway (ingest dedups against the catalog), and is
//! caught where it matters: by ReadChunks (`DATA_LOSS` naming chunk and pack) on restore and
//! by verification runs. When the catalog lacks an id (a catalog restored from an older copy),
//! the commit answers `missing` and the agent re-sends those chunks.
//!
//! Failpoints (crash tests): `commit.after_refs` (segments written), `commit.after_record`
//! (record object written, catalog not yet), `commit.after_catalog` (visible, response not
//! sent). Memory is bounded by the header's `reference_count`
//! (≤ [`crate::MAX_REFERENCE_COUNT`]): more ids than announced is rejected as they arrive.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::failpoint;
use lifeboat_common::ids::{ChunkId, SnapshotId};
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::commit_snapshot_request::Part;
use tonic::Streaming;

use crate::auth::AgentCtx;
use crate::catalog::chunks::{self, SessionRow};
use crate::catalog::snapshots::SnapshotRow;
use crate::catalog::{Catalog, chunk_epoch};
use crate::deadline;
use crate::error::ServiceError;
use crate::gc::pins::Checked;
use crate::ingest::owned_session;
use crate::record::{RECORD_FORMAT, SnapshotRecord, record_key};
use crate::refset;
use crate::replication::queue;
use crate::store::Store;
use crate::wire::{self, CommitHeader};

/// At most this many missing ids are returned by one rejected commit.
pub const MAX_MISSING_REPORTED: usize = 65_536;

async fn next(
    stream: &mut Streaming<pb::CommitSnapshotRequest>,
) -> Result<Option<Part>, ServiceError> {
    let msg = stream
        .message()
        .await
        .map_err(|s| ServiceError::invalid(format!("commit stream broken: {}", s.message())))?;
    match msg {
        None => Ok(None),
        Some(m) => m
            .part
            .map(Some)
            .ok_or_else(|| ServiceError::invalid("commit message has neither header nor refs")),
    }
}

/// Reads the header and every reference batch; returns the header and the sorted distinct ids.
async fn read_commit(
    stream: &mut Streaming<pb::CommitSnapshotRequest>,
) -> Result<(CommitHeader, Vec<ChunkId>), ServiceError> {
    let header = match next(stream).await? {
        Some(Part::Header(h)) => CommitHeader::try_from(h)?,
        Some(Part::Refs(_)) => {
            return Err(ServiceError::invalid(
                "the first commit message must be the header",
            ));
        }
        None => return Err(ServiceError::invalid("empty commit stream")),
    };
    let limit = usize::try_from(header.reference_count).unwrap_or(usize::MAX);
    let mut refs: Vec<ChunkId> = Vec::new();
    while let Some(part) = next(stream).await? {
        let Part::Refs(batch) = part else {
            return Err(ServiceError::invalid("a commit carries exactly one header"));
        };
        let ids = wire::ids(&batch.ids, "refs.ids")?;
        if refs.len() + ids.len() > limit {
            return Err(ServiceError::invalid(format!(
                "the commit carries more ids than its header's reference_count ({limit})"
            )));
        }
        refs.extend(ids);
    }
    refs.sort_unstable();
    refs.dedup();
    if refs.len() as u64 != header.reference_count {
        return Err(ServiceError::invalid(format!(
            "the commit carries {} distinct ids but its header announced reference_count = {}",
            refs.len(),
            header.reference_count
        )));
    }
    Ok((header, refs))
}

/// Runs one CommitSnapshot stream.
pub async fn commit(
    catalog: &Catalog,
    store: &Store,
    deadline: Duration,
    agent: &AgentCtx,
    mut stream: Streaming<pb::CommitSnapshotRequest>,
) -> Result<pb::CommitSnapshotResponse, ServiceError> {
    let (header, mut all) = read_commit(&mut stream).await?;
    let started = std::time::Instant::now();
    let session = owned_session(catalog, agent, &header.session).await?;
    all.extend(header.manifest_ids.iter().copied());
    all.sort_unstable();
    all.dedup();
    let group = agent.group.clone();
    let (all, checked) = first_check(catalog, group, all).await?;
    if !checked.missing.is_empty() {
        let mut missing = checked.missing;
        tracing::info!(agent = %agent.id, missing = missing.len(), "commit refused: chunks missing");
        missing.truncate(MAX_MISSING_REPORTED);
        return Ok(pb::CommitSnapshotResponse {
            snapshot_id: String::new(),
            missing: missing
                .iter()
                .map(|i| Bytes::copy_from_slice(i.as_bytes()))
                .collect(),
        });
    }
    let check_ms = started.elapsed().as_millis();
    match write_snapshot(
        catalog,
        (store, deadline),
        agent,
        &session,
        header,
        (all, checked),
    )
    .await?
    {
        Ok(id) => {
            tracing::debug!(agent = %agent.id, snapshot = %id, check_ms, total_ms = started.elapsed().as_millis(), "commit timings");
            Ok(pb::CommitSnapshotResponse {
                snapshot_id: id.to_string(),
                missing: Vec::new(),
            })
        }
        Err(mut missing) => {
            tracing::info!(agent = %agent.id, missing = missing.len(), "commit refused: chunks collected meanwhile");
            missing.truncate(MAX_MISSING_REPORTED);
            Ok(pb::CommitSnapshotResponse {
                snapshot_id: String::new(),
                missing: missing
                    .iter()
                    .map(|i| Bytes::copy_from_slice(i.as_bytes()))
                    .collect(),
            })
        }
    }
}

/// The commit's first check ([`Checked`]): the epoch on the writer, then the lookups in two
/// halves on the read-only connections side by side (the agent waits for the commit, so both
/// cores are free: 2.5 GiB, ~128,000 ids, 235 → ~130 ms). Returns the references back.
async fn first_check(
    catalog: &Catalog,
    group: String,
    all: Vec<ChunkId>,
) -> Result<(Vec<ChunkId>, Checked), ServiceError> {
    let epoch = catalog.run(|c| chunk_epoch::current(c)).await?;
    let all = Arc::new(all);
    let half = |lo: usize, hi: usize| {
        let (all, group) = (Arc::clone(&all), group.clone());
        catalog.read(move |c| {
            // A read transaction: one snapshot and one lock for all the lookups.
            let tx = c.transaction()?;
            let checked = Checked::look_up(&tx, &group, &all[lo..hi], epoch)?;
            tx.commit()?;
            Ok(checked)
        })
    };
    let mid = all.len() / 2;
    let (a, b) = tokio::try_join!(half(0, mid), half(mid, all.len()))?;
    let all = Arc::try_unwrap(all).unwrap_or_else(|shared| shared.as_ref().clone());
    Ok((all, a.and(b)))
}

async fn write_snapshot(
    catalog: &Catalog,
    (store, deadline): (&Store, Duration),
    agent: &AgentCtx,
    session: &SessionRow,
    header: CommitHeader,
    (all, checked): (Vec<ChunkId>, Checked),
) -> Result<Result<SnapshotId, Vec<ChunkId>>, ServiceError> {
    let segments = refset::segments(&all);
    let now = now_unix_ms();
    let id = SnapshotId::generate(now);
    let key = record_key(agent.id.as_str(), id.as_str());
    // GC must not delete these (content-named) keys between our puts and our catalog rows.
    let mut guarded: Vec<String> = segments.iter().map(|s| s.key.clone()).collect();
    guarded.push(key.clone());
    let _writing = crate::gc::guard::writing(guarded).await;
    let t = std::time::Instant::now();
    put_segments(store, deadline, &segments).await?;
    failpoint::hit("commit.after_refs");
    let segments_ms = t.elapsed().as_millis();
    // Re-read the session: its stored bytes include every upload that finished before now.
    let sid = session.id.clone();
    let stored_bytes = catalog
        .run(move |c| chunks::session(c, &sid))
        .await?
        .map_or(session.stored_bytes, |s| s.stored_bytes);
    let record = SnapshotRecord {
        format: RECORD_FORMAT,
        id: id.to_string(),
        agent: agent.id.to_string(),
        source: session.source.clone(),
        started_at_unix_ms: header.started_at,
        finished_at_unix_ms: header.finished_at,
        committed_at_unix_ms: now,
        stats: header.stats,
        stored_bytes,
        manifest_ids: header.manifest_ids.iter().map(|i| i.to_hex()).collect(),
        ref_segments: segments.iter().map(|s| s.key.clone()).collect(),
        reference_count: header.reference_count,
    };
    let record_bytes = record.to_bytes();
    deadline::put(store, deadline, &key, Bytes::from(record_bytes.clone())).await?;
    failpoint::hit("commit.after_record");
    let row = SnapshotRow {
        id: id.to_string(),
        agent: agent.id.to_string(),
        source: session.source.clone(),
        session_id: session.id.clone(),
        started_at: header.started_at,
        finished_at: header.finished_at,
        committed_at: now,
        stats: header.stats,
        stored_bytes,
        manifest_ids: header.manifest_ids,
        reference_count: header.reference_count,
        record_key: key,
    };
    let refs_count = all.len();
    let mut objects: Vec<queue::NewObject> = segments
        .iter()
        .map(|s| queued(&s.key, queue::Kind::Refs, &s.bytes))
        .collect();
    objects.push(queued(&row.record_key, queue::Kind::Record, &record_bytes));
    let group = agent.group.clone();
    // Re-validated in the same catalog closure as the insert (nothing else runs on the catalog
    // in between): a chunk GC swept since the first check is reported missing, condemned ones
    // are revived (each id looked up again only if a chunk row was deleted or condemned since
    // the first check: `Checked::revalidate`); then the session's pins end (its references keep
    // the chunks live).
    let t = std::time::Instant::now();
    let missing = catalog
        .run(move |c| {
            // One transaction: the check, the insert and the end of the pins commit together
            // (and the per-id checks read one snapshot of the catalog, without a lock each).
            let tx = c.transaction()?;
            let missing = checked.revalidate(&tx, &group, &all)?;
            if missing.is_empty() {
                queue::insert_snapshot_in(&tx, &row, &all, &group, &objects, now)?;
                crate::gc::pins::release(&tx, &row.session_id)?;
            }
            tx.commit()?;
            Ok(missing)
        })
        .await?;
    if !missing.is_empty() {
        return Ok(Err(missing));
    }
    failpoint::hit("commit.after_catalog");
    let catalog_ms = t.elapsed().as_millis();
    tracing::info!(agent = %agent.id, snapshot = %id, source = %session.source, refs = refs_count, stored_bytes, segments = segments.len(), segments_ms, catalog_ms, "snapshot committed");
    Ok(Ok(id))
}

/// Segment puts a commit has in progress at once: a new segment's put waits for its fsyncs,
/// and a rewritten dump changes every segment (29 at 2.5 GiB, one after another 37-56 ms).
const SEGMENT_PUTS: usize = 4;

/// Puts `segments`, [`SEGMENT_PUTS`] at a time; after a failure starts no more. Returns when
/// every put started has finished (none is abandoned half-way), with the first error if any.
async fn put_segments(
    store: &Store,
    deadline: Duration,
    segments: &[refset::Segment],
) -> Result<(), ServiceError> {
    let mut puts = tokio::task::JoinSet::new();
    let mut failed = None;
    for s in segments {
        while puts.len() >= SEGMENT_PUTS {
            keep_first_error(&mut failed, puts.join_next().await);
        }
        if failed.is_some() {
            break;
        }
        let (store, key, bytes) = (store.clone(), s.key.clone(), Bytes::from(s.bytes.clone()));
        puts.spawn(async move { deadline::put(&store, deadline, &key, bytes).await.map(drop) });
    }
    while let Some(done) = puts.join_next().await {
        keep_first_error(&mut failed, Some(done));
    }
    failed.map_or(Ok(()), Err)
}

/// Records `done`'s error in `failed` unless an earlier one is there.
fn keep_first_error(
    failed: &mut Option<ServiceError>,
    done: Option<Result<Result<(), ServiceError>, tokio::task::JoinError>>,
) {
    let err = match done {
        Some(Ok(Ok(()))) | None => return,
        Some(Ok(Err(e))) => e,
        Some(Err(e)) => ServiceError::Internal(format!("a reference segment's put stopped: {e}")),
    };
    failed.get_or_insert(err);
}

/// A replication queue row for an object this commit wrote.
fn queued(key: &str, kind: queue::Kind, bytes: &[u8]) -> queue::NewObject {
    queue::NewObject {
        key: key.to_owned(),
        kind,
        size: bytes.len() as u64,
        blake3: *blake3::hash(bytes).as_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::ObjectStore;

    use super::*;
    use crate::fault_store::{Fault, FaultStore, Op};

    fn segments(n: u8) -> Vec<refset::Segment> {
        (0..n)
            .map(|i| refset::Segment {
                key: format!("refs/{i:02x}/{i:064x}"),
                bytes: vec![i; 100],
            })
            .collect()
    }

    /// Segments (put several at a time) all land; after a failed put no more start, and
    /// the commit gets the first error once the puts in progress have finished.
    #[tokio::test]
    async fn segment_puts_all_land_and_stop_after_a_failure() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let faults = FaultStore::new(inner);
        let as_store: Arc<dyn ObjectStore> = faults.clone();
        let store = Store::from_object_store(as_store);
        let all = segments(12);
        put_segments(&store, Duration::from_secs(30), &all)
            .await
            .expect("puts");
        for s in &all {
            let got = store.get(&s.key).await.expect("stored");
            assert_eq!(got.as_ref(), s.bytes.as_slice());
        }

        let more = segments(40);
        let before = faults.calls(Op::Put);
        faults.inject(Op::Put, "refs/", Fault::FailAll);
        let e = put_segments(&store, Duration::from_secs(30), &more)
            .await
            .expect_err("a failed put fails the commit");
        assert!(
            matches!(e, ServiceError::Unavailable(_) | ServiceError::Store(_)),
            "{e:?}"
        );
        let tried = faults.calls(Op::Put) - before;
        assert!(
            tried <= SEGMENT_PUTS as u64 * 2,
            "puts kept starting after the first failure: {tried}"
        );
    }
}
