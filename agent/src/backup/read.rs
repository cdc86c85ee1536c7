//! Reading files into chunks on a worker thread (the producer side of the backup pipeline).
//!
//! The thread takes files in walk order. A file whose stat matches the cache is answered from
//! it: no read, and its chunks are *presumed stored* (below), so an unchanged tree costs the
//! controller one lookup per id, at the commit (2.5 GiB unchanged: `HaveChunks` about ~128,000
//! cached ids, with pins and parent probes, took ~1 CPU-s of the controller and most of the
//! backup's time; ADR 0012). Any other file is opened, chunked and hashed, each chunk sent as
//! it is made, so memory is bounded by the channel's capacity times the largest chunk, whatever
//! the file sizes. A file that cannot be opened or read is reported as failed and skipped. A
//! file whose size differs after reading (it changed meanwhile) is recorded with what was read,
//! a warning is logged, and it is not cached. If the receiver goes away (cancellation), the
//! thread stops.
//!
//! A changed file the cache still has an entry for (a dump rewritten with 1% of its rows
//! changed: ~90% of its chunks are the previous version's) is read whole, but a chunk whose id
//! the previous version had is *presumed stored*: only its length is sent, not its plaintext, so
//! it is never asked about with `HaveChunks` (the 1 GiB dump's ~120,000 unchanged chunks were
//! that many catalog lookups on the controller) nor handed to the uploader. The presumption is
//! the cache's own (it records a file only after the snapshot that stored its chunks committed)
//! and the commit checks it: the controller refuses a commit that references a chunk it does not
//! have, and the backup then runs again without the cache (`backup_files`), so a wrong
//! presumption (a controller that lost data, a catalog restored from an older copy, an agent
//! moved to another dedup group) costs a second pass, never a snapshot with a hole.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_common::chunker::ChunkerParams;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::DataKeys;
use tokio::sync::mpsc;
use tracing::warn;

use lifeboat_common::manifest::EntryKind;

use super::pass_files::{FileResult, Items, ResultWriter, Results};
use super::spill::{ChunkLists, ListWriter};
use super::walk::WalkItem;
use crate::cache::{CacheStat, CachedFile, FileCache, cache_key, chunks};
use crate::chunking::for_each_chunk;
use crate::config::PathPatterns;

/// Opens files for reading; a seam so tests can inject read errors.
pub trait Opener: Send + Sync {
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
}

/// Opens files with `std::fs`.
pub struct FsOpener;

impl Opener for FsOpener {
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(path)?))
    }
}

/// Plaintext bytes of chunks handed over in one message (a file's last chunks go with less):
/// one wake-up of the uploader per ~256 KiB instead of one per chunk (32 per 256 KiB of a dump
/// at 8 KiB chunks).
pub const HANDOFF_BYTES: usize = 256 << 10;

/// Bytes of chunks presumed stored after which a message goes out even without a chunk to
/// store: only progress waits on it.
pub const PRESUMED_HANDOFF_BYTES: u64 = 16 << 20;

/// Cache hits sent in one message at most.
pub const CACHED_PER_MESSAGE: usize = 256;

/// What the reader thread sends. Each file's result goes to the pass's results file
/// ([`super::pass_files`]), not here; `Finished` comes last, unless the receiver went away.
pub enum ReadMsg {
    /// Chunks to store (with their plaintext), and the bytes read since the last message in
    /// chunks presumed stored (see the module docs).
    Chunks {
        chunks: Vec<(ChunkId, Vec<u8>)>,
        presumed_bytes: u64,
    },
    /// Bytes of files answered from the cache since the last message: sent every
    /// [`CACHED_PER_MESSAGE`] files at most (one wake-up of the uploader per batch, not per
    /// file: an unchanged tree of 20,000 files spent a third of the agent's CPU in thread
    /// switches).
    Cached { bytes: u64 },
    /// A file that could not be read: it is left out of the snapshot.
    FileFailed { path: PathBuf, error: String },
    /// Every file is done: their chunk lists and results. An error writing or reading the
    /// pass's scratch files (the state directory's filesystem full or failing) ends the pass.
    Finished(io::Result<(ChunkLists, Results)>),
}

/// The file cache's key for `item` (`roots`: the source's roots, by index, as the walk had them).
pub fn item_cache_key(
    stamp: &[u8; 8],
    source: &str,
    roots: &[PathBuf],
    item: &WalkItem,
) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let root = roots
        .get(item.root as usize)
        .map_or(&[][..], |r| r.as_os_str().as_bytes());
    cache_key(stamp, source, root, &item.rel)
}

/// The stat fields the file cache records and matches for `item`, as the walk saw them.
pub fn cache_stat(item: &WalkItem) -> CacheStat {
    CacheStat {
        size: item.stat.size,
        mtime_ns: item.stat.mtime_ns(),
        ctime_ns: item.stat.ctime_ns,
        inode: item.stat.inode,
    }
}

/// Everything the reader thread needs.
pub struct ReadJob {
    /// The walk's items: the thread reads every file among them, in walk order.
    pub items: Arc<Items>,
    /// The source's roots, as the walk was given them ([`WalkItem::abs`], cache keys).
    pub roots: Vec<PathBuf>,
    pub source: String,
    pub params: ChunkerParams,
    /// Files chunked with [`ChunkerParams::DUMPS`] instead of `params`.
    pub dump_files: PathPatterns,
    pub keys: DataKeys,
    pub cache: Arc<dyn FileCache>,
    pub cache_stamp: [u8; 8],
    pub opener: Arc<dyn Opener>,
}

/// Where the thread records what it read: each file's chunk list and its result.
pub struct ReadOut {
    pub lists: ListWriter,
    pub results: ResultWriter,
}

/// The receiver went away: stop reading.
struct Stopped;

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

enum ReadError {
    /// Reading the file failed: it is skipped.
    Io(io::Error),
    /// Writing its chunk list failed: the pass ends.
    Spill(io::Error),
    Stopped(Stopped),
}

/// Runs the job, sending chunks to `tx` and recording each file in `out`. Meant for a
/// dedicated thread.
pub fn run(job: ReadJob, mut out: ReadOut, tx: mpsc::Sender<ReadMsg>) {
    let finished = match read_all(&job, &mut out, &tx) {
        Ok(()) => out
            .lists
            .finish()
            .and_then(|lists| Ok((lists, out.results.finish()?))),
        Err(ReadError::Spill(e)) => Err(e),
        Err(ReadError::Io(_) | ReadError::Stopped(Stopped)) => return,
    };
    let _ = tx.blocking_send(ReadMsg::Finished(finished));
}

fn read_all(job: &ReadJob, out: &mut ReadOut, tx: &mpsc::Sender<ReadMsg>) -> Result<(), ReadError> {
    let (mut hits, mut hit_bytes) = (0, 0);
    let send_hits = |hits: &mut usize, bytes: &mut u64| {
        if *hits == 0 {
            return Ok(());
        }
        *hits = 0;
        let bytes = std::mem::take(bytes);
        (tx.blocking_send(ReadMsg::Cached { bytes })).map_err(|_| ReadError::Stopped(Stopped))
    };
    for next in job.items.reader() {
        let (index, item) = next.map_err(ReadError::Spill)?;
        if item.kind != EntryKind::File {
            continue;
        }
        let key = item_cache_key(&job.cache_stamp, &job.source, &job.roots, &item);
        let previous = match look_up(job, out, index, &item, &key)? {
            Lookup::Hit(size) => {
                (hits, hit_bytes) = (hits + 1, hit_bytes + size);
                if hits >= CACHED_PER_MESSAGE {
                    send_hits(&mut hits, &mut hit_bytes)?;
                }
                continue;
            }
            Lookup::Read(presumed) => presumed,
        };
        send_hits(&mut hits, &mut hit_bytes)?;
        let lists = &mut out.lists;
        let mark = lists.mark();
        match read_file(job, &item, &previous, lists, tx) {
            Ok(size) => {
                let cacheable = size == item.stat.size;
                if !cacheable {
                    warn!(path = %item.abs(&job.roots).display(), expected = item.stat.size, read = size, "file changed size while being read; recorded what was read");
                }
                let done = FileResult {
                    index,
                    span: lists.span_since(mark),
                    size,
                    cached: false,
                    cacheable,
                };
                out.results.push(&done).map_err(ReadError::Spill)?;
            }
            Err(ReadError::Io(e)) => {
                let path = item.abs(&job.roots);
                let msg = ReadMsg::FileFailed {
                    path,
                    error: e.to_string(),
                };
                tx.blocking_send(msg)
                    .map_err(|_| ReadError::Stopped(Stopped))?;
            }
            Err(e) => return Err(e),
        }
    }
    send_hits(&mut hits, &mut hit_bytes)
}

/// What the cache knows of a file.
enum Lookup {
    /// Its stat matches: its whole list and its result are recorded (its size).
    Hit(u64),
    /// It must be read, presuming stored what its previous version had (if the cache has one).
    Read(Presumed),
}

/// Looks `item` up in the cache under `key`; a hit's list and result go to `out`.
fn look_up(
    job: &ReadJob,
    out: &mut ReadOut,
    index: usize,
    item: &WalkItem,
    key: &[u8],
) -> Result<Lookup, ReadError> {
    match job.cache.get(key) {
        Some(hit) if hit.stat == cache_stat(item) => {
            let lists = &mut out.lists;
            let mark = lists.mark();
            let push = &mut |r: &[u8]| lists.push_records(r);
            // A list that turns out incomplete is a miss: what it pushed is unreferenced.
            if !job
                .cache
                .records(key, &hit, push)
                .map_err(ReadError::Spill)?
            {
                return Ok(Lookup::Read(Presumed::default()));
            }
            let done = FileResult {
                index,
                size: hit.stat.size,
                span: lists.span_since(mark),
                cached: true,
                cacheable: false,
            };
            out.results.push(&done).map_err(ReadError::Spill)?;
            Ok(Lookup::Hit(done.size))
        }
        Some(changed) => Ok(Lookup::Read(Presumed::from_cache(
            job.cache.as_ref(),
            key,
            &changed,
        ))),
        None => Ok(Lookup::Read(Presumed::default())),
    }
}

/// A changed file's previous version's chunks, presumed stored: the first 8 bytes of each id,
/// sorted (1 MiB for a 1 GiB dump's ~130,000 ids, against 4 MiB whole, held while the file is
/// read). Two ids that share a prefix can only make a new chunk presumed stored by mistake
/// (about 1 in 10^10 for a changed dump; the ids are keyed, so no one can aim for it): the
/// commit then refuses and the pass without the cache stores it.
#[derive(Default)]
struct Presumed(Vec<u64>);

impl Presumed {
    /// The prefixes of the ids `cache` holds for `file` (none if its list is incomplete).
    fn from_cache(cache: &dyn FileCache, key: &[u8], file: &CachedFile) -> Self {
        let mut prefixes = Vec::new();
        let all = cache.records(key, file, &mut |r| {
            prefixes.extend(chunks(r).map(|(id, _)| prefix(&id)));
            Ok(())
        });
        if !matches!(all, Ok(true)) {
            return Presumed::default();
        }
        prefixes.sort_unstable();
        prefixes.dedup();
        Presumed(prefixes)
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.0.binary_search(&prefix(id)).is_ok()
    }
}

fn prefix(id: &ChunkId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Reads one file, sending its chunks to `tx` and its chunk list to `lists`; returns the bytes
/// read. A failure to read leaves the chunks pushed so far in `lists`, unreferenced.
fn read_file(
    job: &ReadJob,
    item: &WalkItem,
    presumed: &Presumed,
    lists: &mut ListWriter,
    tx: &mpsc::Sender<ReadMsg>,
) -> Result<u64, ReadError> {
    let abs = item.abs(&job.roots);
    let reader = job.opener.open(&abs)?;
    let params = if job.dump_files.matches(&abs) {
        ChunkerParams::DUMPS
    } else {
        job.params
    };
    let mut out: Vec<(ChunkId, Vec<u8>)> = Vec::new();
    let (mut out_bytes, mut presumed_bytes) = (0, 0u64);
    let send = |out: &mut Vec<(ChunkId, Vec<u8>)>, presumed_bytes: &mut u64| {
        let msg = ReadMsg::Chunks {
            chunks: std::mem::take(out),
            presumed_bytes: std::mem::take(presumed_bytes),
        };
        tx.blocking_send(msg)
            .map_err(|_| ReadError::Stopped(Stopped))
    };
    let size = for_each_chunk(reader, params, job.keys.chunker_seed(), |data: Vec<u8>| {
        let id = job.keys.chunk_id(&data);
        lists
            .push(&id, data.len() as u32)
            .map_err(ReadError::Spill)?;
        if presumed.contains(&id) {
            presumed_bytes += data.len() as u64;
        } else {
            out_bytes += data.len();
            out.push((id, data));
        }
        if out_bytes >= HANDOFF_BYTES || presumed_bytes >= PRESUMED_HANDOFF_BYTES {
            out_bytes = 0;
            send(&mut out, &mut presumed_bytes)?;
        }
        Ok::<(), ReadError>(())
    })?;
    if !out.is_empty() || presumed_bytes > 0 {
        send(&mut out, &mut presumed_bytes)?;
    }
    Ok(size)
}
