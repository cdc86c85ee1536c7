//! The restore's memory budget: plaintext fetched and not yet written, across all workers.
//!
//! Each of the [`super::files::WORKERS`] workers bounds its own fetches (a unit of small files,
//! or a large file's batches fetched [`super::ahead`]), but four of them on large files at once
//! held ~24 MiB of plaintext (and the blobs it came from): the restore's peak came in spikes
//! whenever they met, more often the more large files a source has. A fetch first takes its
//! plaintext's bytes from this budget ([`Budget::take`]) and gives them back when what it
//! fetched is written (the [`Held`] guard dropped), so together they hold at most
//! [`BUDGET_BYTES`], and one alone still gets all of it. 12 MiB (three units): restores of the
//! bench's sets peaked at 39.3–42.0 MiB instead of 47.5–49.0 (1 GiB) and 47.4–48.6 instead of
//! 51.8–52.9 (2.5 GiB), wall time unchanged within the noise (five rounds at 2.5 GiB, four at
//! 1 GiB); 8 MiB took another 3–5 MiB off but leaves two units for a restore host with more
//! cores, 16 MiB took nothing off.
//!
//! Deadlock freedom: the semaphore is fair (first come, first served), a worker takes its
//! batches in order, and nothing is taken while holding bytes that only a later take would let
//! go: a worker waiting here holds only what it is writing or already fetching, which it gives
//! back without taking more. A take larger than the whole budget waits for all of it.

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::AgentError;

/// Plaintext bytes fetched and not yet written, all workers together.
pub const BUDGET_BYTES: u64 = 12 << 20;
/// The budget's unit (a semaphore permit).
const UNIT: u64 = 1 << 10;

pub struct Budget {
    sem: Semaphore,
    units: u32,
}

/// Bytes taken from a [`Budget`], given back when dropped.
pub struct Held<'a> {
    _permit: SemaphorePermit<'a>,
}

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX >> 3);
        Budget {
            sem: Semaphore::new(units as usize),
            units,
        }
    }

    /// Waits until `bytes` (at most the whole budget) are free and takes them.
    pub async fn take(&self, bytes: u64) -> Result<Held<'_>, AgentError> {
        let want = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.units);
        self.sem
            .acquire_many(want)
            .await
            .map(|p| Held { _permit: p })
            .map_err(|_| AgentError::Worker("the restore's memory budget was closed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    fn ready<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
        f.poll(&mut Context::from_waker(Waker::noop())).is_ready()
    }

    #[tokio::test]
    async fn takes_wait_in_order_until_bytes_are_given_back() {
        let b = Budget::new(10 << 10);
        let first = b.take(6 << 10).await.expect("free");
        let mut big = pin!(b.take(6 << 10));
        assert!(!ready(big.as_mut()), "4 KiB left: waits");
        let mut small = pin!(b.take(1 << 10));
        assert!(
            !ready(small.as_mut()),
            "first come, first served: behind the big one"
        );
        drop(first);
        let big = big.await.expect("given back");
        let small = small.await.expect("room left");
        drop((big, small));
        let all = b
            .take(u64::MAX)
            .await
            .expect("more than the budget takes all of it");
        assert!(!ready(pin!(b.take(1)).as_mut()));
        drop(all);
    }
}
