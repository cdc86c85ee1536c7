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
//! The batches are cut as they are started ([`Batches`]) from the file's chunk list read in
//! order ([`ChunkList::reader`]), which for a large file stays in the restore's scratch file: a
//! file's list costs the batches in flight, not 36 bytes a chunk.
//!
//! Results come back in batch order; the first error is returned when its batch is reached
//! (the caller then stops: the batches still in flight are dropped with the queue).

use std::collections::VecDeque;
use std::future::Future;
use std::iter::Peekable;
use std::pin::Pin;
use std::task::Poll;

use lifeboat_common::ids::ChunkId;
use lifeboat_common::manifest::{ChunkList, ChunkReader};

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

/// Consecutive chunks of one file: their ids, sizes and plaintext bytes.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    pub ids: Vec<ChunkId>,
    pub sizes: Vec<u32>,
    pub bytes: u64,
}

/// A file's chunk list cut, in order, into batches of at most `max_ids` chunks and `max_bytes`
/// of plaintext (a batch always holds at least one chunk). An error reading the list is
/// returned in place of the next batch, and ends them.
pub struct Batches<'a> {
    chunks: Peekable<ChunkReader<'a>>,
    max_ids: usize,
    max_bytes: u64,
    failed: bool,
}

impl<'a> Batches<'a> {
    pub fn new(list: &'a ChunkList, max_ids: usize, max_bytes: u64) -> Self {
        Batches {
            chunks: list.reader().peekable(),
            max_ids,
            max_bytes,
            failed: false,
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch, AgentError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut b = Batch::default();
        loop {
            let fits = match self.chunks.peek() {
                None => break,
                Some(Ok((_, size))) => {
                    b.ids.is_empty()
                        || (b.ids.len() < self.max_ids
                            && b.bytes + u64::from(*size) <= self.max_bytes)
                }
                Some(Err(_)) => true,
            };
            if !fits {
                break;
            }
            match self.chunks.next() {
                Some(Ok((id, size))) => {
                    b.ids.push(id);
                    b.sizes.push(size);
                    b.bytes += u64::from(size);
                }
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(crate::restore::unreadable_entry(e)));
                }
                None => break,
            }
        }
        (!b.ids.is_empty()).then_some(Ok(b))
    }
}

struct InFlight<'a, T> {
    fetch: Fetch<'a, T>,
    done: Option<Result<T, AgentError>>,
    bytes: u64,
}

/// Batches of one file, fetched ahead in order: `batches` yields each batch's plaintext bytes
/// and its fetch (not started until it is polled).
pub struct Ahead<'a, I: Iterator, T> {
    batches: Peekable<I>,
    bytes: u64,
    queue: VecDeque<InFlight<'a, T>>,
}

impl<'a, I, T> Ahead<'a, I, T>
where
    I: Iterator<Item = (u64, Fetch<'a, T>)>,
{
    pub fn new(batches: I) -> Self {
        Ahead {
            batches: batches.peekable(),
            bytes: 0,
            queue: VecDeque::new(),
        }
    }

    /// Starts fetches until [`AHEAD_BYTES`] are in flight (always at least one).
    fn top_up(&mut self) {
        while let Some((bytes, _)) = self.batches.peek() {
            if !self.queue.is_empty() && self.bytes + *bytes > AHEAD_BYTES {
                break;
            }
            let Some((bytes, fetch)) = self.batches.next() else {
                break;
            };
            self.queue.push_back(InFlight {
                fetch,
                done: None,
                bytes,
            });
            self.bytes += bytes;
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

    /// The next batch's outcome, in order; `None` after the last.
    pub async fn next(&mut self) -> Option<Result<T, AgentError>> {
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
        Some(plain)
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

    /// Batches come back in order whatever order their fetches finish in, with at most
    /// AHEAD_BYTES in flight, and an error is returned at its own batch.
    #[tokio::test]
    async fn batches_come_back_in_order_within_the_budget() {
        let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (f, p) = (in_flight.clone(), peak.clone());
        let batches = (0..10usize).map(move |i| {
            let (f, p) = (f.clone(), p.clone());
            let fetch = Box::pin(async move {
                let now = f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                // Later batches finish first (fewer yields before they complete).
                for _ in 0..(40 - 4 * i) {
                    tokio::task::yield_now().await;
                }
                f.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                if i == 7 {
                    return Err(AgentError::Worker("damaged".into()));
                }
                Ok(i)
            }) as Fetch<'_, usize>;
            (BATCH_BYTES, fetch)
        });
        let mut ahead = Ahead::new(batches);
        let mut seen = Vec::new();
        while let Some(batch) = ahead.next().await {
            ahead.beside(tokio::task::yield_now()).await;
            match batch {
                Ok(i) => seen.push(i),
                Err(_) => {
                    assert_eq!(seen.len(), 7);
                    break;
                }
            }
        }
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        let max = AHEAD_BYTES / BATCH_BYTES;
        let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            peak >= 2 && peak <= max,
            "peak {peak} fetches in flight (budget {max})"
        );
    }

    fn list(sizes: &[u32]) -> ChunkList {
        ChunkList::Memory {
            ids: (0..sizes.len()).map(|i| ChunkId([i as u8; 32])).collect(),
            sizes: sizes.to_vec(),
        }
    }

    fn cut(sizes: &[u32], max_ids: usize, max_bytes: u64) -> Vec<Vec<u32>> {
        let l = list(sizes);
        let batches = Batches::new(&l, max_ids, max_bytes);
        batches.map(|b| b.expect("batch").sizes).collect()
    }

    /// Batches keep the list's order, hold at most `max_ids` chunks and `max_bytes` (but at least
    /// one chunk, however large) and cover every chunk once.
    #[test]
    fn batches_are_cut_within_their_bounds() {
        assert!(cut(&[], 4, 100).is_empty());
        assert_eq!(cut(&[10; 9], 4, 100), [vec![10; 4], vec![10; 4], vec![10]]);
        assert_eq!(
            cut(&[60, 50, 200, 30, 30, 40], 4, 100),
            [vec![60], vec![50], vec![200], vec![30, 30, 40]]
        );
        // A database restore's batches (`fetch`'s limits: 64 ids, 16 MiB).
        use super::super::fetch::{BATCH_BYTES as FETCH_BYTES, BATCH_IDS as FETCH_IDS};
        let lens = |sizes: &[u32]| -> Vec<usize> {
            cut(sizes, FETCH_IDS, FETCH_BYTES)
                .iter()
                .map(Vec::len)
                .collect()
        };
        assert_eq!(lens(&[4 << 20; 10]), [4, 4, 2]);
        assert_eq!(lens(&[10; 130]), [64, 64, 2]);
        let l = list(&[5, 6, 7]);
        let ids: Vec<ChunkId> = Batches::new(&l, 2, 100)
            .flat_map(|b| b.expect("batch").ids)
            .collect();
        assert_eq!(ids, [ChunkId([0; 32]), ChunkId([1; 32]), ChunkId([2; 32])]);
    }
}
