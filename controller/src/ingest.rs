//! The upload path (UploadChunks): blobs → in-memory pack → put + fsync → catalog → response.
//!
//! Invariants:
//! - A blob is acknowledged only after its pack object is durable AND its chunk row is committed
//!   (the response is sent after the last flush). A broken stream loses nothing acknowledged:
//!   packs flushed before the break are recorded; the partial pack in memory was never acked.
//! - The catalog transaction that records a pack also queues it for the secondary store
//!   ([`crate::replication::queue`], in `chunks::record_pack`).
//! - Memory per stream is bounded by one pack ([`crate::pack::TARGET_PACK_BYTES`]) plus one
//!   message ([`crate::MAX_MESSAGE_BYTES`]).
//! - Dedup is scoped to the caller's group: blobs the group already has are skipped and counted
//!   as already present; chunks of other groups are never consulted.
//! - Every put runs under the server's store deadline ([`crate::deadline`]): a hanging store
//!   fails the call with `UNAVAILABLE`, recording nothing.
//!
//! Failpoints (crash tests, [`lifeboat_common::failpoint`]): `ingest.before_pack_put`,
//! `ingest.after_pack_put` (object durable, catalog not yet), `ingest.after_catalog` (pack
//! recorded, response not sent).

use std::time::Duration;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::failpoint;
use lifeboat_proto::v1 as pb;
use tonic::Streaming;

use crate::auth::AgentCtx;
use crate::catalog::Catalog;
use crate::catalog::chunks::{self, RecordOutcome, SessionRow};
use crate::deadline;
use crate::error::ServiceError;
use crate::pack::PackBuilder;
use crate::store::Store;
use crate::wire::{SessionId, UploadBatch};

/// Loads a session and checks that it belongs to `agent`.
pub async fn owned_session(
    catalog: &Catalog,
    agent: &AgentCtx,
    id: &SessionId,
) -> Result<SessionRow, ServiceError> {
    let sid = id.as_str().to_owned();
    let row = catalog.run(move |c| chunks::session(c, &sid)).await?;
    match row {
        Some(s) if s.agent == agent.id.as_str() => Ok(s),
        _ => Err(ServiceError::NotFound(format!(
            "upload session {} does not exist for agent {}; call BeginSession again",
            id.as_str(),
            agent.id
        ))),
    }
}

struct Upload<'a> {
    catalog: &'a Catalog,
    store: &'a Store,
    deadline: Duration,
    lease: Duration,
    agent: &'a AgentCtx,
    session: SessionRow,
    pack: PackBuilder,
    totals: RecordOutcome,
}

impl Upload<'_> {
    async fn add(&mut self, batch: UploadBatch) -> Result<(), ServiceError> {
        let ids: Vec<_> = batch.blobs.iter().map(|(id, _)| *id).collect();
        let (group, session, lease) = (
            self.agent.group.clone(),
            self.session.id.clone(),
            self.lease,
        );
        // Blobs skipped as stored are pinned (and revived if condemned) in the same transaction
        // that found them ([`crate::gc::pins`]).
        let covers = self.catalog.covers();
        let present = self
            .catalog
            .run(move |c| {
                let now = now_unix_ms();
                crate::gc::pins::pin_present(c, &covers, &session, &group, &ids, now, lease)
            })
            .await?;
        for (id, data) in batch.blobs {
            if present.contains(&id) || self.pack.contains(&id) {
                self.totals.already_present += 1;
                continue;
            }
            self.pack.push(id, &data);
            if self.pack.is_full() {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ServiceError> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let sealed = self.pack.finish();
        // GC must not delete this (content-named) key between our put and our catalog row.
        let _writing = crate::gc::guard::writing(vec![sealed.key.clone()]).await;
        failpoint::hit("ingest.before_pack_put");
        let (key, bytes) = (&sealed.key, sealed.bytes.clone());
        deadline::put_hashed(self.store, self.deadline, key, bytes, sealed.name).await?;
        failpoint::hit("ingest.after_pack_put");
        let (group, session, now) = (
            self.agent.group.clone(),
            self.session.id.clone(),
            now_unix_ms(),
        );
        let key = sealed.key.clone();
        let bytes = sealed.bytes.len();
        let out = self
            .catalog
            .run(move |c| {
                // One transaction (one WAL sync): the pack, its chunk rows, and pins for the
                // chunks another upload recorded first. The rows this pack creates need no pin:
                // they are younger than this open session's start, which bounds GC's condemn
                // cutoff ([`crate::gc::mark::cutoff`]) for as long as its lease runs.
                let tx = c.transaction()?;
                let (out, existing) = chunks::record_pack_in(&tx, &group, &session, &sealed, now)?;
                crate::gc::pins::pin(&tx, &session, &group, &existing)?;
                tx.commit()?;
                Ok(out)
            })
            .await?;
        failpoint::hit("ingest.after_catalog");
        tracing::info!(agent = %self.agent.id, pack = %key, bytes, chunks = out.stored, "pack stored");
        self.totals.stored += out.stored;
        self.totals.stored_bytes += out.stored_bytes;
        self.totals.already_present += out.already_present;
        Ok(())
    }
}

/// Runs one UploadChunks stream to completion. `lease`: how long each batch extends the
/// session's pins ([`crate::gc::pins`]).
pub async fn upload(
    catalog: &Catalog,
    store: &Store,
    (deadline, lease): (Duration, Duration),
    agent: &AgentCtx,
    mut stream: Streaming<pb::UploadChunksRequest>,
) -> Result<pb::UploadChunksResponse, ServiceError> {
    let mut up: Option<Upload<'_>> = None;
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| ServiceError::invalid(format!("upload stream broken: {}", s.message())))?
    {
        let batch = UploadBatch::try_from(msg)?;
        // Revocation takes effect mid-stream (checked per message).
        crate::auth::still_enrolled(catalog, agent).await?;
        match &mut up {
            None => {
                let session = owned_session(catalog, agent, &batch.session).await?;
                let mut u = Upload {
                    catalog,
                    store,
                    deadline,
                    lease,
                    agent,
                    session,
                    pack: PackBuilder::new(),
                    totals: RecordOutcome::default(),
                };
                u.add(batch).await?;
                up = Some(u);
            }
            Some(u) => {
                if u.session.id != batch.session.as_str() {
                    return Err(ServiceError::invalid(
                        "all messages of one upload stream must carry the same session id",
                    ));
                }
                u.add(batch).await?;
            }
        }
    }
    let Some(mut u) = up else {
        return Ok(pb::UploadChunksResponse::default());
    };
    u.flush().await?;
    Ok(pb::UploadChunksResponse {
        chunks_stored: u.totals.stored,
        bytes_stored: u.totals.stored_bytes,
        chunks_already_present: u.totals.already_present,
    })
}
