//! Writing many files at once: the restore's data path.
//!
//! File entries are queued ([`Pending`]) while the main loop creates directories and symlinks in
//! walk order; the queue is flushed ([`flush`]) when it is full, at the end, and before any entry
//! whose path is, lies below, or lies above a queued file's path (so a later entry can never
//! replace a directory a queued file is about to be renamed into, and walk-order semantics are
//! kept). A flush packs consecutive small files into units of at most [`UNIT_IDS`] chunk ids and
//! [`UNIT_BYTES`] of plaintext, fetched with one `ReadChunks` call each (across file
//! boundaries, in manifest order); a file larger than a unit is its own unit, fetched batch by
//! batch (half-unit batches, up to a unit of them fetched ahead while the current one is
//! written, [`super::ahead`]: at most one and a half units in memory for such a file).
//! [`WORKERS`] units are in flight at once: fetch, then decrypt + verify and write on blocking
//! threads. Each fetch first takes its plaintext's bytes from the restore's budget
//! ([`super::budget`]), so together they hold at most `BUDGET_BYTES` of plaintext (plus the
//! ciphertext being opened) whatever the data size.
//!
//! Failure modes: when a multi-file unit cannot be fetched or verified, its files are retried one
//! by one, so the error names the file whose chunks are damaged and the others are written. The
//! first error stops the flush once the units in flight have finished (none is cancelled half
//! way, so every temporary file of a failed file is removed).
//!
//! Durability: files are written and renamed without an `fsync` each; the directories they were
//! written in are returned to the caller, which syncs their filesystems once at the end
//! ([`sync_all`], `syncfs(2)`). A restore that returned success is durable; after a crash
//! mid-restore a file may be incomplete under its real name, which a rerun detects (same size
//! and mtime but other chunk ids) and rewrites.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use lifeboat_common::chunker::ChunkerParams;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::DataKeys;
use lifeboat_common::manifest::{ChunkList, Entry};

use super::budget::Budget;
use super::fetch::read_verified;
use super::write;
use super::{RestoreReport, unreadable_entry};
use crate::error::AgentError;
use crate::remote::Remote;

/// Units fetched and written at once.
pub const WORKERS: usize = 4;
/// Most chunk ids in one unit's `ReadChunks` call.
pub const UNIT_IDS: usize = 256;
/// Plaintext bytes per unit (a unit always holds at least one chunk).
pub const UNIT_BYTES: u64 = 4 << 20;
/// Files queued before a flush.
pub const MAX_PENDING: usize = 4096;

/// A file to write: where, its original path (for errors), its entry and its chunk list, apart
/// from the entry ([`EncodedManifest::entries_with_lists`]: a large file's is read from the
/// restore's scratch file as it is written, a small one's dropped with the job).
///
/// [`EncodedManifest::entries_with_lists`]: lifeboat_common::manifest::EncodedManifest::entries_with_lists
pub struct FileJob {
    pub dest: PathBuf,
    pub orig: PathBuf,
    /// Without its chunk ids and sizes: they are in `list`.
    pub entry: Entry,
    pub list: ChunkList,
}

/// Files queued for the next flush, with their paths and ancestors for conflict checks.
#[derive(Default)]
pub struct Pending {
    pub jobs: Vec<FileJob>,
    paths: HashSet<PathBuf>,
    ancestors: HashSet<PathBuf>,
}

impl Pending {
    pub fn push(&mut self, job: FileJob) {
        for a in job.dest.ancestors().skip(1) {
            if !self.ancestors.insert(a.to_owned()) {
                break;
            }
        }
        self.paths.insert(job.dest.clone());
        self.jobs.push(job);
    }

    /// Whether an entry at `dest` must wait until the queue is flushed.
    pub fn conflicts(&self, dest: &Path) -> bool {
        !self.jobs.is_empty()
            && (self.ancestors.contains(dest) || dest.ancestors().any(|a| self.paths.contains(a)))
    }

    pub fn is_full(&self) -> bool {
        self.jobs.len() >= MAX_PENDING
    }

    fn take(&mut self) -> Vec<FileJob> {
        self.paths.clear();
        self.ancestors.clear();
        std::mem::take(&mut self.jobs)
    }
}

/// What a flush needs besides the jobs.
pub struct Ctx<'a, R> {
    pub remote: &'a R,
    pub keys: &'a DataKeys,
    pub params: ChunkerParams,
    pub as_root: bool,
    /// Plaintext fetched and not yet written, all workers together.
    pub budget: Budget,
}

/// Totals of a flush, merged into the report.
#[derive(Default)]
struct Tally {
    files_written: u64,
    files_unchanged: u64,
    bytes_written: u64,
    written: Vec<PathBuf>,
}

/// Groups jobs, in order, into units of bounded ids and bytes.
fn units(jobs: Vec<FileJob>) -> Vec<Vec<FileJob>> {
    let mut out = Vec::new();
    let mut unit = Vec::new();
    let (mut ids, mut bytes) = (0usize, 0u64);
    for j in jobs {
        let (n, b) = (j.list.len(), j.entry.size);
        if !unit.is_empty() && (ids + n > UNIT_IDS || bytes + b > UNIT_BYTES) {
            out.push(std::mem::take(&mut unit));
            (ids, bytes) = (0, 0);
        }
        ids += n;
        bytes += b;
        unit.push(j);
    }
    if !unit.is_empty() {
        out.push(unit);
    }
    out
}

/// Writes every queued file (see the module docs); the directories of written files are added
/// to `written_in` (what the final `syncfs` needs: not every path, ~100 bytes per file).
pub async fn flush<R: Remote>(
    ctx: &Ctx<'_, R>,
    pending: &mut Pending,
    report: &mut RestoreReport,
    written_in: &mut HashSet<PathBuf>,
) -> Result<(), AgentError> {
    let jobs = pending.take();
    if jobs.is_empty() {
        return Ok(());
    }
    // Each worker takes the next unit whole: its jobs, and their chunk lists, are freed as soon
    // as it is written.
    let units = Mutex::new(units(jobs).into_iter().enumerate());
    let stop = AtomicBool::new(false);
    let tally = Mutex::new(Tally::default());
    let first_err: Mutex<Option<(usize, AgentError)>> = Mutex::new(None);
    let worker = || async {
        while !stop.load(Ordering::Relaxed) {
            let next = units.lock().unwrap_or_else(|p| p.into_inner()).next();
            let Some((u, unit)) = next else { break };
            let mut t = Tally::default();
            let res = run_unit(ctx, unit, &mut t).await;
            merge(&tally, t);
            if let Err(e) = res {
                stop.store(true, Ordering::Relaxed);
                let mut slot = first_err.lock().unwrap_or_else(|p| p.into_inner());
                if slot.as_ref().is_none_or(|(at, _)| u < *at) {
                    *slot = Some((u, e));
                }
            }
        }
    };
    tokio::join!(worker(), worker(), worker(), worker());
    let t = tally.into_inner().unwrap_or_else(|p| p.into_inner());
    report.files_written += t.files_written;
    report.files_unchanged += t.files_unchanged;
    report.bytes_written += t.bytes_written;
    written_in.extend(
        t.written
            .iter()
            .filter_map(|p| p.parent().map(Path::to_owned)),
    );
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

fn merge(into: &Mutex<Tally>, t: Tally) {
    let mut g = into.lock().unwrap_or_else(|p| p.into_inner());
    g.files_written += t.files_written;
    g.files_unchanged += t.files_unchanged;
    g.bytes_written += t.bytes_written;
    g.written.extend(t.written);
}

fn file_err(job: &FileJob, source: AgentError) -> AgentError {
    AgentError::RestoreFile {
        path: job.orig.display().to_string(),
        source: Box::new(source),
    }
}

/// One unit: skip unchanged files, fetch the others' chunks in one call, write them.
async fn run_unit<R: Remote>(
    ctx: &Ctx<'_, R>,
    jobs: Vec<FileJob>,
    t: &mut Tally,
) -> Result<(), AgentError> {
    let (keys, params) = (ctx.keys.clone(), ctx.params);
    let (jobs, unchanged) = tokio::task::spawn_blocking(move || {
        let unchanged: Vec<bool> = jobs
            .iter()
            .map(|j| {
                // A file chunked with its own parameters (a dump file) is checked with them.
                let p = j
                    .entry
                    .chunker
                    .as_ref()
                    .and_then(|c| c.params())
                    .unwrap_or(params);
                write::is_unchanged(&j.dest, &j.entry, &j.list, &keys, p)
            })
            .collect();
        (jobs, unchanged)
    })
    .await
    .map_err(|e| AgentError::Worker(e.to_string()))?;
    let mut todo = Vec::new();
    for (j, same) in jobs.into_iter().zip(unchanged) {
        if same {
            write::apply_metadata(&j.dest, &j.entry, false, ctx.as_root)
                .map_err(|e| file_err(&j, e))?;
            t.files_unchanged += 1;
        } else {
            todo.push(j);
        }
    }
    let batched = todo.len() > 1
        || todo
            .first()
            .is_some_and(|j| j.entry.size <= UNIT_BYTES && j.list.len() <= UNIT_IDS);
    if batched {
        let ids = todo
            .iter()
            .flat_map(|j| j.list.reader().map(|c| c.map(|(id, _)| id)))
            .collect::<Result<Vec<ChunkId>, _>>()
            .map_err(unreadable_entry)?;
        let held = ctx
            .budget
            .take(todo.iter().map(|j| j.entry.size).sum())
            .await?;
        let plain = if ids.is_empty() {
            Ok(HashMap::new())
        } else {
            let what = format!("{} files from {}", todo.len(), todo[0].orig.display());
            read_verified(ctx.remote, ctx.keys, &ids, &what).await
        };
        if let Ok(plain) = plain {
            let res = write_unit(ctx, todo, plain, t).await;
            drop(held);
            return res;
        }
        // Retried one file at a time below, so the error names the damaged file (the bytes
        // given back first: each file's fetches take their own).
        drop(held);
    }
    for j in todo {
        let n = write::write_file(
            ctx.remote,
            ctx.keys,
            &ctx.budget,
            &j.entry,
            &j.list,
            &j.dest,
            ctx.as_root,
        )
        .await
        .map_err(|e| file_err(&j, e))?;
        t.files_written += 1;
        t.bytes_written += n;
        t.written.push(j.dest);
    }
    Ok(())
}

/// Writes a unit's files from its fetched plaintexts on a blocking thread.
async fn write_unit<R>(
    ctx: &Ctx<'_, R>,
    todo: Vec<FileJob>,
    plain: HashMap<ChunkId, Vec<u8>>,
    t: &mut Tally,
) -> Result<(), AgentError> {
    let as_root = ctx.as_root;
    let done = tokio::task::spawn_blocking(move || {
        let mut done = Vec::with_capacity(todo.len());
        for j in todo {
            match write::write_file_from(&plain, &j.entry, &j.list, &j.dest, as_root) {
                Ok(n) => done.push((j.dest, n)),
                Err(source) => return Err((done, file_err(&j, source))),
            }
        }
        Ok(done)
    })
    .await
    .map_err(|e| AgentError::Worker(e.to_string()))?;
    let (done, err) = match done {
        Ok(d) => (d, None),
        Err((d, e)) => (d, Some(e)),
    };
    for (dest, n) in done {
        t.files_written += 1;
        t.bytes_written += n;
        t.written.push(dest);
    }
    err.map_or(Ok(()), Err)
}

/// Makes written files and their directories durable with one `syncfs(2)` per filesystem
/// they are on (found through the directories files were written in, `written_in`, and the
/// restored directories; a restore target is usually one filesystem).
/// `syncfs` writes back every dirty page and inode of that filesystem, the new names included,
/// and reports writeback errors since Linux 5.8. It replaced an `fsync` of every file and then
/// of every directory: 8,255 opens and journal commits for a 1 GiB web root. The cost: it also
/// flushes other processes' dirty data on the same filesystem (a restore usually runs on a
/// quiet host, or a fresh one).
pub async fn sync_all(written_in: HashSet<PathBuf>, dirs: Vec<PathBuf>) -> Result<(), AgentError> {
    let mut parents = written_in;
    parents.extend(dirs);
    tokio::task::spawn_blocking(move || sync_filesystems(parents))
        .await
        .map_err(|e| AgentError::Worker(e.to_string()))?
}

fn sync_filesystems(dirs: HashSet<PathBuf>) -> Result<(), AgentError> {
    use std::os::unix::fs::MetadataExt;
    let mut done: HashSet<u64> = HashSet::new();
    for d in dirs {
        // Not followed through a final symlink: a path replaced since by a symlink
        // (overlapping roots) is skipped, so nothing outside the target is opened.
        let dev = match fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() => m.dev(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(AgentError::io("cannot stat", &d, e)),
        };
        if !done.insert(dev) {
            continue;
        }
        let f = fs::File::open(&d).map_err(|e| AgentError::io("cannot open", &d, e))?;
        rustix::fs::syncfs(&f)
            .map_err(|e| AgentError::io("cannot sync the filesystem of", &d, e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, sizes: &[u32]) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            size: sizes.iter().map(|&s| u64::from(s)).sum(),
            chunks: vec![ChunkId([7; 32]); sizes.len()],
            chunk_sizes: sizes.to_vec(),
            ..Entry::default()
        }
    }

    fn job(e: &Entry) -> FileJob {
        let mut entry = e.clone();
        FileJob {
            dest: PathBuf::from("/t").join(e.rel_path()),
            orig: PathBuf::from("/o"),
            list: ChunkList::take(&mut entry),
            entry,
        }
    }

    #[test]
    fn units_pack_small_files_and_isolate_large_ones() {
        let es = [
            entry("a", &[100]),
            entry("b", &[200, 300]),
            entry("big", &[8 << 20, 8 << 20]),
            entry("c", &[10]),
        ];
        let names = |us: Vec<Vec<FileJob>>| -> Vec<Vec<String>> {
            us.iter()
                .map(|u| u.iter().map(|j| j.entry.display_path()).collect())
                .collect()
        };
        assert_eq!(
            names(units(es.iter().map(job).collect())),
            [vec!["a", "b"], vec!["big"], vec!["c"]]
        );
        let many: Vec<FileJob> = (0..300)
            .map(|i| job(&entry(&format!("f{i}"), &[1])))
            .collect();
        let lens: Vec<usize> = units(many).iter().map(Vec::len).collect();
        assert_eq!(lens, [UNIT_IDS, 300 - UNIT_IDS]);
    }

    #[test]
    fn conflicts_cover_same_path_ancestors_and_descendants() {
        let e = entry("x", &[1]);
        let mut p = Pending::default();
        assert!(!p.conflicts(Path::new("/t/a/b")));
        p.push(FileJob {
            dest: PathBuf::from("/t/a/b"),
            ..job(&e)
        });
        assert!(p.conflicts(Path::new("/t/a/b")), "same path");
        assert!(p.conflicts(Path::new("/t/a")), "an ancestor");
        assert!(p.conflicts(Path::new("/t/a/b/c")), "below a queued file");
        assert!(!p.conflicts(Path::new("/t/a/c")), "a sibling");
        p.take();
        assert!(!p.conflicts(Path::new("/t/a")));
    }
}
