//! Batched, pipelined deduplication and upload of chunks for one session.
//!
//! Chunks are collected into a batch of at most `max_ids` ids and [`BATCH_BYTES`] of plaintext.
//! A full batch is *launched*: a flight asks `HaveChunks` for its ids, seals only the missing ones
//! (on [`seal_threads`] blocking threads that share the batch's chunks) and uploads them in one
//! `UploadChunks` call, whose answer means they are durable. [`FLIGHTS`] flights may be in the
//! air, up to [`MAX_FLIGHTS`] while those hold less than [`HELD_BELOW`] (one under a bandwidth
//! limit, so the throttle sees every byte in order): launching another first waits for room
//! (the oldest landing, or the flights holding less), so memory is bounded by about
//! `FLIGHTS + 1` batches plus [`HELD_BELOW`] whatever the data size. Two flights hide the
//! controller's per-pack fsync behind the next batch's sealing. A flight that finds less than
//! [`CARRY_BELOW`] of its batch missing hands those chunks back instead of uploading them; the
//! next flight uploads them with its own (without asking again), and a flush uploads all that
//! is carried. The caller drives flights while it waits for more chunks with
//! [`Uploader::recv_landing`] (or [`Uploader::land`], cancel-safe, in its own `select!`);
//! otherwise they advance only when a launch or [`Uploader::flush`] waits for them.
//!
//! Invariant: an id is recorded durable only when its flight landed (`HaveChunks` said present,
//! or its upload was acknowledged); a carried id is back in the current batch, with its
//! plaintext, until a flight uploads it. Ids carrying data in the flying batch are skipped by later
//! batches: if that flight fails, the whole backup fails before any commit. [`Uploader::flush`]
//! lands everything, so a commit after it references only acknowledged chunks.
//!
//! Ids from the file cache never come here: they are presumed stored (`read`'s module docs)
//! and checked by the commit.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use lifeboat_common::blob;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::DataKeys;
use tokio::sync::mpsc;

use super::throttle::Throttle;
use super::{BackupProgress, Progress};
use crate::error::AgentError;
use crate::remote::{Remote, Session};

/// Most plaintext bytes held in one batch.
pub const BATCH_BYTES: usize = 4 << 20;
/// Batches in the air at once whatever they hold (without a bandwidth limit).
pub const FLIGHTS: usize = 2;
/// Most batches in the air at once: past [`FLIGHTS`], another launches only while the flights
/// in the air hold less than [`HELD_BELOW`]. A flight holds its batch's plaintext until
/// `HaveChunks` answers, then only what it uploads: in a backup that finds most chunks present
/// (a rewritten dump), flights hold little once answered, and the reader no longer waits for a
/// flight that uploads (~20 ms) before the next batch is asked about (1 GiB, 1% change: the
/// reader was blocked 0.33 of 0.8 s). A backup that uploads everything keeps two flights.
pub const MAX_FLIGHTS: usize = 4;
/// Bytes (plaintext and sealed blobs) the flights in the air may hold for one more to launch
/// past [`FLIGHTS`].
pub const HELD_BELOW: usize = BATCH_BYTES;
/// A flight whose missing chunks hold less plaintext than this does not upload them: it hands
/// them back ([`Landed::carried`]) and the next flight uploads them with its own. A backup that
/// finds most chunks present (a dump with 1% of its rows changed: ~60 new 8 KiB chunks per
/// 4 MiB batch) then stores a few large packs instead of one small pack per batch, each an
/// `UploadChunks` round trip, a pack fsync and a catalog transaction. [`Uploader::flush`] uploads
/// whatever is carried.
pub const CARRY_BELOW: usize = 2 << 20;
/// Most ids remembered as durable. The set only spares `HaveChunks` questions about ids that
/// repeat within one backup; past this many it starts over, so its memory (≈ 1 MiB) does not
/// grow with the source (a 2.5 GiB source has ~135,000 chunks: an 8 MiB table).
pub const DURABLE_CAP: usize = 28_000;

/// Totals of what was uploaded.
#[derive(Clone, Copy, Debug, Default)]
pub struct UploadStats {
    pub new_chunks: u64,
    pub new_logical_bytes: u64,
    pub uploaded_bytes: u64,
}

/// One batch's chunks: the id and the plaintext.
type Batch = Vec<(ChunkId, Vec<u8>)>;

/// A chunk waiting to be sealed, taken by the thread that seals it.
type Slot = Mutex<Option<(ChunkId, Vec<u8>)>>;

/// A launched batch, until it lands.
type Flight<'a> = Pin<Box<dyn Future<Output = Result<Landed, AgentError>> + Send + 'a>>;

/// A launched batch, its outcome once known, and the ids carrying plaintext in it.
struct InAir<'a> {
    flight: Flight<'a>,
    done: Option<Result<Landed, AgentError>>,
    flying: HashSet<ChunkId>,
    /// Bytes the flight holds now (it updates this as it answers, seals and uploads).
    held: Arc<AtomicUsize>,
}

/// What a flight learnt.
struct Landed {
    /// Ids now known durable (present already, or uploaded and acknowledged).
    durable: Vec<ChunkId>,
    /// Missing chunks not uploaded yet (less than [`CARRY_BELOW`]): the next flight's.
    carried: Vec<(ChunkId, Vec<u8>)>,
    stats: UploadStats,
    throttle: Option<Throttle>,
}

pub struct Uploader<'a, R: Remote> {
    remote: &'a R,
    session: Session,
    keys: DataKeys,
    zstd_level: i32,
    batch: Batch,
    in_batch: HashSet<ChunkId>,
    batch_bytes: usize,
    /// Ids of the current batch known to be missing (carried back by a flight, with their
    /// plaintext): uploaded by the next flight without asking again. Their bytes are not
    /// counted against the batch limit (at most `FLIGHTS × CARRY_BELOW` more).
    batch_missing: HashSet<ChunkId>,
    durable: HashSet<ChunkId>,
    /// [`DURABLE_CAP`]; smaller in tests.
    durable_cap: usize,
    pub stats: UploadStats,
    /// The policy's upload limit, if any ([`super::throttle`]); lent to the flying batch.
    throttle: Option<Throttle>,
    batch_limit: usize,
    max_flights: usize,
    progress: Option<ProgressState>,
    /// Launched batches, oldest first.
    in_air: VecDeque<InAir<'a>>,
    /// When the session last called the controller (a launch, or [`Uploader::keep_alive`]).
    last_call: Instant,
    /// [`KEEP_ALIVE`]; shorter in tests.
    keep_alive_after: Duration,
}

/// Longest the uploader lets the session go without a call ([`Uploader::keep_alive`]): each call
/// renews the session's lease (one hour by default; `[gc] lease` may set it shorter), which
/// protects what it was told it has from garbage collection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Where progress goes and when it was last told.
struct ProgressState {
    tell: Progress,
    now: BackupProgress,
    /// `None` until first told: the first advance is always told.
    last: Option<Instant>,
}

/// How often progress is told at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl<'a, R: Remote> Uploader<'a, R> {
    pub fn new(remote: &'a R, session: Session, keys: DataKeys, zstd_level: i32) -> Self {
        Uploader {
            remote,
            session,
            keys,
            zstd_level,
            batch: Vec::new(),
            in_batch: HashSet::new(),
            batch_bytes: 0,
            batch_missing: HashSet::new(),
            durable: HashSet::new(),
            durable_cap: DURABLE_CAP,
            stats: UploadStats::default(),
            throttle: None,
            batch_limit: BATCH_BYTES,
            max_flights: MAX_FLIGHTS,
            progress: None,
            in_air: VecDeque::new(),
            last_call: Instant::now(),
            keep_alive_after: KEEP_ALIVE,
        }
    }

    /// Tells `tell` how the backup of `source` advances (`total`: 0 when unknown).
    pub fn with_progress(mut self, tell: Progress, source: &str, total: u64) -> Self {
        self.progress = Some(ProgressState {
            tell,
            now: BackupProgress {
                source: source.to_owned(),
                bytes_total: total,
                ..BackupProgress::default()
            },
            last: None,
        });
        self
    }

    fn advance(&mut self, bytes: u64) {
        let uploaded = self.stats.uploaded_bytes;
        if let Some(p) = &mut self.progress {
            p.now.bytes_done += bytes;
            p.now.uploaded_bytes = uploaded;
            if p.last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                p.last = Some(Instant::now());
                (p.tell)(&p.now);
            }
        }
    }

    /// Limits uploads to `bytes_per_sec` (0: unlimited).
    pub fn with_bandwidth(mut self, bytes_per_sec: u64) -> Self {
        self.throttle = Throttle::new(bytes_per_sec);
        self.batch_limit = self
            .throttle
            .as_ref()
            .map_or(BATCH_BYTES, |t| t.batch_bytes(BATCH_BYTES));
        self.max_flights = if self.throttle.is_some() {
            1
        } else {
            MAX_FLIGHTS
        };
        self
    }

    /// Holds at most `bytes` of plaintext per batch, and [`FLIGHTS`] batches in the air, from
    /// now on (less if the limits were lower already: a bandwidth limit's). For the manifest's
    /// chunks, which arrive faster than the flights land (see `manifest_upload`).
    pub fn narrow_batches(&mut self, bytes: usize) {
        self.batch_limit = self.batch_limit.min(bytes);
        self.max_flights = self.max_flights.min(FLIGHTS);
    }

    /// Whether `id` is durable, or carries plaintext in a flying batch (it will be durable, or
    /// the backup fails).
    fn known(&self, id: &ChunkId) -> bool {
        self.durable.contains(id) || self.in_air.iter().any(|a| a.flying.contains(id))
    }

    /// Forgets which ids are durable (memory: one entry per chunk of the source). Later chunks
    /// are asked about with `HaveChunks` like new ones. Call only with nothing in the air.
    pub fn forget_durable(&mut self) {
        debug_assert!(self.in_air.is_empty());
        self.durable = HashSet::new();
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Counts the bytes of chunks the reader presumed stored (a cached file's, and a changed
    /// file's chunks its previous version had: see `read`'s module docs). They are not asked
    /// about or uploaded; the commit checks them.
    pub fn count_presumed(&mut self, bytes: u64) {
        if bytes > 0 {
            self.advance(bytes);
        }
    }

    /// Renews the session's lease if nothing has called the controller for [`KEEP_ALIVE`] and
    /// no flight is in the air, by asking about no ids. Call as the backup goes on: a stretch
    /// that launches no batch (a large file changed in few places, its chunks presumed stored,
    /// or a slow read) makes no calls of its own.
    pub async fn keep_alive(&mut self) -> Result<(), AgentError> {
        if self.in_air.is_empty() && self.last_call.elapsed() >= self.keep_alive_after {
            self.remote.have_chunks(&self.session.id, &[]).await?;
            self.last_call = Instant::now();
        }
        Ok(())
    }

    /// Adds a chunk read from a file or the manifest.
    pub async fn add(&mut self, id: ChunkId, data: Vec<u8>) -> Result<(), AgentError> {
        self.advance(data.len() as u64);
        if self.known(&id) {
            return Ok(());
        }
        if self.in_batch.contains(&id) {
            return Ok(());
        }
        // A chunk that would take the batch past its limit goes into the next one: a batch of
        // large file chunks (up to 4 MiB each) otherwise reached twice the limit, and two
        // flights plus the filling batch of those were the agent's peak.
        if self.batch_bytes > 0 && self.batch_bytes + data.len() > self.batch_limit {
            self.launch(true).await?;
        }
        self.in_batch.insert(id);
        self.batch_bytes += data.len();
        self.batch.push((id, data));
        self.maybe_flush().await
    }

    /// Puts a chunk a flight found missing but did not upload into the current batch.
    fn take_back(&mut self, id: ChunkId, data: Vec<u8>) {
        self.batch_missing.insert(id);
        // Added again meanwhile: the batch holds its plaintext already.
        if self.in_batch.insert(id) {
            self.batch.push((id, data));
        }
    }

    async fn maybe_flush(&mut self) -> Result<(), AgentError> {
        if self.batch.len() >= self.session.max_ids || self.batch_bytes >= self.batch_limit {
            self.launch(true).await?;
        }
        Ok(())
    }

    /// The next message on `rx` (`None` once it is closed), driving the flights in the air
    /// meanwhile: each lands as soon as it can instead of holding its chunks until a launch
    /// waits for room.
    pub async fn recv_landing<T>(
        &mut self,
        rx: &mut mpsc::Receiver<T>,
    ) -> Result<Option<T>, AgentError> {
        loop {
            tokio::select! {
                biased;
                landed = self.land(), if self.is_flying() => landed?,
                msg = rx.recv() => return Ok(msg),
            }
        }
    }

    /// Whether a batch is in the air ([`Uploader::land`] has something to wait for).
    pub fn is_flying(&self) -> bool {
        !self.in_air.is_empty()
    }

    /// Drives every flying batch until the oldest lands, and records what it learnt.
    /// Cancel-safe: dropped before that, the flights stay in the air and the next call resumes.
    pub async fn land(&mut self) -> Result<(), AgentError> {
        if self.drive(false).await {
            self.record_oldest()?;
        }
        Ok(())
    }

    /// Drives every flying batch until the oldest is done (true) or, with `until_light`, until
    /// the flights in the air hold less than [`HELD_BELOW`] (false, sooner when the
    /// flights waited for are answered while an older one still uploads). Cancel-safe.
    async fn drive(&mut self, until_light: bool) -> bool {
        if self.in_air.is_empty() {
            return false;
        }
        let in_air = &mut self.in_air;
        std::future::poll_fn(|cx| {
            for a in in_air.iter_mut() {
                if a.done.is_none()
                    && let Poll::Ready(r) = a.flight.as_mut().poll(cx)
                {
                    a.done = Some(r);
                }
            }
            if in_air.front().is_some_and(|a| a.done.is_some()) {
                Poll::Ready(true)
            } else if until_light && held(in_air) < HELD_BELOW {
                Poll::Ready(false)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Takes the oldest flight, done, out of the air and records what it learnt.
    fn record_oldest(&mut self) -> Result<(), AgentError> {
        let Some(landed) = self.in_air.pop_front().and_then(|a| a.done) else {
            return Err(AgentError::Worker(
                "an upload batch landed without an outcome".into(),
            ));
        };
        let landed = landed?;
        if self.durable.len() + landed.durable.len() > self.durable_cap {
            self.durable.clear();
        }
        self.durable.extend(landed.durable);
        for (id, data) in landed.carried {
            self.take_back(id, data);
        }
        self.stats.new_chunks += landed.stats.new_chunks;
        self.stats.new_logical_bytes += landed.stats.new_logical_bytes;
        self.stats.uploaded_bytes += landed.stats.uploaded_bytes;
        if landed.throttle.is_some() {
            self.throttle = landed.throttle;
        }
        Ok(())
    }

    /// Lands the oldest batches until there is room, then launches the current one (if any).
    /// `carry`: the flight may hand back a few missing chunks ([`CARRY_BELOW`]) instead of
    /// uploading them; a flush launches with `false`.
    async fn launch(&mut self, carry: bool) -> Result<(), AgentError> {
        loop {
            let full = self.in_air.len() >= self.max_flights;
            let heavy = self.in_air.len() >= FLIGHTS && held(&self.in_air) >= HELD_BELOW;
            if !full && !heavy {
                break;
            }
            // Heavy only: wait until the flights hold less, not for the oldest to land.
            if self.drive(!full).await {
                self.record_oldest()?;
            }
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        self.last_call = Instant::now();
        let batch = std::mem::take(&mut self.batch);
        let known_missing = std::mem::take(&mut self.batch_missing);
        self.in_batch.clear();
        self.batch_bytes = 0;
        let flying = batch.iter().map(|(id, _)| *id).collect();
        let crew = Crew {
            remote: self.remote,
            session: self.session.id.clone(),
            max_ids: self.session.max_ids.max(1),
            keys: self.keys.clone(),
            level: self.zstd_level,
            throttle: self.throttle.take(),
            carry_below: if carry { CARRY_BELOW } else { 0 },
        };
        let held = Arc::new(AtomicUsize::new(bytes_of(&batch)));
        self.in_air.push_back(InAir {
            flight: Box::pin(crew.fly(batch, known_missing, Arc::clone(&held))),
            done: None,
            flying,
            held,
        });
        Ok(())
    }

    /// Uploads everything added so far and waits until it is durable. Call once more at the end.
    /// Flights launched here carry nothing; chunks carried back by flights launched before go
    /// up in one more.
    pub async fn flush(&mut self) -> Result<(), AgentError> {
        loop {
            self.launch(false).await?;
            while self.is_flying() {
                self.land().await?;
            }
            if self.batch.is_empty() {
                return Ok(());
            }
        }
    }
}

/// What a flight needs, owned or shared, so it can run beside the filling of the next batch.
struct Crew<'a, R: Remote> {
    remote: &'a R,
    session: String,
    max_ids: usize,
    keys: DataKeys,
    level: i32,
    throttle: Option<Throttle>,
    /// Missing chunks holding less plaintext than this are carried, not uploaded (0: never).
    carry_below: usize,
}

impl<R: Remote> Crew<'_, R> {
    /// Asks which ids are missing (except `known_missing`), seals and uploads those, or hands
    /// them back when they are few ([`CARRY_BELOW`]).
    async fn fly(
        mut self,
        batch: Batch,
        known_missing: HashSet<ChunkId>,
        held: Arc<AtomicUsize>,
    ) -> Result<Landed, AgentError> {
        let t0 = Instant::now();
        let ids: Vec<ChunkId> = batch
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !known_missing.contains(id))
            .collect();
        // Chunks carried back are put into the batch without a launch, so it can hold more
        // than max_ids ids: ask in slices.
        let mut missing = known_missing;
        for part in ids.chunks(self.max_ids) {
            missing.extend(self.remote.have_chunks(&self.session, part).await?);
        }
        let mut durable = Vec::with_capacity(batch.len());
        let mut to_seal = Vec::new();
        for (id, data) in batch {
            if missing.contains(&id) {
                to_seal.push((id, data));
            } else {
                durable.push(id);
            }
        }
        let mut stats = UploadStats::default();
        let t_have = t0.elapsed();
        // The plaintext this flight seals and uploads (none when it carries its chunks on).
        let plain = bytes_of(&to_seal);
        let (carried, sealing) = if plain < self.carry_below {
            (std::mem::take(&mut to_seal), 0)
        } else {
            (Vec::new(), plain)
        };
        held.store(sealing, Ordering::Relaxed);
        if !to_seal.is_empty() {
            stats.new_logical_bytes = sealing as u64;
            stats.new_chunks = to_seal.len() as u64;
            let blobs = seal_all(&self.keys, self.level, to_seal).await?;
            let t_seal = t0.elapsed();
            stats.uploaded_bytes = blobs.iter().map(|(_, b)| b.len() as u64).sum();
            held.store(bytes_of(&blobs), Ordering::Relaxed);
            let uploaded: Vec<ChunkId> = blobs.iter().map(|(id, _)| *id).collect();
            if let Some(t) = &mut self.throttle {
                t.before_send(stats.uploaded_bytes).await;
            }
            self.remote.upload(&self.session, blobs).await?;
            tracing::debug!(
                chunks = stats.new_chunks,
                have_ms = t_have.as_millis() as u64,
                sealed_ms = t_seal.as_millis() as u64,
                landed_ms = t0.elapsed().as_millis() as u64,
                "upload batch landed"
            );
            lifeboat_common::failpoint::hit("agent.after_upload_batch");
            durable.extend(uploaded);
        }
        held.store(0, Ordering::Relaxed);
        Ok(Landed {
            durable,
            carried,
            stats,
            throttle: self.throttle,
        })
    }
}

/// Bytes held by the flights in the air.
fn held(in_air: &VecDeque<InAir<'_>>) -> usize {
    in_air
        .iter()
        .filter(|a| a.done.is_none())
        .map(|a| a.held.load(Ordering::Relaxed))
        .sum()
}

/// Bytes of the chunks or blobs in `items`.
fn bytes_of(items: &[(ChunkId, Vec<u8>)]) -> usize {
    items.iter().map(|(_, d)| d.len()).sum()
}

/// Threads sealing one batch: one per core, at least two.
pub fn seal_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// Seals one chunk: zstd only if a sample says it is worth it ([`blob::worth_compressing`]).
pub(crate) fn seal_one(
    keys: &DataKeys,
    level: i32,
    id: ChunkId,
    data: &[u8],
) -> Result<(ChunkId, Vec<u8>), AgentError> {
    let level = if level != 0 && blob::worth_compressing(data) {
        level
    } else {
        0
    };
    blob::seal(keys, &id, data, level)
        .map(|b| (id, b))
        .map_err(|source| AgentError::Blob {
            what: "a backup".into(),
            id,
            source,
        })
}

/// Seals chunks on [`seal_threads`] blocking threads taking the next chunk as they finish one
/// (chunks differ in cost: text compresses slowly, media is stored raw), preserving order.
async fn seal_all(
    keys: &DataKeys,
    level: i32,
    chunks: Vec<(ChunkId, Vec<u8>)>,
) -> Result<Vec<(ChunkId, Vec<u8>)>, AgentError> {
    let count = chunks.len();
    // Each slot is taken by the thread sealing it, which drops the plaintext once sealed: a
    // batch's plaintext and its blobs are not both held whole.
    let slots: Arc<Vec<Slot>> = Arc::new(chunks.into_iter().map(|c| Mutex::new(Some(c))).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..seal_threads().min(count) {
        let (keys, slots, next) = (keys.clone(), slots.clone(), next.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = slots.get(i) else {
                    return Ok::<_, AgentError>(out);
                };
                let taken = slot
                    .lock()
                    .map_err(|_| AgentError::Worker("a sealing thread panicked".into()))?
                    .take();
                if let Some((id, data)) = taken {
                    out.push((i, seal_one(&keys, level, id, &data)?));
                }
            }
        }));
    }
    let mut sealed: Vec<Option<(ChunkId, Vec<u8>)>> = (0..count).map(|_| None).collect();
    for task in tasks {
        let part = task
            .await
            .map_err(|e| AgentError::Worker(e.to_string()))??;
        for (i, blob) in part {
            sealed[i] = Some(blob);
        }
    }
    drop(slots);
    sealed
        .into_iter()
        .map(|b| b.ok_or_else(|| AgentError::Worker("a sealing thread skipped a chunk".into())))
        .collect()
}

#[cfg(test)]
mod tests;
