//! The replication worker: a named task (`replication-worker`) started by `serve`, stopped by its
//! cancellation token.
//!
//! Each round takes up to `batch` ready rows ([`queue::ready`]) and runs them with at most
//! `concurrency` in flight. A copy reads the object from its source store, checks its size and
//! BLAKE3 against the row (a damaged source is never propagated), puts it into the destination
//! (`put_new`: an existing object counts only if identical; a repair overwrites the damaged
//! primary copy), then checks the size the destination reports. Failures are recorded on the row
//! with `next_attempt_at` pushed out exponentially (`base * 2^attempts`, capped at `max`), so a
//! secondary that is down costs one failed attempt per row per backoff period, and the queue
//! resumes from the catalog after a restart.
//!
//! A copy that finds a different object already in the secondary (a scrub found it damaged and
//! re-armed the row) overwrites it: the bytes it writes were just verified against the row.
//!
//! A copy whose source object is gone from the primary while a delete of its key is queued
//! ([`super::deletes`]: retention removed it before it was copied) is closed without copying.
//!
//! Beside the copies, [`Worker::spawn`] starts the worker's maintenance task: every
//! [`MAINTENANCE_TICK`] it runs the delayed deletes that are due ([`super::deletes`], only when
//! `[secondary] deletes` is on) and every `scrub_interval` a scrub of `scrub_sample` objects
//! ([`super::scrub`]).
//!
//! Failpoint: `replication.before_copy` (a row was claimed, nothing copied yet; `error` makes
//! the copy fail like an unreachable secondary, `abort` crashes the controller there).

use std::sync::Arc;
use std::time::Duration;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::failpoint;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::queue::{self, Job, Op};
use super::{ReplicationError, Runtime, deletes, scrub};
use crate::catalog::Catalog;
use crate::store::{PutOutcome, Store, StoreError};

/// How often the maintenance task looks for due deletes.
pub const MAINTENANCE_TICK: Duration = Duration::from_secs(60);

/// Tuning of the worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Copies in flight at most.
    pub concurrency: usize,
    /// Rows taken per round.
    pub batch: usize,
    /// How long to wait when nothing is ready.
    pub idle: Duration,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 4,
            batch: 64,
            idle: Duration::from_millis(250),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Copies queued objects between the two stores.
#[derive(Debug, Clone)]
pub struct Worker {
    pub catalog: Catalog,
    pub primary: Store,
    pub secondary: Store,
    pub config: WorkerConfig,
    /// `[secondary]` settings (deletes, scrub) and the scrub counters.
    pub runtime: Runtime,
    /// Bumped after every copy attempt (success or failure): wakes waiting status calls.
    pub progress: tokio::sync::watch::Sender<u64>,
}

/// The delay before attempt `attempts + 1`.
pub fn backoff(cfg: &WorkerConfig, attempts: u32) -> Duration {
    let factor = 1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX);
    cfg.backoff_base.saturating_mul(factor).min(cfg.backoff_max)
}

impl Worker {
    /// Starts the worker and its maintenance task (deletes, periodic scrub) on the current
    /// runtime.
    pub fn spawn(self, token: CancellationToken) -> tokio::task::JoinHandle<()> {
        let span = tracing::info_span!("replication-maintenance");
        tokio::spawn(self.clone().maintain(token.clone()).instrument(span));
        let span = tracing::info_span!("replication-worker");
        tokio::spawn(self.run(token).instrument(span))
    }

    /// Runs due deletes every [`MAINTENANCE_TICK`] and a scrub every `scrub_interval` (zero:
    /// never), until `token` is cancelled.
    pub async fn maintain(self, token: CancellationToken) {
        let settings = self.runtime.settings.clone();
        let scrub_every = settings.scrub_interval;
        let mut next_scrub =
            (!scrub_every.is_zero()).then(|| tokio::time::Instant::now() + scrub_every);
        let tick = if scrub_every.is_zero() {
            MAINTENANCE_TICK
        } else {
            MAINTENANCE_TICK.min(scrub_every)
        };
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
            match deletes::run_due(
                &self.catalog,
                &self.primary,
                &self.secondary,
                settings.deletes,
                crate::fleet::clock::now_ms(),
            )
            .await
            {
                Ok(r) if r.deleted + r.cancelled + r.failed > 0 => {
                    info!(
                        deleted = r.deleted,
                        cancelled = r.cancelled,
                        failed = r.failed,
                        "delayed deletes ran"
                    );
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "delayed deletes: catalog unreadable"),
            }
            if let Some(at) = next_scrub
                && tokio::time::Instant::now() >= at
            {
                next_scrub = Some(tokio::time::Instant::now() + scrub_every);
                if let Err(e) = scrub::scrub(
                    &self.catalog,
                    &self.secondary,
                    settings.scrub_sample,
                    &self.runtime.scrub,
                )
                .await
                {
                    warn!(error = %e, "periodic scrub failed");
                }
            }
        }
    }

    /// Runs until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        info!(secondary = %self.secondary.location(), "replication worker started");
        let limit = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        loop {
            let ran = tokio::select! {
                _ = token.cancelled() => break,
                n = self.round(&limit) => n,
            };
            if ran == 0 {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(self.config.idle) => {}
                }
            }
        }
        info!("replication worker stopped");
    }

    /// One round: up to `batch` ready rows, at most `limit` copies in flight. Returns how many
    /// rows it ran (0: nothing was ready). Dropping the future aborts the copies in flight; their
    /// rows stay pending and are run again later.
    pub async fn round(&self, limit: &Arc<Semaphore>) -> usize {
        let batch = self.config.batch;
        let jobs = match self
            .catalog
            .run(move |c| queue::ready(c, now_unix_ms(), batch))
            .await
        {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "replication queue unreadable");
                return 0;
            }
        };
        let n = jobs.len();
        let mut set = JoinSet::new();
        for job in jobs {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let me = self.clone();
            set.spawn(async move {
                me.run_one(job).await;
                drop(permit);
            });
        }
        while set.join_next().await.is_some() {}
        n
    }

    async fn run_one(&self, job: Job) {
        let (seq, key, attempts) = (job.seq, job.key.clone(), job.attempts);
        let result = self.copy(&job).await;
        let now = now_unix_ms();
        let update = match result {
            Ok(bytes) => {
                debug!(key = %key, bytes, op = job.op.as_str(), "object replicated");
                self.catalog
                    .run(move |c| queue::mark_done(c, seq, now))
                    .await
            }
            Err(e) => {
                let delay = backoff(&self.config, attempts);
                warn!(key = %key, op = job.op.as_str(), attempts = attempts + 1, retry_ms = delay.as_millis() as u64, error = %e, "replication copy failed");
                let next = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                let msg = e.to_string();
                self.catalog
                    .run(move |c| queue::mark_failed(c, seq, &msg, now, next))
                    .await
            }
        };
        if let Err(e) = update {
            warn!(key = %key, error = %e, "cannot update the replication queue");
        }
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether a delete of the job's key is queued (then a copy whose source is gone is moot).
    async fn delete_queued(&self, job: &Job) -> bool {
        let key = job.key.clone();
        self.catalog
            .run(move |c| deletes::is_queued(c, &key))
            .await
            .unwrap_or(false)
    }

    /// Copies one object; returns its size.
    async fn copy(&self, job: &Job) -> Result<u64, ReplicationError> {
        failpoint::check("replication.before_copy")
            .map_err(|e| ReplicationError::Injected(e.to_string()))?;
        let (from, to) = match job.op {
            Op::Copy => (&self.primary, &self.secondary),
            Op::Repair => (&self.secondary, &self.primary),
        };
        let bytes = match from.get(&job.key).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. })
                if job.op == Op::Copy && self.delete_queued(job).await =>
            {
                info!(key = %job.key, "not copied: deleted from the primary on purpose (a delayed delete is queued)");
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        let len = bytes.len() as u64;
        let expect_hash = job.blake3.or_else(|| content_hash(&job.key));
        verify(job, len, &bytes, expect_hash)?;
        match job.op {
            Op::Copy => match put_verified(to, &job.key, bytes.clone(), expect_hash).await {
                Ok(_) => {}
                Err(StoreError::Conflict { existing, .. }) => {
                    warn!(key = %job.key, existing, "the secondary's copy differs (damaged); overwriting it with the verified primary copy");
                    to.put_replace(&job.key, bytes).await?;
                }
                Err(e) => return Err(e.into()),
            },
            Op::Repair => to.put_replace(&job.key, bytes).await?,
        }
        let reported = to.head(&job.key).await?;
        if reported != len {
            return Err(ReplicationError::Verify {
                what: "destination size mismatch for",
                key: job.key.clone(),
                reason: format!("wrote {len} bytes but the store reports {reported}"),
            });
        }
        Ok(len)
    }
}

/// Puts a copy whose BLAKE3, when known, was just verified (so it is not hashed again).
async fn put_verified(
    to: &Store,
    key: &str,
    bytes: bytes::Bytes,
    hash: Option<[u8; 32]>,
) -> Result<PutOutcome, StoreError> {
    match hash {
        Some(h) => {
            to.put_new_hashed(key, bytes, blake3::Hash::from_bytes(h))
                .await
        }
        None => to.put_new(key, bytes).await,
    }
}

fn verify(
    job: &Job,
    len: u64,
    bytes: &[u8],
    hash: Option<[u8; 32]>,
) -> Result<(), ReplicationError> {
    if let Some(size) = job.size
        && size != len
    {
        return Err(ReplicationError::Verify {
            what: "source size mismatch for",
            key: job.key.clone(),
            reason: format!("expected {size} bytes, read {len}"),
        });
    }
    if let Some(h) = hash
        && blake3::hash(bytes).as_bytes() != &h
    {
        return Err(ReplicationError::Verify {
            what: "source hash mismatch for",
            key: job.key.clone(),
            reason: "the object's BLAKE3 differs from the recorded one (damaged copy)".to_owned(),
        });
    }
    Ok(())
}

/// The BLAKE3 a content-addressed key names (`packs/xx/<64 hex>`, `refs/xx/<64 hex>`).
pub fn content_hash(key: &str) -> Option<[u8; 32]> {
    if !(key.starts_with("packs/") || key.starts_with("refs/")) {
        return None;
    }
    let name = key.rsplit('/').next()?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(name, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::replication::queue::{Kind, NewObject};

    fn worker() -> Worker {
        Worker {
            catalog: Catalog::open_in_memory().expect("catalog"),
            primary: Store::memory(),
            secondary: Store::memory(),
            config: WorkerConfig::default(),
            runtime: Runtime::default(),
            progress: tokio::sync::watch::channel(0).0,
        }
    }

    fn job(key: &str, bytes: &[u8], op: Op) -> Job {
        Job {
            seq: 1,
            key: key.to_owned(),
            op,
            size: Some(bytes.len() as u64),
            blake3: Some(*blake3::hash(bytes).as_bytes()),
            attempts: 0,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = WorkerConfig::default();
        assert_eq!(backoff(&cfg, 0), Duration::from_millis(500));
        assert_eq!(backoff(&cfg, 3), Duration::from_secs(4));
        assert_eq!(backoff(&cfg, 40), Duration::from_secs(60));
        let key = format!("packs/ab/{}", "ab".repeat(32));
        assert_eq!(content_hash(&key), Some([0xab; 32]));
        assert_eq!(content_hash("snapshots/a/b"), None);
    }

    #[tokio::test]
    async fn copies_verified_bytes_and_never_propagates_damage() {
        let w = worker();
        let good = Bytes::from_static(b"pack bytes");
        w.primary
            .put_new("snapshots/a/1", good.clone())
            .await
            .expect("put");
        assert_eq!(
            w.copy(&job("snapshots/a/1", &good, Op::Copy))
                .await
                .expect("copy"),
            10
        );
        assert_eq!(
            w.secondary.get("snapshots/a/1").await.expect("copied"),
            good
        );

        w.primary
            .put_new("snapshots/a/2", Bytes::from_static(b"damaged!!!"))
            .await
            .expect("put");
        let e = w
            .copy(&job("snapshots/a/2", &good, Op::Copy))
            .await
            .expect_err("damaged");
        assert!(e.to_string().contains("hash mismatch"), "{e}");
        assert!(
            w.secondary.head("snapshots/a/2").await.is_err(),
            "not propagated"
        );

        // A repair overwrites the damaged primary copy with the secondary's.
        w.secondary
            .put_new("snapshots/a/2", good.clone())
            .await
            .expect("put");
        w.copy(&job("snapshots/a/2", &good, Op::Repair))
            .await
            .expect("repair");
        assert_eq!(
            w.primary.get("snapshots/a/2").await.expect("repaired"),
            good
        );
    }

    #[tokio::test]
    async fn run_drains_the_queue_in_dependency_order() {
        let w = worker();
        let (pack, record) = (Bytes::from_static(b"pack"), Bytes::from_static(b"record"));
        w.primary
            .put_new("packs/aa/p", pack.clone())
            .await
            .expect("put");
        w.primary
            .put_new("snapshots/a/1", record.clone())
            .await
            .expect("put");
        let obj = |key: &str, kind, b: &Bytes| NewObject {
            key: key.to_owned(),
            kind,
            size: b.len() as u64,
            blake3: *blake3::hash(b).as_bytes(),
        };
        let (p, r) = (
            obj("packs/aa/p", Kind::Pack, &pack),
            obj("snapshots/a/1", Kind::Record, &record),
        );
        w.catalog
            .run(move |c| {
                // The record is queued first but must wait for the pack.
                queue::enqueue(c, &r, 1)?;
                queue::enqueue(c, &p, 2)?;
                queue::add_record_deps(c, "snapshots/a/1", &["packs/aa/p".to_owned()], "1", "g")
            })
            .await
            .expect("queue");
        let first = w
            .catalog
            .run(|c| queue::ready(c, 10, 10))
            .await
            .expect("ready");
        assert_eq!(first.len(), 1, "only the pack is ready: {first:?}");
        let token = CancellationToken::new();
        let task = w.clone().spawn(token.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = w.catalog.run(|c| queue::summary(c)).await.expect("summary");
            if s.pending_objects == 0 {
                assert_eq!(s.replicated_objects, 2);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not drained: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
        task.await.expect("worker stops");
        assert_eq!(
            w.secondary.get("snapshots/a/1").await.expect("record"),
            record
        );
    }

    #[tokio::test]
    async fn a_copy_overwrites_a_damaged_secondary_object() {
        let w = worker();
        let good = Bytes::from_static(b"the good bytes");
        w.primary
            .put_new("snapshots/a/3", good.clone())
            .await
            .expect("put");
        w.secondary
            .put_new("snapshots/a/3", Bytes::from_static(b"the b@d bytes!"))
            .await
            .expect("put");
        w.copy(&job("snapshots/a/3", &good, Op::Copy))
            .await
            .expect("re-copy");
        assert_eq!(w.secondary.get("snapshots/a/3").await.expect("get"), good);
    }

    #[tokio::test]
    async fn a_copy_of_an_object_deleted_on_purpose_is_closed() {
        let w = worker();
        let gone = job("packs/cc/gone", b"never copied", Op::Copy);
        let e = w.copy(&gone).await.expect_err("source missing");
        assert!(e.to_string().contains("not found"), "{e}");
        w.catalog
            .run(|c| deletes::enqueue(c, "packs/cc/gone", 5, Duration::ZERO))
            .await
            .expect("delete row");
        assert_eq!(w.copy(&gone).await.expect("closed"), 0);
    }

    #[tokio::test]
    async fn maintenance_scrubs_and_runs_due_deletes() {
        let mut w = worker();
        w.runtime.settings.scrub_interval = Duration::from_millis(50);
        let good = Bytes::from_static(b"record");
        w.primary
            .put_new("snapshots/a/1", good.clone())
            .await
            .expect("put");
        w.secondary
            .put_new("snapshots/a/1", Bytes::from_static(b"recorX"))
            .await
            .expect("put");
        w.secondary
            .put_new("packs/bb/old", Bytes::from_static(b"old pack"))
            .await
            .expect("put");
        let obj = NewObject {
            key: "snapshots/a/1".to_owned(),
            kind: Kind::Record,
            size: good.len() as u64,
            blake3: *blake3::hash(&good).as_bytes(),
        };
        w.catalog
            .run(move |c| {
                queue::enqueue(c, &obj, 1)?;
                queue::mark_done(c, 1, 2)?;
                deletes::enqueue(c, "packs/bb/old", 0, Duration::ZERO)
            })
            .await
            .expect("queue");
        let token = CancellationToken::new();
        let task = tokio::spawn(w.clone().maintain(token.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let damaged = w
                .runtime
                .scrub
                .damaged
                .load(std::sync::atomic::Ordering::Relaxed);
            let deleted = matches!(
                w.secondary.head("packs/bb/old").await,
                Err(StoreError::NotFound { .. })
            );
            if damaged >= 1 && deleted {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "maintenance did not run: damaged {damaged}, deleted {deleted}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
        task.await.expect("maintenance stops");
        let s = w.catalog.run(|c| queue::summary(c)).await.expect("summary");
        assert_eq!(s.pending_objects, 1, "the damaged copy is re-queued: {s:?}");
    }
}
