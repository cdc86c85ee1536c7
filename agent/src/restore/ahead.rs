//! Fetches of one large file kept in flight ahead of its write.
//!
//! A file larger than a unit is fetched batch by batch, in order. One batch fetched ahead was
//! too little for a dump of 8 KiB chunks (each batch a `ReadChunks` round trip, then decrypt
//! and verify): the 1 GiB dump restored at ~240 MB/s with the agent mostly waiting. [`Ahead`]
//! keeps several smaller batches in flight, as many as fit in [`AHEAD_BYTES`] of plaintext, and
//! drives them while the current batch is written. Memory: `AHEAD_BYTES` in flight plus the
//! batch being written (at most [`BATCH_BYTES`]) for one file, and what every batch holds is
//! also taken from the restore's budget shared by all workers ([`super::budget`]), so several
//! large files at once share it instead of each holding its own.
//!
//! Results come back in batch order; the first error is returned when its batch is reached
//! (the caller then stops: the batches still in flight are dropped with the queue).

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::Poll;

use super::files::UNIT_BYTES;
use crate::error::AgentError;

/// Plaintext bytes of a large file fetched ahead of the batch being written.
pub const AHEAD_BYTES: u64 = UNIT_BYTES;
/// Most plaintext bytes of one batch of a large file.
pub const BATCH_BYTES: u64 = UNIT_BYTES / 2;
/// Most chunk ids in one batch of a large file.
pub const BATCH_IDS: usize = 128;

/// A batch's fetch, yielding its plaintexts (and whatever the caller keeps with them).
pub type Fetch<'a, T> = Pin<Box<dyn Future<Output = Result<T, AgentError>> + Send + 'a>>;

struct InFlight<'a, T> {
    range: Range<usize>,
    fetch: Fetch<'a, T>,
    done: Option<Result<T, AgentError>>,
    bytes: u64,
}

/// Batches of one file (index ranges into its chunk list), fetched ahead in order.
pub struct Ahead<'a, F, T> {
    ranges: Vec<Range<usize>>,
    sizes: &'a [u32],
    /// Starts the fetch of a batch.
    start: F,
    next: usize,
    bytes: u64,
    queue: VecDeque<InFlight<'a, T>>,
}

impl<'a, F, T> Ahead<'a, F, T>
where
    F: FnMut(Range<usize>) -> Fetch<'a, T>,
{
    pub fn new(ranges: Vec<Range<usize>>, sizes: &'a [u32], start: F) -> Self {
        Ahead {
            ranges,
            sizes,
            start,
            next: 0,
            bytes: 0,
            queue: VecDeque::new(),
        }
    }

    /// Starts fetches until [`AHEAD_BYTES`] are in flight (always at least one).
    fn top_up(&mut self) {
        while let Some(r) = self.ranges.get(self.next) {
            let bytes: u64 = self.sizes[r.clone()].iter().map(|&s| u64::from(s)).sum();
            if !self.queue.is_empty() && self.bytes + bytes > AHEAD_BYTES {
                break;
            }
            self.queue.push_back(InFlight {
                range: r.clone(),
                fetch: (self.start)(r.clone()),
                done: None,
                bytes,
            });
            self.bytes += bytes;
            self.next += 1;
        }
    }

    fn poll_all(queue: &mut VecDeque<InFlight<'a, T>>, cx: &mut std::task::Context<'_>) {
        for f in queue.iter_mut() {
            if f.done.is_none()
                && let Poll::Ready(r) = f.fetch.as_mut().poll(cx)
            {
                f.done = Some(r);
            }
        }
    }

    /// The next batch's range and plaintexts, in order; `None` after the last.
    pub async fn next(&mut self) -> Option<(Range<usize>, Result<T, AgentError>)> {
        self.top_up();
        let queue = &mut self.queue;
        std::future::poll_fn(|cx| {
            Self::poll_all(queue, cx);
            match queue.front() {
                None => Poll::Ready(()),
                Some(f) if f.done.is_some() => Poll::Ready(()),
                Some(_) => Poll::Pending,
            }
        })
        .await;
        let done = self.queue.pop_front()?;
        self.bytes -= done.bytes;
        let plain = done
            .done
            .unwrap_or_else(|| Err(AgentError::Worker("a restore batch had no outcome".into())));
        self.top_up();
        Some((done.range, plain))
    }

    /// Runs `work` (the write of the current batch) while the batches ahead keep fetching.
    pub async fn beside<W: Future>(&mut self, work: W) -> W::Output {
        let mut work = std::pin::pin!(work);
        let queue = &mut self.queue;
        std::future::poll_fn(|cx| {
            Self::poll_all(queue, cx);
            work.as_mut().poll(cx)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::ids::ChunkId;
    use std::collections::HashMap;

    /// Batches come back in order whatever order their fetches finish in, with at most
    /// AHEAD_BYTES in flight, and an error is returned at its own batch.
    #[tokio::test]
    async fn batches_come_back_in_order_within_the_budget() {
        let sizes = vec![(BATCH_BYTES / 4) as u32; 40];
        let ranges: Vec<Range<usize>> = (0..10).map(|i| i * 4..i * 4 + 4).collect();
        let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (f, p) = (in_flight.clone(), peak.clone());
        let mut ahead = Ahead::new(ranges, &sizes, move |r: Range<usize>| {
            let (f, p) = (f.clone(), p.clone());
            let now = f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                // Later batches finish first (fewer yields before they complete).
                for _ in 0..(40 - r.start) {
                    tokio::task::yield_now().await;
                }
                f.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                if r.start == 28 {
                    return Err(AgentError::Worker("damaged".into()));
                }
                let mut m = HashMap::new();
                m.insert(ChunkId([r.start as u8; 32]), vec![]);
                Ok(m)
            }) as Fetch<'_, HashMap<ChunkId, Vec<u8>>>
        });
        let mut seen = Vec::new();
        while let Some((range, plain)) = ahead.next().await {
            ahead.beside(tokio::task::yield_now()).await;
            match plain {
                Ok(m) => {
                    assert!(m.contains_key(&ChunkId([range.start as u8; 32])));
                    seen.push(range.start);
                }
                Err(_) => {
                    assert_eq!(range.start, 28);
                    break;
                }
            }
        }
        assert_eq!(seen, vec![0, 4, 8, 12, 16, 20, 24]);
        let max = AHEAD_BYTES / BATCH_BYTES;
        let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            peak >= 2 && peak <= max,
            "peak {peak} fetches in flight (budget {max})"
        );
    }
}
