//! The distinct ids a snapshot references, sorted, without holding them all in memory.
//!
//! A commit names every distinct id the snapshot references (file and manifest chunks), and its
//! header announces how many (the controller refuses a stream that carries more, or fewer
//! distinct ones). Collected in one vector and sorted, they were 32 bytes a chunk of the agent's
//! peak: 5.4 MB at the benchmark's 2.5 GiB (170,000 ids), ten times that for a source ten times
//! larger. A [`RefSorter`] keeps one run of up to [`RUN_IDS`] ids in memory; a full run is
//! sorted, deduplicated and appended to a scratch file ([`super::spill`]). `finish` merges the
//! runs into one sorted, distinct run at the file's end, counting as it goes (the count of data
//! chunks a snapshot's stats show); the manifest's own ids, known only later, are added to it
//! in memory ([`References::add`]), and the commit streams both back merged, in batches
//! ([`References::send`]). A source whose ids fit in one run never touches the disk.
//!
//! Memory: one run (1 MiB) while collecting; while merging, one block per run (64 KiB, less when
//! there are more than 64 runs, [`MERGE_BYTES`] in all) and a 64 KiB write buffer. The runs stay
//! in the file (it goes with the pass): ~32 bytes a reference twice, on disk.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_common::appender::Appender;
use lifeboat_common::ids::{CHUNK_ID_LEN, ChunkId};
use tokio::sync::mpsc;

use super::spill::{BUFFER_BYTES, id_at};
use crate::scratch::temp_file;

/// Ids sorted in memory before a run goes to disk (1 MiB).
pub const RUN_IDS: usize = 32 * 1024;

/// Read buffers of all runs together while merging, at most (each at least 4 KiB).
pub const MERGE_BYTES: usize = 4 << 20;

/// Collects referenced ids; see the module docs.
pub struct RefSorter {
    dir: PathBuf,
    run: Vec<ChunkId>,
    run_ids: usize,
    out: Option<Appender>,
    /// Each run on disk: its byte offset and its number of ids.
    runs: Vec<(u64, u64)>,
}

impl RefSorter {
    /// A sorter whose runs, if any, go to an unlinked file in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self::with_run(dir, RUN_IDS)
    }

    fn with_run(dir: &Path, run_ids: usize) -> Self {
        RefSorter {
            dir: dir.to_owned(),
            run: Vec::new(),
            run_ids: run_ids.max(1),
            out: None,
            runs: Vec::new(),
        }
    }

    pub fn extend(&mut self, ids: &[ChunkId]) -> io::Result<()> {
        for id in ids {
            if self.run.len() >= self.run_ids {
                self.spill_run()?;
            }
            self.run.push(*id);
        }
        Ok(())
    }

    fn spill_run(&mut self) -> io::Result<()> {
        self.run.sort_unstable();
        self.run.dedup();
        let out = match &mut self.out {
            Some(out) => out,
            None => self
                .out
                .insert(Appender::new(temp_file(&self.dir)?, BUFFER_BYTES)),
        };
        let start = out.end();
        for id in &self.run {
            out.write(id.as_bytes())?;
        }
        self.runs.push((start, self.run.len() as u64));
        self.run.clear();
        Ok(())
    }

    /// Every distinct id pushed, sorted.
    pub fn finish(mut self) -> io::Result<References> {
        if self.out.is_none() {
            let mut ids = std::mem::take(&mut self.run);
            ids.sort_unstable();
            ids.dedup();
            ids.shrink_to_fit();
            return Ok(References::new(Base::Memory(ids)));
        }
        if !self.run.is_empty() {
            self.spill_run()?;
        }
        self.run = Vec::new();
        let mut out = self.out.take().expect("a run was spilled");
        out.flush()?;
        let file = out.file().clone();
        let block_ids = (MERGE_BYTES / self.runs.len().max(1) / CHUNK_ID_LEN).clamp(128, 2048);
        let mut cursors: Vec<RunCursor> = (self.runs.iter())
            .map(|&(at, ids)| RunCursor::new(file.clone(), at, ids, block_ids))
            .collect();
        let mut heap = BinaryHeap::with_capacity(cursors.len());
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some(id) = c.next()? {
                heap.push(Reverse((id, i)));
            }
        }
        let (start, mut count, mut last) = (out.end(), 0u64, None);
        while let Some(Reverse((id, i))) = heap.pop() {
            if last != Some(id) {
                out.write(id.as_bytes())?;
                count += 1;
                last = Some(id);
            }
            if let Some(next) = cursors[i].next()? {
                heap.push(Reverse((next, i)));
            }
        }
        out.flush()?;
        Ok(References::new(Base::Disk { file, start, count }))
    }
}

/// Reads one sorted run back, a block at a time.
struct RunCursor {
    file: Arc<File>,
    at: u64,
    left: u64,
    block_ids: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl RunCursor {
    fn new(file: Arc<File>, at: u64, ids: u64, block_ids: usize) -> Self {
        RunCursor {
            file,
            at,
            left: ids,
            block_ids,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn next(&mut self) -> io::Result<Option<ChunkId>> {
        if self.pos == self.buf.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let take = self.left.min(self.block_ids as u64);
            self.buf.resize(take as usize * CHUNK_ID_LEN, 0);
            self.file.read_exact_at(&mut self.buf, self.at)?;
            self.at += self.buf.len() as u64;
            self.left -= take;
            self.pos = 0;
        }
        let id = id_at(&self.buf, self.pos);
        self.pos += CHUNK_ID_LEN;
        Ok(Some(id))
    }
}

/// A snapshot's distinct referenced ids, sorted: the sorter's (in memory, or a run in a scratch
/// file) and the few added after it finished (the manifest's own chunks, [`References::add`]).
pub struct References {
    base: Base,
    /// Sorted, distinct, none of them in `base`.
    extra: Vec<ChunkId>,
}

enum Base {
    Memory(Vec<ChunkId>),
    Disk {
        file: Arc<File>,
        start: u64,
        count: u64,
    },
}

impl Base {
    fn len(&self) -> u64 {
        match self {
            Base::Memory(ids) => ids.len() as u64,
            Base::Disk { count, .. } => *count,
        }
    }

    fn cursor(&self, block_ids: usize) -> BaseCursor<'_> {
        match self {
            Base::Memory(ids) => BaseCursor::Memory(ids.iter()),
            Base::Disk { file, start, count } => {
                BaseCursor::Disk(RunCursor::new(file.clone(), *start, *count, block_ids))
            }
        }
    }
}

enum BaseCursor<'a> {
    Memory(std::slice::Iter<'a, ChunkId>),
    Disk(RunCursor),
}

impl BaseCursor<'_> {
    fn next(&mut self) -> io::Result<Option<ChunkId>> {
        match self {
            BaseCursor::Memory(it) => Ok(it.next().copied()),
            BaseCursor::Disk(run) => run.next(),
        }
    }
}

impl References {
    fn new(base: Base) -> Self {
        References {
            base,
            extra: Vec::new(),
        }
    }

    pub fn len(&self) -> u64 {
        self.base.len() + self.extra.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `ids` (a few: they are kept in memory), those not already referenced. Reads a base
    /// on disk once through.
    pub fn add(&mut self, ids: &[ChunkId]) -> io::Result<()> {
        let mut new: Vec<ChunkId> = ids.to_vec();
        new.extend_from_slice(&self.extra);
        new.sort_unstable();
        new.dedup();
        let mut keep = Vec::with_capacity(new.len());
        let mut base = self.base.cursor(2048);
        let mut current = base.next()?;
        for id in new {
            while current.is_some_and(|c| c < id) {
                current = base.next()?;
            }
            if current != Some(id) {
                keep.push(id);
            }
        }
        self.extra = keep;
        Ok(())
    }

    /// Sends the ids to `tx` in order, `per` at a time; stops early, without an error, if the
    /// receiver goes away. Blocks: meant for a blocking thread.
    pub fn send(self, per: usize, tx: &mpsc::Sender<Vec<ChunkId>>) -> io::Result<()> {
        let per = per.max(1);
        let mut base = self.base.cursor(per);
        let mut extra = self.extra.into_iter().peekable();
        let mut next_base = base.next()?;
        let mut batch = Vec::with_capacity(per);
        loop {
            let id = match (next_base, extra.peek()) {
                (Some(b), Some(&e)) if e < b => extra.next(),
                (Some(b), _) => {
                    next_base = base.next()?;
                    Some(b)
                }
                (None, _) => extra.next(),
            };
            let Some(id) = id else { break };
            batch.push(id);
            if batch.len() == per {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(per));
                if tx.blocking_send(full).is_err() {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sent(refs: References, per: usize) -> Vec<Vec<ChunkId>> {
        let (tx, mut rx) = mpsc::channel(1_000_000);
        refs.send(per, &tx).expect("scratch file");
        drop(tx);
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn id(b: u16) -> ChunkId {
        let mut a = [0u8; CHUNK_ID_LEN];
        a[..2].copy_from_slice(&b.to_be_bytes());
        a[31] = 0x5a;
        ChunkId(a)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the run size and the order and repetition of the ids, the sorter (and the
        /// ids added after it finished) gives what sorting and deduplicating all of them in
        /// memory gives, and the batches concatenate to it.
        #[test]
        fn runs_merge_to_the_in_memory_sort(
            raw in proptest::collection::vec(0u16..600, 0..3000),
            added in proptest::collection::vec(0u16..700, 0..40),
            run in 1usize..700,
            per in 1usize..300,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let ids: Vec<ChunkId> = raw.iter().map(|&b| id(b)).collect();
            let mut s = RefSorter::with_run(dir.path(), run);
            for piece in ids.chunks(97) {
                s.extend(piece).expect("scratch file");
            }
            let mut refs = s.finish().expect("scratch file");
            let mut want = ids.clone();
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(refs.len(), want.len() as u64);
            prop_assert_eq!(matches!(refs.base, Base::Disk { .. }), ids.len() > run);
            let added: Vec<ChunkId> = added.iter().map(|&b| id(b)).collect();
            refs.add(&added).expect("scratch file");
            want.extend_from_slice(&added);
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(refs.len(), want.len() as u64);
            let batches = sent(refs, per);
            prop_assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= per));
            prop_assert_eq!(batches.concat(), want);
        }
    }

    #[test]
    fn a_small_set_stays_in_memory_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RefSorter::new(dir.path());
        s.extend(&[id(3), id(1), id(3), id(2)])
            .expect("scratch file");
        let refs = s.finish().expect("scratch file");
        assert!(matches!(refs.base, Base::Memory(_)));
        assert_eq!(sent(refs, 2), vec![vec![id(1), id(2)], vec![id(3)]]);
        assert_eq!(std::fs::read_dir(dir.path()).expect("listing").count(), 0);
    }

    #[test]
    fn sending_stops_quietly_when_the_receiver_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RefSorter::with_run(dir.path(), 4);
        let ids: Vec<ChunkId> = (0..100).map(id).collect();
        s.extend(&ids).expect("scratch file");
        let refs = s.finish().expect("scratch file");
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        refs.send(10, &tx).expect("scratch file");
    }
}
