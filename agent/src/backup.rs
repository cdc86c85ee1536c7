//! One backup of one source: walk, read (or answer from the cache), deduplicate and upload,
//! build and upload the manifest, commit.
//!
//! Pipeline: [`walk`] lists the entries; a [`read`] thread chunks files (bounded channel, so
//! memory does not grow with file size); an [`upload::Uploader`] batches ids through
//! `HaveChunks`, seals only the missing chunks on several threads and uploads them, one batch in
//! flight while the next is read (bounded: see [`upload`]); then the manifest is chunked and uploaded the
//! same way and `CommitSnapshot` streams every referenced id. What a pass learns per file and
//! per chunk (the walk's items, each file's result, its ids and sizes, the referenced ids to
//! sort) goes to unlinked scratch files in the state directory ([`pass_files`], [`spill`],
//! [`refs`]; ADR 0013), read back in walk order, so its memory does not grow with the source.
//! Failure modes:
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

mod cache_update;
pub mod database;
pub mod manifest_upload;
pub mod pass_files;
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

use crate::cache::{FileCache, NoCache};
use crate::config::{PathPatterns, SourceConfig};
use crate::error::AgentError;
use crate::remote::{CommitOutcome, CommitRequest, RefStream, Remote};
use crate::scratch::scratch_error;
use cache_update::{CacheKeys, PassFiles, update_cache};
use lifeboat_common::manifest::ChunkPieces;
use manifest_upload::{ManifestSink, upload_manifest};
use pass_files::{ItemWriter, Items, ResultWriter, Results};
use read::{Opener, ReadJob, ReadMsg, ReadOut};
use refs::{RefSorter, References};
use spill::{ChunkLists, ListWriter, PIECE_CHUNKS, SpanPieces};
use upload::{UploadStats, Uploader};
use walk::Unreadable;

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
    /// What the pass recorded per file, for the file cache after a commit.
    files: PassFiles,
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
                let keys = CacheKeys {
                    stamp: cache_stamp(&ctx.keys, src),
                    source: src.name.clone(),
                    roots: src.paths.clone(),
                };
                update_cache(ctx.cache.clone(), keys, pass.files).await;
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

async fn run_pass<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
    use_cache: bool,
    started_ms: i64,
) -> Result<Pass, AgentError> {
    let (roots, excludes) = (src.paths.clone(), src.excludes.clone());
    let dir = ctx.scratch_dir.clone();
    let t0 = Instant::now();
    let (items, unreadable) =
        tokio::task::spawn_blocking(move || walk_to_scratch(&roots, &excludes, &dir))
            .await
            .map_err(|e| AgentError::Worker(e.to_string()))??;
    let items = Arc::new(items);
    let walk_ms = t0.elapsed().as_millis();
    let session = ctx.remote.begin_session(&src.name).await?;
    let mut up = Uploader::new(ctx.remote, session, ctx.keys.clone(), ctx.zstd_level)
        .with_bandwidth((ctx.bandwidth)(&src.name))
        .with_progress(ctx.progress.clone(), &src.name, items.file_bytes());
    let mut read = ReadTally {
        unreadable,
        bytes_read: 0,
    };
    let cache: Arc<dyn FileCache> = if use_cache {
        ctx.cache.clone()
    } else {
        Arc::new(NoCache)
    };
    let (lists, results) = read_pass(ctx, src, &items, cache, &mut up, &mut read).await?;
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
    let unreadable = read.unreadable.len() as u64;
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
    let report = make_report(src, &stats, up.stats, read);
    Ok(Pass {
        outcome,
        report,
        files: PassFiles {
            items,
            results,
            lists,
        },
    })
}

/// Walks `roots` into a scratch file in `dir` ([`pass_files`]); returns the items and what
/// could not be read.
fn walk_to_scratch(
    roots: &[PathBuf],
    excludes: &PathPatterns,
    dir: &Path,
) -> Result<(Items, Vec<Unreadable>), AgentError> {
    let err = |e| scratch_error(dir, e);
    let mut items = ItemWriter::create(dir).map_err(err)?;
    let unreadable = walk::walk(roots, excludes, &mut |i| items.push(&i)).map_err(err)?;
    Ok((items.finish().map_err(err)?, unreadable))
}

/// What the read learnt besides each file's result: what could not be read, and the bytes read.
struct ReadTally {
    unreadable: Vec<Unreadable>,
    bytes_read: u64,
}

/// Reads every file among `items` on a thread and feeds their chunks to the uploader; returns
/// their chunk lists and results.
async fn read_pass<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
    items: &Arc<Items>,
    cache: Arc<dyn FileCache>,
    up: &mut Uploader<'_, R>,
    tally: &mut ReadTally,
) -> Result<(ChunkLists, Results), AgentError> {
    let dir = &ctx.scratch_dir;
    let out = ReadOut {
        lists: ListWriter::create(dir).map_err(|e| scratch_error(dir, e))?,
        results: ResultWriter::create(dir).map_err(|e| scratch_error(dir, e))?,
    };
    let job = ReadJob {
        items: items.clone(),
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
        .spawn(move || read::run(job, out, tx))
        .map_err(|e| AgentError::Worker(format!("cannot start the file reader thread: {e}")))?;
    loop {
        // While waiting for the reader, drive the flying batch (upload overlaps reading).
        let Some(msg) = up.recv_landing(&mut rx).await? else {
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
                tally.bytes_read += presumed_bytes;
                up.count_presumed(presumed_bytes);
                for (id, data) in chunks {
                    tally.bytes_read += data.len() as u64;
                    up.add(id, data).await?;
                }
            }
            // A cached file's chunks are presumed stored like a changed file's old ones: the
            // commit checks them (`read`'s module docs).
            ReadMsg::Cached { bytes } => up.count_presumed(bytes),
            ReadMsg::FileFailed { path, error } => {
                warn!(path = %path.display(), error = %error, "cannot read file; it is left out of this snapshot");
                tally.unreadable.push(Unreadable::new(&path, error));
            }
            ReadMsg::Finished(done) => return done.map_err(|e| scratch_error(dir, e)),
        }
    }
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
    items: &'a Items,
    results: &'a Results,
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
    let mut results = files.results.reader();
    for next in files.items.reader() {
        let (i, item) = next.map_err(scratch_err)?;
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
                let Some(done) = results.of(i).map_err(scratch_err)? else {
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
    read: ReadTally,
) -> BackupReport {
    BackupReport {
        snapshot_id: String::new(),
        source: src.name.clone(),
        files: stats.files,
        dirs: stats.dirs,
        symlinks: stats.symlinks,
        files_read: stats.files_read,
        bytes_read: read.bytes_read,
        logical_bytes: stats.logical_bytes,
        chunks: stats.chunks,
        new_chunks: up.new_chunks,
        new_logical_bytes: up.new_logical_bytes,
        uploaded_bytes: up.uploaded_bytes,
        partial: !read.unreadable.is_empty(),
        unreadable: read.unreadable,
        duration_ms: 0,
        databases: Vec::new(),
    }
}
