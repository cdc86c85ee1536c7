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
//! [`stream`] takes the plan in windows of consecutive entries and reads each window's blobs
//! with one ranged GET per stretch of a pack ([`windows`]: agents ask in backup order, which a
//! changed file's chunks spread over the packs of several backups), from the primary, or from
//! the secondary when SECONDARY is asked for (the runbook's restore with the primary region
//! gone, where one GET per blob was one round trip per 8 KiB of a dump). Each blob is checked
//! against its BLAKE3 unless the caller verifies every blob itself (`caller_verifies`, set by
//! agents, which open each blob with their key and ask again, checked, for one that fails: 15%
//! of the controller's restore CPU went to checking blobs the agent checks anyway). A blob whose
//! GET or check fails goes alone through [`read_blob_any`], which always checks (relocation,
//! fallback, a precise error). With ANY, a span the primary fails to read (other than a missing
//! object, which may have been repacked) is read from the secondary, and so is the rest of that
//! stream ([`read_span`]): a primary region that is down costs each stream one failed read, not
//! one per blob. A window's messages go to the client together ([`Batches`]): one hand-off
//! between tasks per window instead of per blob.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

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

mod windows;

pub use windows::WINDOW_BLOB_BYTES;
use windows::{Span, Window, next_window};

/// Checks every id is referenced by a live snapshot of the owner (each first in the sets of the
/// snapshot that vouched for the id before it: [`snapshots::Vouch`]) and returns where each
/// blob lives.
pub async fn authorize(
    state: &State,
    owner: (String, String),
    ids: Vec<ChunkId>,
) -> Result<Vec<(ChunkId, ChunkLocation)>, ServiceError> {
    let (name, group) = owner;
    let covers = state.catalog.covers();
    state
        .catalog
        .run(move |c| {
            // A read transaction: one lock for all the lookups, not one per id.
            let tx = c.transaction()?;
            let mut vouch = snapshots::Vouch::new(&covers, &name);
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if !vouch.referenced(&tx, &id)? {
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

/// The primary and, if configured, the secondary store.
#[derive(Clone, Copy)]
struct Stores<'a> {
    primary: &'a Store,
    secondary: Option<&'a Store>,
}

/// Reads one span for `region`: its bytes (`None` if the read failed) and whether the secondary
/// served them. ANY with a secondary: a span the primary fails to read for any reason but a
/// missing object (which a repack may have moved: the blob-by-blob path looks it up again) is
/// read from the secondary, and so is every later span of the stream (`primary_failed`): a
/// primary region that is down costs one failed read per stream, not one per blob.
async fn read_span(
    stores: Stores<'_>,
    region: pb::Region,
    span: &Span<'_>,
    primary_failed: &mut bool,
) -> (Option<Bytes>, bool) {
    let fallback = stores.secondary.filter(|_| region == pb::Region::Any);
    match (region, stores.secondary) {
        (pb::Region::Secondary, Some(s)) => return (get_span(s, span).await.ok(), true),
        (pb::Region::Secondary, None) => return (None, true),
        (pb::Region::Any, Some(s)) if *primary_failed => {
            return (get_span(s, span).await.ok(), true);
        }
        _ => {}
    }
    match (get_span(stores.primary, span).await, fallback) {
        (Ok(data), _) => (Some(data), false),
        (Err(e), Some(s)) if !matches!(e, StoreError::NotFound { .. }) => {
            tracing::warn!(key = span.pack_key, error = %e, "a read failed on the primary; this restore stream reads the rest of its blobs from the secondary");
            *primary_failed = true;
            (get_span(s, span).await.ok(), true)
        }
        _ => (None, false),
    }
}

async fn get_span(store: &Store, span: &Span<'_>) -> Result<Bytes, StoreError> {
    store.get_range(span.pack_key, span.start..span.end).await
}

/// Reads a window's spans, one GET each ([`read_span`]), and returns each entry's blob and
/// whether the secondary served it, if its span was read and the blob matches its recorded
/// hash (`check`; unchecked when the caller verifies every blob itself); `None` for the others
/// (the caller reads those one by one, with relocation and failover).
async fn read_window(
    stores: Stores<'_>,
    region: pb::Region,
    entries: &[(ChunkId, ChunkLocation)],
    window: &Window<'_>,
    check: bool,
    primary_failed: &mut bool,
) -> Vec<Option<(Bytes, bool)>> {
    let mut spans = Vec::with_capacity(window.spans.len());
    for span in &window.spans {
        spans.push(read_span(stores, region, span, primary_failed).await);
    }
    entries
        .iter()
        .zip(&window.span_of)
        .map(|((_, loc), &s)| {
            let (data, secondary) = &spans[s];
            let data = data.as_ref()?;
            let from = usize::try_from(loc.offset - window.spans[s].start).ok()?;
            let blob = data.get(from..from.checked_add(loc.length as usize)?)?;
            let ok = !check || blake3::hash(blob).as_bytes() == &loc.blob_hash;
            ok.then(|| (data.slice(from..from + blob.len()), *secondary))
        })
        .collect()
}

/// Streams the blobs of `plan` in order into `tx` (ReadChunks), a window at a time, once the
/// controller's read budget admits it ([`crate::read_limit`]); stops at the first error, which
/// is sent, when the receiver goes away, or when it has not taken a window for the limiter's
/// stall timeout ([`crate::read_limit::STALL_TIMEOUT`]). `check`: whether blobs read in windows
/// are checked against their recorded hashes (unset `ReadChunksRequest.caller_verifies`); a
/// blob read on its own is always checked, since that is the read that fails over.
pub async fn stream(
    state: State,
    group: String,
    plan: Vec<(ChunkId, ChunkLocation)>,
    region: pb::Region,
    check: bool,
    tx: mpsc::Sender<Vec<Result<pb::ReadChunksResponse, Status>>>,
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
    let stores = Stores {
        primary: &state.store,
        secondary: state.secondary.as_ref(),
    };
    let mut primary_failed = false;
    let mut rest = &plan[..];
    while !rest.is_empty() {
        let window = next_window(rest);
        let (entries, after) = rest.split_at(window.len);
        rest = after;
        let read = read_window(stores, region, entries, &window, check, &mut primary_failed).await;
        let mut msgs = Vec::with_capacity(entries.len());
        for ((id, loc), blob) in entries.iter().zip(read) {
            let msg = match blob {
                Some((data, secondary)) => Ok(reply(id, data, secondary)),
                None => read_blob_any(&state, &group, id, loc, region)
                    .await
                    .map(|(data, secondary)| reply(id, data, secondary))
                    .map_err(Status::from),
            };
            let failed = msg.is_err();
            msgs.push(msg);
            if failed {
                send(msgs).await;
                return;
            }
        }
        if !send(msgs).await {
            return;
        }
    }
}

/// The `ReadChunks` response stream: the windows [`stream`] sends, handed to tonic one message
/// at a time. The channel wakes the encoder once per window, and the encoder then finds the
/// window's messages ready and packs them into fewer HTTP/2 frames and socket writes.
pub struct Batches<T> {
    rx: mpsc::Receiver<Vec<T>>,
    ready: std::vec::IntoIter<T>,
}

impl<T> Batches<T> {
    pub fn new(rx: mpsc::Receiver<Vec<T>>) -> Self {
        Batches {
            rx,
            ready: Vec::new().into_iter(),
        }
    }
}

impl<T: Unpin> tokio_stream::Stream for Batches<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.ready.next() {
                return Poll::Ready(Some(item));
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some(batch) => this.ready = batch.into_iter(),
                None => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use std::sync::Arc;

    use super::*;
    use crate::fault_store::{Fault, FaultStore, Op};

    fn blob(pack: &str, offset: u64, bytes: &[u8]) -> (ChunkId, ChunkLocation) {
        (
            ChunkId([offset as u8; 32]),
            ChunkLocation {
                pack_key: pack.into(),
                offset,
                length: bytes.len() as u32,
                blob_hash: *blake3::hash(bytes).as_bytes(),
            },
        )
    }

    /// What [`read_window`] served: each entry's bytes and whether the secondary served them.
    type Served = Vec<Option<(Vec<u8>, bool)>>;

    async fn read_in(
        stores: Stores<'_>,
        region: pb::Region,
        plan: &[(ChunkId, ChunkLocation)],
        check: bool,
        primary_failed: &mut bool,
    ) -> Served {
        let window = next_window(plan);
        assert_eq!(window.len, plan.len(), "one window");
        let got = read_window(stores, region, plan, &window, check, primary_failed).await;
        got.into_iter()
            .map(|b| b.map(|(b, secondary)| (b.to_vec(), secondary)))
            .collect()
    }

    async fn read(store: &Store, plan: &[(ChunkId, ChunkLocation)], check: bool) -> Served {
        let stores = Stores {
            primary: store,
            secondary: None,
        };
        read_in(stores, pb::Region::Any, plan, check, &mut false).await
    }

    fn served(blobs: &[&str], secondary: bool) -> Served {
        blobs
            .iter()
            .map(|b| Some((b.as_bytes().to_vec(), secondary)))
            .collect()
    }

    /// A store that counts its calls, holding `packs` (key, bytes).
    async fn counting_store(packs: &[(&str, &'static [u8])]) -> (Arc<FaultStore>, Store) {
        let faults = FaultStore::new(Store::memory().object_store().clone());
        let store = Store::from_object_store(faults.clone());
        for (key, bytes) in packs {
            store
                .put_new(key, Bytes::from_static(bytes))
                .await
                .expect("put");
        }
        (faults, store)
    }

    #[tokio::test]
    async fn a_window_reads_each_pack_once_and_refuses_only_the_blobs_that_fail() {
        let (faults, store) =
            counting_store(&[("packs/a", b"aaaabbbbcccc"), ("packs/b", b"xxxxyyyy")]).await;
        // Old and new chunks of a changed file, interleaved as a restore asks for them.
        let mut plan = vec![
            blob("packs/a", 0, b"aaaa"),
            blob("packs/b", 0, b"xxxx"),
            blob("packs/a", 4, b"bbbb"),
            blob("packs/b", 4, b"yyyy"),
            blob("packs/a", 8, b"cccc"),
        ];
        let before = faults.calls(Op::Get);
        let all = served(&["aaaa", "xxxx", "bbbb", "yyyy", "cccc"], false);
        assert_eq!(
            read(&store, &plan, true).await,
            all,
            "every blob, in plan order"
        );
        assert_eq!(faults.calls(Op::Get) - before, 2, "one GET per pack");

        plan[2].1.blob_hash = [9; 32];
        plan.push(blob("packs/gone", 0, b"zzzz"));
        let got = read(&store, &plan, true).await;
        assert_eq!(
            got[2], None,
            "a blob that fails its check is left to be read alone"
        );
        assert_eq!(got[5], None, "so is a blob whose GET failed");
        assert_eq!(
            [&got[..2], &got[3..5]].concat(),
            [&all[..2], &all[3..]].concat()
        );

        // When the caller verifies every blob, one is served as read; a failed GET is still
        // left to be read alone.
        let got = read(&store, &plan, false).await;
        assert_eq!(got[2], all[2], "served unchecked");
        assert_eq!(got[5], None);
    }

    #[tokio::test]
    async fn a_primary_that_fails_sends_the_rest_of_the_stream_to_the_secondary() {
        let (faults, primary) = counting_store(&[("packs/a", b"aaaabbbb")]).await;
        let secondary = Store::memory();
        for key in ["packs/a", "packs/b"] {
            let bytes: &'static [u8] = if key == "packs/a" {
                b"aaaabbbb"
            } else {
                b"xxxx"
            };
            secondary
                .put_new(key, Bytes::from_static(bytes))
                .await
                .expect("put");
        }
        let stores = Stores {
            primary: &primary,
            secondary: Some(&secondary),
        };
        let plan = vec![blob("packs/a", 0, b"aaaa"), blob("packs/a", 4, b"bbbb")];

        // A pack missing from the primary (perhaps repacked) is left to the blob-by-blob path,
        // which looks the chunk up again before any fallback.
        let mut failed = false;
        let missing = vec![blob("packs/b", 0, b"xxxx")];
        let got = read_in(stores, pb::Region::Any, &missing, true, &mut failed).await;
        assert_eq!(got, [None]);
        assert!(!failed, "a missing object does not turn the stream away");

        // Any other failure: the span comes from the secondary, and so does the rest.
        faults.inject(Op::Get, "", Fault::FailAll);
        let got = read_in(stores, pb::Region::Any, &plan, true, &mut failed).await;
        assert_eq!(got, served(&["aaaa", "bbbb"], true));
        assert!(failed);
        let gets = faults.calls(Op::Get);
        let got = read_in(stores, pb::Region::Any, &plan, true, &mut failed).await;
        assert_eq!(got, served(&["aaaa", "bbbb"], true));
        assert_eq!(
            faults.calls(Op::Get),
            gets,
            "the primary is not asked again"
        );

        // PRIMARY never falls back; SECONDARY reads only the secondary.
        let got = read_in(stores, pb::Region::Primary, &plan, true, &mut false).await;
        assert_eq!(got, [None, None]);
        faults.clear();
        let got = read_in(stores, pb::Region::Secondary, &plan, true, &mut false).await;
        assert_eq!(got, served(&["aaaa", "bbbb"], true));
    }

    #[tokio::test]
    async fn batches_come_out_one_by_one_in_order_and_end_with_the_sender() {
        let (tx, rx) = mpsc::channel(1);
        let reader = tokio::spawn(Batches::new(rx).collect::<Vec<u32>>());
        for batch in [vec![1, 2, 3], vec![], vec![4]] {
            tx.send(batch).await.expect("send");
        }
        drop(tx);
        assert_eq!(reader.await.expect("join"), [1, 2, 3, 4]);
    }
}
