//! One backup of one source: walk, read (or answer from the cache), deduplicate and upload,
//! build and upload the manifest, commit.
//!
//! Pipeline: [`walk`] lists the entries; a [`read`] thread chunks files (bounded channel, so
//! memory does not grow with file size); an [`upload::Uploader`] batches ids through
//! `HaveChunks`, seals only the missing chunks on several threads and uploads them, one batch in
//! flight while the next is read (bounded: see [`upload`]); then the manifest is chunked and uploaded the
//! same way and `CommitSnapshot` streams every referenced id. What a pass learns per chunk (each
//! file's ids and sizes, the referenced ids to sort) goes to unlinked scratch files in the
//! state directory ([`spill`], [`refs`]; ADR 0013), so its memory does not grow with the
//! source's chunks. Failure modes:
//! - an unreadable input is listed in the report and skipped; the snapshot still commits
//!   (`partial`, exit code 3);
//! - a commit answered with `missing` (the file cache named chunks the controller does not
//!   have: they are presumed stored, never asked about, see [`read`]): the whole pass runs again
//!   without the cache (all chunks are offered again), at most [`MAX_ATTEMPTS`] times, then a
//!   clear error;
//! - cancellation (dropping the future) stops before the commit: nothing partial is committed,
//!   uploaded chunks are durable and found by the next run's `HaveChunks`;
//! - a scratch file that cannot be written or read back (state directory full or failing): the
//!   pass fails naming the directory, before its commit or with the commit refused for its
//!   short reference stream; nothing partial is committed.
//!
//! The file cache is updated only after a successful commit.

pub mod database;
pub mod manifest_upload;
pub mod read;
pub mod refs;
pub mod spill;
pub mod throttle;
pub mod upload;
pub mod walk;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::DataKeys;
use lifeboat_common::manifest::{Entry, EntryKind, ManifestHeader};
use lifeboat_proto::v1::SnapshotStats;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cache::{CacheStat, FileCache, NoCache, PutSource};
use crate::config::SourceConfig;
use crate::error::AgentError;
use crate::remote::{CommitOutcome, CommitRequest, RefStream, Remote};
use crate::scratch::scratch_error;
use lifeboat_common::manifest::ChunkPieces;
use manifest_upload::{ManifestSink, upload_manifest};
use read::{FileDone, Opener, ReadJob, ReadMsg};
use refs::{RefSorter, References};
use spill::{ChunkLists, ListReader, ListWriter, PIECE_CHUNKS, Span, SpanPieces};
use upload::{UploadStats, Uploader};
use walk::{Unreadable, WalkItem};

/// Commit attempts before giving up on a controller that keeps reporting missing chunks.
pub const MAX_ATTEMPTS: u32 = 2;
/// Messages buffered between the reader thread and the uploader (each ~256 KiB of chunks, or one
/// chunk of up to 4 MiB, [`read::HANDOFF_BYTES`]): two keep the reader busy while the uploader
/// takes one.
const READ_CHANNEL: usize = 2;

/// What a backup needs besides the source.
pub struct BackupContext<'a, R: Remote> {
    pub remote: &'a R,
    pub keys: DataKeys,
    pub zstd_level: i32,
    pub cache: Arc<dyn FileCache>,
    pub opener: Arc<dyn Opener>,
    /// Upload limit of a source in bytes per second (0: unlimited), asked at the start of
    /// each backup: the controller's policy under `run`, `--bandwidth` on the command line.
    pub bandwidth: Bandwidth,
    /// Told how a backup advances, at most about once a second ([`upload::Uploader`]).
    pub progress: Progress,
    /// Where a pass keeps its scratch files ([`spill`], [`refs`]): the agent's state directory.
    pub scratch_dir: PathBuf,
}

/// How far one backup is: plaintext bytes chunked so far (files read, dump streamed), the
/// total when known in advance (file sources: the sum of the walked sizes; 0 for dumps), and
/// the bytes uploaded so far.
#[derive(Clone, Debug, Default)]
pub struct BackupProgress {
    pub source: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub uploaded_bytes: u64,
}

/// See [`BackupContext::progress`].
pub type Progress = Arc<dyn Fn(&BackupProgress) + Send + Sync>;

/// Progress goes nowhere.
pub fn no_progress() -> Progress {
    Arc::new(|_| {})
}

/// See [`BackupContext::bandwidth`].
pub type Bandwidth = Arc<dyn Fn(&str) -> u64 + Send + Sync>;

/// No upload limit.
pub fn unlimited() -> Bandwidth {
    Arc::new(|_| 0)
}

/// The outcome of one backup, as printed by `backup --json`.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    pub snapshot_id: String,
    pub source: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    pub logical_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub new_logical_bytes: u64,
    pub uploaded_bytes: u64,
    pub unreadable: Vec<Unreadable>,
    pub partial: bool,
    pub duration_ms: u64,
    /// Databases dumped (mysql sources only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<database::DatabaseSummary>,
}

/// Everything one pass produced.
struct Pass {
    outcome: CommitOutcome,
    report: BackupReport,
    /// Each file to record in the file cache: its key, its stat, and where its chunk list is.
    cache_entries: Vec<(Vec<u8>, CacheStat, Span)>,
    lists: ChunkLists,
}

/// Backs up one source now. A backup that fails for a reason other than the controller being
/// unreachable or refusing us (a dump that failed validation, an unreadable config) is reported
/// to the controller, so `lifeboatctl snapshots list` shows it.
pub async fn backup_source<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
) -> Result<BackupReport, AgentError> {
    let started = Instant::now();
    let started_ms = now_unix_ms();
    let res = match &src.mysql {
        Some(cfg) => database::backup_mysql(ctx, src, cfg, started, started_ms).await,
        None => backup_files(ctx, src, started, started_ms).await,
    };
    if let Err(e) = &res
        && e.class() == crate::client::FailureClass::Other
    {
        let report = crate::remote::FailureReport {
            source: src.name.clone(),
            started_at_unix_ms: started_ms,
            finished_at_unix_ms: now_unix_ms(),
            reason: e.to_string(),
        };
        match ctx.remote.report_failure(report).await {
            Ok(id) => {
                warn!(source = %src.name, failure = %id, "failed backup reported to the controller")
            }
            Err(re) => {
                warn!(source = %src.name, error = %re, "could not report the failed backup to the controller")
            }
        }
    }
    res
}

async fn backup_files<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
    started: Instant,
    started_ms: i64,
) -> Result<BackupReport, AgentError> {
    let mut last_missing = 0;
    for attempt in 1..=MAX_ATTEMPTS {
        let pass = run_pass(ctx, src, attempt == 1, started_ms).await?;
        match pass.outcome {
            CommitOutcome::Committed { snapshot_id } => {
                update_cache(ctx.cache.clone(), pass.cache_entries, pass.lists).await;
                let mut report = pass.report;
                report.snapshot_id = snapshot_id;
                report.duration_ms =
                    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                info!(source = %src.name, snapshot = %report.snapshot_id, files = report.files, new_chunks = report.new_chunks, uploaded_bytes = report.uploaded_bytes, unreadable = report.unreadable.len(), "snapshot committed");
                return Ok(report);
            }
            CommitOutcome::Missing(missing) => {
                warn!(source = %src.name, missing = missing.len(), attempt, "controller reports referenced chunks missing; backing up again without the file cache");
                last_missing = missing.len();
            }
        }
    }
    Err(AgentError::CommitGaveUp {
        source_name: src.name.clone(),
        missing: last_missing,
        attempts: MAX_ATTEMPTS,
    })
}

/// Records the committed pass's files in the file cache, each with its chunk list read back
/// from the scratch file in pieces (on a blocking thread: sled and the file both block). A list
/// that cannot be read ends the update with a warning: the cache is only a cache.
async fn update_cache(
    cache: Arc<dyn FileCache>,
    entries: Vec<(Vec<u8>, CacheStat, Span)>,
    lists: ChunkLists,
) {
    let put = tokio::task::spawn_blocking(move || {
        let mut files = CacheUpdate {
            entries: entries.into_iter(),
            lists: lists.reader(),
            span: Span::default(),
            at: 0,
        };
        if let Err(e) = cache.put_all(&mut files) {
            warn!(error = %e, "cannot read a chunk list back from the backup's scratch file; the file cache misses the rest of this backup's files, which the next backup reads again");
        }
    });
    if let Err(e) = put.await {
        warn!(error = %e, "the file cache update stopped; the next backup reads these files again");
    }
}

/// The files a committed pass records in the cache, their lists read from its scratch file.
struct CacheUpdate<'a> {
    entries: std::vec::IntoIter<(Vec<u8>, CacheStat, Span)>,
    lists: ListReader<'a>,
    /// The current file's list, and how much of it was handed out.
    span: Span,
    at: u64,
}

impl PutSource for CacheUpdate<'_> {
    fn next_file(&mut self) -> std::io::Result<Option<(Vec<u8>, CacheStat, u64)>> {
        Ok(self.entries.next().map(|(key, stat, span)| {
            (self.span, self.at) = (span, 0);
            (key, stat, span.count())
        }))
    }

    fn next_records(&mut self, n: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        let part = self.span.part(self.at, n as u64);
        if part.count() != n as u64 {
            return Err(std::io::Error::other("a chunk list asked past its end"));
        }
        self.at += part.count();
        self.lists.read_records(part, out)
    }
}

/// Files read in one pass: results by walk index (`None` for entries that are not files or
/// were not read), plus what could not be read. A dense vector, not a map: at 20,000 files a
/// hash map of results held 6 MiB (load factor, hashes), a third of it empty.
#[derive(Default)]
struct FileResults {
    done: Vec<Option<FileDone>>,
    unreadable: Vec<Unreadable>,
    bytes_read: u64,
}

impl FileResults {
    fn set(&mut self, done: FileDone) {
        if let Some(slot) = self.done.get_mut(done.index) {
            *slot = Some(done);
        }
    }

    fn get(&self, index: usize) -> Option<&FileDone> {
        self.done.get(index).and_then(Option::as_ref)
    }

    /// Forgets what was recorded for `index` (the file failed to read).
    fn clear(&mut self, index: usize) {
        if let Some(slot) = self.done.get_mut(index) {
            *slot = None;
        }
    }
}

async fn run_pass<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
    use_cache: bool,
    started_ms: i64,
) -> Result<Pass, AgentError> {
    let (roots, excludes) = (src.paths.clone(), src.excludes.clone());
    let t0 = Instant::now();
    let walked = tokio::task::spawn_blocking(move || walk::walk(&roots, &excludes))
        .await
        .map_err(|e| AgentError::Worker(e.to_string()))?;
    let items = Arc::new(walked.items);
    let walk_ms = t0.elapsed().as_millis();
    let session = ctx.remote.begin_session(&src.name).await?;
    let total: u64 = items
        .iter()
        .filter(|i| i.kind == EntryKind::File)
        .map(|i| i.stat.size)
        .sum();
    let mut up = Uploader::new(ctx.remote, session, ctx.keys.clone(), ctx.zstd_level)
        .with_bandwidth((ctx.bandwidth)(&src.name))
        .with_progress(ctx.progress.clone(), &src.name, total);
    let files: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].kind == EntryKind::File)
        .collect();
    let mut results = FileResults {
        done: std::iter::repeat_with(|| None).take(items.len()).collect(),
        unreadable: walked.unreadable,
        ..FileResults::default()
    };
    let cache: Arc<dyn FileCache> = if use_cache {
        ctx.cache.clone()
    } else {
        Arc::new(NoCache)
    };
    let lists = read_pass(ctx, src, &items, files, cache, &mut up, &mut results).await?;
    up.flush().await?;
    let read_ms = t0.elapsed().as_millis();
    // What the file pass learnt is not needed for the manifest's own chunks (they are asked
    // about like any others): free it before the manifest is built.
    up.forget_durable();
    let header = manifest_header(src, started_ms, root_bytes(src));
    let (writer_src, writer_items) = (src.clone(), items.clone());
    let scratch = ctx.scratch_dir.clone();
    let (manifest_ids, (results, lists, refs, stats)) =
        upload_manifest(&mut up, &ctx.keys, &header, move |sink| {
            let files = FilesForManifest {
                items: &writer_items,
                results: &results,
                lists: &lists,
                scratch: &scratch,
            };
            let (refs, stats) = write_manifest(&writer_src, &files, sink)?;
            Ok((results, lists, refs, stats))
        })
        .await?;
    let to_cache = cache_entries(ctx, src, &items, &results);
    drop(items);
    let unreadable = results.unreadable.len() as u64;
    let manifest_ms = t0.elapsed().as_millis();
    let (outcome, stats) = commit_snapshot(ctx, &mut up, manifest_ids, refs, started_ms, |u| {
        SnapshotStats {
            new_chunks: u.new_chunks,
            new_logical_bytes: u.new_logical_bytes,
            unreadable,
            ..stats
        }
    })
    .await?;
    debug!(source = %src.name, walk_ms, read_ms, manifest_ms, commit_ms = t0.elapsed().as_millis(), "backup pass timings (since the pass began)");
    let mut results = results;
    let report = make_report(src, &stats, up.stats, &mut results);
    Ok(Pass {
        outcome,
        report,
        cache_entries: to_cache,
        lists,
    })
}

/// Reads the files `todo` (walk indices) on a thread and feeds their chunks to the uploader;
/// returns their chunk lists (by `results`' spans).
async fn read_pass<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
    items: &Arc<Vec<WalkItem>>,
    todo: Vec<usize>,
    cache: Arc<dyn FileCache>,
    up: &mut Uploader<'_, R>,
    results: &mut FileResults,
) -> Result<ChunkLists, AgentError> {
    let lists =
        ListWriter::create(&ctx.scratch_dir).map_err(|e| scratch_error(&ctx.scratch_dir, e))?;
    let job = ReadJob {
        items: items.clone(),
        todo,
        roots: src.paths.clone(),
        source: src.name.clone(),
        params: src.chunker,
        dump_files: src.dump_files.clone(),
        keys: ctx.keys.clone(),
        cache,
        cache_stamp: cache_stamp(&ctx.keys, src),
        opener: ctx.opener.clone(),
    };
    let (tx, mut rx) = mpsc::channel(READ_CHANNEL);
    std::thread::Builder::new()
        .name("lifeboat-read".into())
        .spawn(move || read::run(job, lists, tx))
        .map_err(|e| AgentError::Worker(format!("cannot start the file reader thread: {e}")))?;
    loop {
        // While waiting for the reader, drive the flying batch (upload overlaps reading).
        let msg = tokio::select! {
            biased;
            landed = up.land(), if up.is_flying() => {
                landed?;
                continue;
            }
            msg = rx.recv() => msg,
        };
        let Some(msg) = msg else {
            return Err(AgentError::Worker(
                "the file reader thread stopped before the end".into(),
            ));
        };
        up.keep_alive().await?;
        match msg {
            ReadMsg::Chunks {
                chunks,
                presumed_bytes,
            } => {
                results.bytes_read += presumed_bytes;
                up.count_presumed(presumed_bytes);
                for (id, data) in chunks {
                    results.bytes_read += data.len() as u64;
                    up.add(id, data).await?;
                }
            }
            ReadMsg::FileDone(done) => results.set(done),
            // A cached file's chunks are presumed stored like a changed file's old ones: the
            // commit checks them (`read`'s module docs).
            ReadMsg::Cached(hits) => {
                for done in hits {
                    up.count_presumed(done.size);
                    results.set(done);
                }
            }
            ReadMsg::FileFailed { index, error } => {
                let path = items
                    .get(index)
                    .map(|i| i.abs(&src.paths))
                    .unwrap_or_default();
                warn!(path = %path.display(), error = %error, "cannot read file; it is left out of this snapshot");
                results.clear(index);
                results.unreadable.push(Unreadable::new(&path, error));
            }
            ReadMsg::Finished(lists) => {
                return lists.map_err(|e| scratch_error(&ctx.scratch_dir, e));
            }
        }
    }
}

/// The file cache's key and stat for every file read whole in this backup (`FileDone::cacheable`),
/// with its chunk list's span: the ids and sizes are read back once the snapshot is committed.
fn cache_entries<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
    items: &[WalkItem],
    results: &FileResults,
) -> Vec<(Vec<u8>, CacheStat, Span)> {
    let stamp = cache_stamp(&ctx.keys, src);
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let done = results.get(i).filter(|d| d.cacheable)?;
            let key = read::item_cache_key(&stamp, &src.name, &src.paths, item);
            Some((key, read::cache_stat(item), done.span))
        })
        .collect()
}

/// The source's roots as bytes, by index (as manifest entries and cache keys name them).
fn root_bytes(src: &SourceConfig) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    src.paths
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect()
}

/// Cache keys depend on the chunk-id key, the chunker parameters and which files are chunked
/// as dumps (see [`crate::cache`]): changing either re-reads the files once.
fn cache_stamp(keys: &DataKeys, src: &SourceConfig) -> [u8; 8] {
    let mut input = b"lifeboat file cache stamp v1".to_vec();
    for v in [src.chunker.min, src.chunker.avg, src.chunker.max] {
        input.extend_from_slice(&v.to_le_bytes());
    }
    // Without dump patterns the stamp is the one of earlier agents (their caches stay valid).
    for p in src.dump_files.patterns() {
        input.extend_from_slice(&(p.len() as u64).to_le_bytes());
        input.extend_from_slice(p.as_bytes());
    }
    let id = keys.chunk_id(&input);
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&id.as_bytes()[..8]);
    stamp
}

/// What the manifest is written from: the walk, what the pass recorded per file, and the
/// files' chunk lists.
struct FilesForManifest<'a> {
    items: &'a [WalkItem],
    results: &'a FileResults,
    lists: &'a ChunkLists,
    scratch: &'a Path,
}

/// Writes the manifest's entries to `sink` (walk order, unreadable files left out); returns the
/// distinct data ids it references (sorted; `stats.chunks` counts them) and the snapshot's
/// counts. Entries are encoded one at a time, each with its file's chunk list read back from
/// the scratch file and dropped once encoded, and uploaded as they are written
/// ([`manifest_upload`]): the largest list in memory is one file's.
fn write_manifest(
    src: &SourceConfig,
    files: &FilesForManifest<'_>,
    sink: &mut ManifestSink,
) -> Result<(References, SnapshotStats), AgentError> {
    let scratch_err = |e| scratch_error(files.scratch, e);
    let mut stats = SnapshotStats::default();
    let mut refs = RefSorter::new(files.scratch);
    let mut lists = files.lists.reader();
    for (i, item) in files.items.iter().enumerate() {
        // A large file's list is read in pieces (for the references, then by the encoder),
        // never whole: the 1 GiB dump's would be 3.9 MB.
        let mut large = None;
        let mut e = Entry {
            root: item.root,
            path: item.rel.clone(),
            kind: item.kind as i32,
            mode: item.stat.mode,
            uid: item.stat.uid,
            gid: item.stat.gid,
            mtime_sec: item.stat.mtime_sec,
            mtime_nsec: item.stat.mtime_nsec,
            ..Entry::default()
        };
        match item.kind {
            EntryKind::File => {
                let Some(done) = files.results.get(i) else {
                    continue;
                };
                e.size = done.size;
                let params = src.chunker_for(&item.abs(&src.paths));
                if params != src.chunker {
                    e.chunker = Some(params.into());
                }
                if done.span.count() > PIECE_CHUNKS {
                    let mut pieces = SpanPieces::new(files.lists, done.span);
                    while let Some((ids, _)) = pieces.next_piece().map_err(scratch_err)? {
                        refs.extend(&ids).map_err(scratch_err)?;
                    }
                    large = Some(pieces);
                } else {
                    (e.chunks, e.chunk_sizes) = lists.read(done.span).map_err(scratch_err)?;
                    refs.extend(&e.chunks).map_err(scratch_err)?;
                }
                stats.files += 1;
                stats.logical_bytes += done.size;
                stats.files_read += u64::from(!done.cached);
            }
            EntryKind::Dir => stats.dirs += 1,
            EntryKind::Symlink => {
                e.symlink_target = item.symlink_target.clone();
                stats.symlinks += 1;
            }
            EntryKind::Unspecified => continue,
        }
        match &mut large {
            Some(pieces) => sink.push_pieces(&e, pieces)?,
            None => sink.push(&e)?,
        }
    }
    let refs = refs.finish().map_err(scratch_err)?;
    stats.chunks = refs.len();
    Ok((refs, stats))
}

/// The manifest header of a snapshot of `src` taken at `created_ms`, with the given roots and no
/// database metadata (a database source sets it).
pub(crate) fn manifest_header(
    src: &SourceConfig,
    created_ms: i64,
    roots: Vec<Vec<u8>>,
) -> ManifestHeader {
    ManifestHeader {
        source: src.name.clone(),
        kind: src.kind.as_str().into(),
        roots,
        chunker: Some(src.chunker.into()),
        created_at_unix_ms: created_ms,
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        database: None,
    }
}

/// The last step of every backup, whatever the source kind, once the manifest's chunks are
/// handed to the uploader ([`manifest_upload`]): flushes the uploader (everything is then
/// durable), and streams the commit of every data id (`references`) plus the manifest's ids,
/// read back on a blocking thread as the stream is sent. `stats` builds the snapshot's stats
/// from the uploader's final totals. The caller handles a `Missing` outcome (its re-send policy
/// differs per source).
pub(crate) async fn commit_snapshot<R: Remote>(
    ctx: &BackupContext<'_, R>,
    up: &mut Uploader<'_, R>,
    manifest_ids: Vec<ChunkId>,
    references: References,
    started_ms: i64,
    stats: impl FnOnce(UploadStats) -> SnapshotStats,
) -> Result<(CommitOutcome, SnapshotStats), AgentError> {
    up.flush().await?;
    let stats = stats(up.stats);
    lifeboat_common::failpoint::hit("agent.before_commit");
    let per = up.session().max_ids;
    let (tx, rx) = mpsc::channel(2);
    let added = manifest_ids.clone();
    let references = tokio::task::spawn_blocking(move || {
        let mut references = references;
        references.add(&added)?;
        Ok::<_, std::io::Error>(references)
    })
    .await
    .map_err(|e| AgentError::Worker(e.to_string()))?
    .map_err(|e| scratch_error(&ctx.scratch_dir, e))?;
    let count = references.len();
    // A read of the scratch file that fails ends the stream early: the controller then refuses
    // the commit for its count, and the read's error is the one to report. It is recorded
    // before the stream ends (`tx` is dropped after it), so it is there when the call returns.
    let failed: Arc<std::sync::Mutex<Option<std::io::Error>>> = Arc::default();
    let record = failed.clone();
    tokio::task::spawn_blocking(move || {
        if let (Err(e), Ok(mut slot)) = (references.send(per, &tx), record.lock()) {
            *slot = Some(e);
        }
        drop(tx);
    });
    let outcome = ctx
        .remote
        .commit(CommitRequest {
            session_id: up.session().id.clone(),
            started_at_unix_ms: started_ms,
            finished_at_unix_ms: now_unix_ms(),
            stats,
            manifest_ids,
            references: RefStream { count, batches: rx },
        })
        .await;
    if let Some(e) = failed.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(scratch_error(&ctx.scratch_dir, e));
    }
    Ok((outcome?, stats))
}

fn make_report(
    src: &SourceConfig,
    stats: &SnapshotStats,
    up: UploadStats,
    results: &mut FileResults,
) -> BackupReport {
    let unreadable = std::mem::take(&mut results.unreadable);
    BackupReport {
        snapshot_id: String::new(),
        source: src.name.clone(),
        files: stats.files,
        dirs: stats.dirs,
        symlinks: stats.symlinks,
        files_read: stats.files_read,
        bytes_read: results.bytes_read,
        logical_bytes: stats.logical_bytes,
        chunks: stats.chunks,
        new_chunks: up.new_chunks,
        new_logical_bytes: up.new_logical_bytes,
        uploaded_bytes: up.uploaded_bytes,
        partial: !unreadable.is_empty(),
        unreadable,
        duration_ms: 0,
        databases: Vec::new(),
    }
}
