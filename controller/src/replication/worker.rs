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

use super::ReplicationError;
use super::queue::{self, Job, Op};
use crate::catalog::Catalog;
use crate::store::Store;

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
    /// Bumped after every copy attempt (success or failure): wakes waiting status calls.
    pub progress: tokio::sync::watch::Sender<u64>,
}

/// The delay before attempt `attempts + 1`.
pub fn backoff(cfg: &WorkerConfig, attempts: u32) -> Duration {
    let factor = 1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX);
    cfg.backoff_base.saturating_mul(factor).min(cfg.backoff_max)
}

impl Worker {
    /// Starts the worker on the current runtime.
    pub fn spawn(self, token: CancellationToken) -> tokio::task::JoinHandle<()> {
        let span = tracing::info_span!("replication-worker");
        tokio::spawn(self.run(token).instrument(span))
    }

    /// Runs until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        info!(secondary = %self.secondary.location(), "replication worker started");
        let limit = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        loop {
            if token.is_cancelled() {
                break;
            }
            let batch = self.config.batch;
            let jobs = match self
                .catalog
                .run(move |c| queue::ready(c, now_unix_ms(), batch))
                .await
            {
                Ok(j) => j,
                Err(e) => {
                    warn!(error = %e, "replication queue unreadable");
                    Vec::new()
                }
            };
            if jobs.is_empty() {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(self.config.idle) => continue,
                }
            }
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
            tokio::select! {
                _ = token.cancelled() => { set.abort_all(); break; }
                _ = async { while set.join_next().await.is_some() {} } => {}
            }
        }
        info!("replication worker stopped");
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

    /// Copies one object; returns its size.
    async fn copy(&self, job: &Job) -> Result<u64, ReplicationError> {
        failpoint::check("replication.before_copy")
            .map_err(|e| ReplicationError::Injected(e.to_string()))?;
        let (from, to) = match job.op {
            Op::Copy => (&self.primary, &self.secondary),
            Op::Repair => (&self.secondary, &self.primary),
        };
        let bytes = from.get(&job.key).await?;
        let len = bytes.len() as u64;
        let expect_hash = job.blake3.or_else(|| content_hash(&job.key));
        verify(job, len, &bytes, expect_hash)?;
        match job.op {
            Op::Copy => {
                to.put_new(&job.key, bytes).await?;
            }
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
}
