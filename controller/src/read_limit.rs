//! The controller-wide bound on restore reads (`ReadChunks` streams) in progress.
//!
//! Each stream holds blob data while it is read and sent: one window of blobs being read (up to
//! twice [`crate::service::reads::WINDOW_BLOB_BYTES`] with the gaps read through) plus one
//! window queued for the client. One agent's restore keeps about eight streams open (four
//! workers, a large file's batches fetched ahead), so a fleet-wide disaster restore (tens of
//! agents at once) would hold hundreds of MiB with nothing to stop it. Every stream is therefore
//! admitted against [`READ_BUDGET_BYTES`]: it weighs the bytes it will read, at most
//! [`MAX_STREAM_WEIGHT`], and waits, first come first served (tokio's semaphore is fair), until
//! that much of the budget is free. Waiting is not failing: the agent's call simply starts
//! later, and its HTTP/2 keepalive keeps the connection alive meanwhile; a client that gives up
//! leaves the queue at once. One agent alone is never held back (its streams weigh about 24 MiB
//! at most: four workers, each a 4 MiB unit or a large file's 2 MiB batches).
//!
//! A stream keeps its weight until it ends. A client that stops reading would keep it forever,
//! so a stream whose next window of blobs cannot be queued for [`STALL_TIMEOUT`] ends
//! ([`crate::service::reads::stream`]); the agent, if it is still there, sees fewer blobs than it
//! asked for and says so.
//!
//! `/metrics` shows the streams reading and waiting (`lifeboat_restore_reads_active`,
//! `lifeboat_restore_reads_waiting`): a queue that stays long during a fleet restore says the
//! controller is the bottleneck, not the agents.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Blob bytes all restore streams together may weigh.
pub const READ_BUDGET_BYTES: u64 = 64 << 20;
/// The most one stream weighs (what it can hold at once: a window being read and one queued).
pub const MAX_STREAM_WEIGHT: u64 = 4 * crate::service::reads::WINDOW_BLOB_BYTES;
/// How long a stream waits for its client to take the next blob before it ends.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Budget units are KiB (a semaphore counts in `u32`).
const UNIT: u64 = 1024;

/// Streams reading blobs now, and streams waiting for budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCounts {
    pub active: u64,
    pub waiting: u64,
}

/// Admits restore streams within a byte budget, in arrival order.
#[derive(Debug)]
pub struct ReadLimiter {
    permits: Arc<Semaphore>,
    /// How long a stream waits for its client to take a blob ([`STALL_TIMEOUT`]).
    stall: Duration,
    /// Changed on every admission, wait and end (`/metrics`; tests wait on it).
    counts: watch::Sender<ReadCounts>,
}

impl Default for ReadLimiter {
    fn default() -> Self {
        ReadLimiter::new(READ_BUDGET_BYTES)
    }
}

impl ReadLimiter {
    /// A limiter for `budget` bytes (at least one [`MAX_STREAM_WEIGHT`], so every stream fits).
    pub fn new(budget: u64) -> Self {
        let units = u32::try_from(budget.max(MAX_STREAM_WEIGHT) / UNIT).unwrap_or(u32::MAX);
        ReadLimiter {
            permits: Arc::new(Semaphore::new(units as usize)),
            stall: STALL_TIMEOUT,
            counts: watch::Sender::new(ReadCounts::default()),
        }
    }

    /// The same limiter with another stall timeout (tests).
    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// How long a stream waits for its client to take the next blob before it ends.
    pub fn stall(&self) -> Duration {
        self.stall
    }

    /// What a stream that reads `bytes` weighs, in budget units: at most [`MAX_STREAM_WEIGHT`],
    /// which the budget always holds ([`ReadLimiter::new`]).
    fn weight(bytes: u64) -> u32 {
        let units = bytes.min(MAX_STREAM_WEIGHT).div_ceil(UNIT).max(1);
        u32::try_from(units).unwrap_or(u32::MAX)
    }

    /// Waits until a stream that will read `bytes` fits in the budget; the permit gives the
    /// weight back when dropped.
    pub async fn admit(self: &Arc<Self>, bytes: u64) -> ReadPermit {
        let weight = Self::weight(bytes);
        self.counts.send_modify(|c| c.waiting += 1);
        let waiting = Waiting(self);
        let permit = Arc::clone(&self.permits).acquire_many_owned(weight).await;
        drop(waiting);
        self.counts.send_modify(|c| c.active += 1);
        ReadPermit {
            // The semaphore is never closed, so acquiring cannot fail; if it ever were, the
            // stream would run unbounded rather than never.
            _permit: permit.ok(),
            limiter: Arc::clone(self),
        }
    }

    /// Streams reading now and streams waiting for budget.
    pub fn counts(&self) -> ReadCounts {
        *self.counts.borrow()
    }

    /// Waits until the counts satisfy `f`.
    pub async fn wait_until(&self, f: impl FnMut(&ReadCounts) -> bool) {
        let mut rx = self.counts.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(f).await;
    }

    /// The `/metrics` lines.
    pub fn prometheus_text(&self) -> String {
        let ReadCounts { active, waiting } = self.counts();
        format!(
            "# HELP lifeboat_restore_reads_active ReadChunks streams reading blobs now.\n\
             # TYPE lifeboat_restore_reads_active gauge\n\
             lifeboat_restore_reads_active {active}\n\
             # HELP lifeboat_restore_reads_waiting ReadChunks streams waiting for the controller's read budget.\n\
             # TYPE lifeboat_restore_reads_waiting gauge\n\
             lifeboat_restore_reads_waiting {waiting}\n"
        )
    }
}

/// An admitted stream's share of the budget.
#[derive(Debug)]
pub struct ReadPermit {
    _permit: Option<OwnedSemaphorePermit>,
    limiter: Arc<ReadLimiter>,
}

impl Drop for ReadPermit {
    fn drop(&mut self) {
        self.limiter.counts.send_modify(|c| c.active -= 1);
    }
}

/// Counts a stream as waiting until dropped (also when the wait is abandoned: the client left).
struct Waiting<'a>(&'a ReadLimiter);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.counts.send_modify(|c| c.waiting -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_wait_in_order_for_budget_and_one_stream_always_fits() {
        let l = Arc::new(ReadLimiter::new(16 << 20));
        let a = l.admit(8 << 20).await;
        let b = l.admit(100 << 20).await; // weighs MAX_STREAM_WEIGHT: the budget is now spent
        assert_eq!(l.counts(), counts(2, 0));
        let mut big = Box::pin(l.admit(8 << 20));
        let mut small = Box::pin(l.admit(1));
        assert!(poll_once(&mut big).is_none(), "no budget left");
        assert!(
            poll_once(&mut small).is_none(),
            "waits behind the earlier, larger stream"
        );
        assert_eq!(l.counts(), counts(2, 2));
        drop(a);
        let big = poll_once(&mut big).expect("admitted once a stream ends");
        assert!(poll_once(&mut small).is_none(), "budget spent again");
        drop(b);
        let small = poll_once(&mut small).expect("admitted");
        assert_eq!(l.counts(), counts(2, 0));
        let mut gone = Box::pin(l.admit(u64::MAX));
        assert!(poll_once(&mut gone).is_none());
        assert_eq!(l.counts(), counts(2, 1));
        drop(gone);
        assert_eq!(l.counts(), counts(2, 0), "a client that left waits no more");
        drop((big, small));
        assert_eq!(l.counts(), counts(0, 0));
        let lone = Arc::new(ReadLimiter::new(1));
        let mut heaviest = Box::pin(lone.admit(u64::MAX));
        assert!(
            poll_once(&mut heaviest).is_some(),
            "a budget below one stream's weight is raised to it"
        );
    }

    fn counts(active: u64, waiting: u64) -> ReadCounts {
        ReadCounts { active, waiting }
    }

    /// Polls a future once with a no-op waker.
    fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
