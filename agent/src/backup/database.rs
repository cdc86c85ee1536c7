//! Backup of a `mysql` source: one validated dump stream per database (and one of users and
//! grants), streamed into the same dedup → seal → upload path as files, then a manifest that
//! records the server, binlog position, tables and row counts, and one commit.
//!
//! Validation, every time, per dump: the tool's exit status (stderr kept in the error), a
//! stdout read error, an empty stream, the `-- Dump completed` trailer, and every table the
//! server listed before the dump having a `CREATE TABLE` in the stream. Row counts are counted
//! from the stream itself (exact for what was dumped). Any failure is a **failed backup**
//! ([`AgentError::DumpFailed`]): nothing is committed, so `latest` still names the previous
//! good snapshot; the caller reports it to the controller. Chunks already uploaded are durable
//! and simply unreferenced (the next backup finds them with `HaveChunks`).
//!
//! Manifest layout: root 0 is `/`; each database is a file entry `databases/<name>.sql` (mode
//! 0600), the users dump is `users.sql`; [`DatabaseMeta`] in the header ties them together.
//!
//! Memory: each dump's chunk ids and sizes go to the pass's scratch file as the chunks arrive
//! ([`super::spill`]) and its manifest entry is written from them read back in pieces, as a
//! large file's is: a 10 GiB dump's list (~47 MB at 8 KiB chunks) is never held.

use std::time::Instant;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::manifest::{
    ChunkPieces, DatabaseDump, DatabaseMeta, Entry, EntryKind, TableInfo,
};
use lifeboat_proto::v1::SnapshotStats;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::manifest_upload::upload_manifest;
use super::refs::RefSorter;
use super::spill::{ChunkLists, ListWriter, Span, SpanPieces};
use super::upload::Uploader;
use super::{BackupContext, BackupReport};
use crate::config::{MysqlConfig, SourceConfig, Verify};
use crate::error::AgentError;
use crate::mysql::dump::{DumpDone, DumpJob, DumpMsg, describe_status};
use crate::mysql::{Flavor, Objects, Server, ServerInfo, binlog_option};
use crate::remote::{CommitOutcome, Remote};

/// Per database, as printed by `backup --json`.
#[derive(Clone, Debug, Serialize)]
pub struct DatabaseSummary {
    pub name: String,
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// The manifest path of a database's dump.
pub fn dump_path(db: &str) -> String {
    format!("databases/{db}.sql")
}

/// The manifest path of the users-and-grants dump.
pub const USERS_PATH: &str = "users.sql";

struct Planned {
    info: ServerInfo,
    dbs: Vec<(String, Objects, (String, String))>,
}

fn plan(server: &Server, cfg: &MysqlConfig) -> Result<Planned, AgentError> {
    let info = server.info()?;
    let names = if cfg.databases.is_empty() {
        server.databases()?
    } else {
        cfg.databases.clone()
    };
    let mut dbs = Vec::new();
    for name in names {
        let charset = server.schema(&name)?.ok_or_else(|| {
            AgentError::Invalid(format!(
                "database {name} does not exist on the server; fix databases = [...] in the source"
            ))
        })?;
        let objects = server.objects(&name)?;
        dbs.push((name, objects, charset));
    }
    Ok(Planned { info, dbs })
}

/// Backs up a `mysql` source now.
pub async fn backup_mysql<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
    cfg: &MysqlConfig,
    started: Instant,
    started_ms: i64,
) -> Result<BackupReport, AgentError> {
    let server = Server::new(cfg)?;
    let (s2, c2) = (server.clone(), cfg.clone());
    let planned = tokio::task::spawn_blocking(move || plan(&s2, &c2))
        .await
        .map_err(|e| AgentError::Worker(e.to_string()))?
        .map_err(|e| AgentError::DumpFailed {
            source_name: src.name.clone(),
            what: "the server check before the dump".into(),
            reason: e.to_string(),
        })?;
    let session = ctx.remote.begin_session(&src.name).await?;
    let mut up = Uploader::new(ctx.remote, session, ctx.keys.clone(), ctx.zstd_level)
        .with_bandwidth((ctx.bandwidth)(&src.name))
        .with_progress(ctx.progress.clone(), &src.name, 0);
    let mut meta = DatabaseMeta {
        server_version: planned.info.version.clone(),
        dump_tool: server.dump_tool.display().to_string(),
        gtid: planned.info.gtid.clone(),
        verify: cfg.verify.as_str().into(),
        ..DatabaseMeta::default()
    };
    let scratch_err = |e| crate::scratch::scratch_error(&ctx.scratch_dir, e);
    let mut lists = ListWriter::create(&ctx.scratch_dir).map_err(scratch_err)?;
    let mut entries = Vec::new();
    let mut summaries = Vec::new();
    let fail = |database: &str, reason: String| AgentError::DumpFailed {
        source_name: src.name.clone(),
        what: format!("database {database}"),
        reason,
    };
    for (db, objects, (charset, collation)) in &planned.dbs {
        let mut args: Vec<String> = [
            "--single-transaction",
            "--quick",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--no-create-db",
        ]
        .map(String::from)
        .to_vec();
        if planned.info.log_bin {
            args.push(binlog_option(planned.info.flavor).into());
        }
        args.push(db.clone());
        let (done, span) = dump_one(ctx, src, &server, args, &mut up, &mut lists).await?;
        validate(&done, &server, objects).map_err(|r| fail(db, r))?;
        let s = &done.summary;
        for extra in s.tables.iter().filter(|t| !objects.tables.contains(t)) {
            warn!(database = %db, table = %extra, "table created during the dump; it is in this snapshot");
        }
        if meta.binlog_file.is_empty() {
            meta.binlog_file = s.binlog_file.clone();
            meta.binlog_position = s.binlog_position;
        }
        let tables: Vec<TableInfo> = s
            .tables
            .iter()
            .map(|t| TableInfo {
                name: t.clone(),
                rows: s.rows.get(t).copied().unwrap_or(0),
                checksum: None,
            })
            .collect();
        summaries.push(DatabaseSummary {
            name: db.clone(),
            tables: tables.len(),
            rows: tables.iter().map(|t| t.rows).sum(),
            bytes: done.size,
        });
        info!(database = %db, tables = tables.len(), bytes = done.size, "database dump validated");
        entries.push((dump_entry(&dump_path(db), &done), span));
        meta.databases.push(DatabaseDump {
            name: db.clone(),
            path: dump_path(db),
            default_charset: charset.clone(),
            default_collation: collation.clone(),
            tables,
            views: objects.views.clone(),
            routines: objects.routines.clone(),
            triggers: objects.triggers.clone(),
            events: objects.events.clone(),
        });
    }
    if cfg.users {
        backup_users(
            ctx,
            src,
            &server,
            &planned.info,
            (&mut up, &mut lists),
            &mut meta,
            &mut entries,
        )
        .await?;
    }
    if cfg.verify == Verify::Checksums {
        meta = add_checksums(&server, meta).await?;
    }
    let dumps = Dumps {
        entries,
        lists: lists.finish().map_err(scratch_err)?,
    };
    commit(ctx, src, up, meta, dumps, summaries, started, started_ms).await
}

/// The dumps' entries (without their chunk lists) and where their lists are.
struct Dumps {
    entries: Vec<(Entry, Span)>,
    lists: ChunkLists,
}

async fn backup_users<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
    server: &Server,
    info: &ServerInfo,
    (up, lists): (&mut Uploader<'_, R>, &mut ListWriter),
    meta: &mut DatabaseMeta,
    entries: &mut Vec<(Entry, Span)>,
) -> Result<(), AgentError> {
    if info.flavor != Flavor::MariaDb {
        return Err(AgentError::DumpFailed {
            source_name: src.name.clone(),
            what: "users and grants".into(),
            reason: format!(
                "backing up users and grants is supported on MariaDB only (server {}); set users = false in the source",
                info.version
            ),
        });
    }
    let args = ["--system=users", "--insert-ignore"]
        .map(String::from)
        .to_vec();
    let (done, span) = dump_one(ctx, src, server, args, up, lists).await?;
    validate(&done, server, &Objects::default()).map_err(|reason| AgentError::DumpFailed {
        source_name: src.name.clone(),
        what: "users and grants".into(),
        reason,
    })?;
    meta.users = done.summary.users.clone();
    meta.users_path = USERS_PATH.into();
    entries.push((dump_entry(USERS_PATH, &done), span));
    Ok(())
}

async fn add_checksums(
    server: &Server,
    mut meta: DatabaseMeta,
) -> Result<DatabaseMeta, AgentError> {
    let s = server.clone();
    tokio::task::spawn_blocking(move || {
        for d in &mut meta.databases {
            let names: Vec<String> = d.tables.iter().map(|t| t.name.clone()).collect();
            let sums = s.checksums(&d.name, &names)?;
            for t in &mut d.tables {
                t.checksum = sums.get(&t.name).copied();
            }
        }
        Ok::<_, AgentError>(meta)
    })
    .await
    .map_err(|e| AgentError::Worker(e.to_string()))?
}

/// Runs one dump on a thread, feeding its chunks to the uploader as they come and their ids and
/// sizes to `lists` (the span it returns).
async fn dump_one<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
    server: &Server,
    args: Vec<String>,
    up: &mut Uploader<'_, R>,
    lists: &mut ListWriter,
) -> Result<(DumpDone, Span), AgentError> {
    let job = DumpJob {
        server: server.clone(),
        args,
        params: src.chunker,
        keys: ctx.keys.clone(),
    };
    let (tx, mut rx) = mpsc::channel(4);
    std::thread::Builder::new()
        .name("lifeboat-dump".into())
        .spawn(move || crate::mysql::dump::run(job, tx))
        .map_err(|e| AgentError::Worker(format!("cannot start the dump thread: {e}")))?;
    let mark = lists.mark();
    // Flights land while the dump runs (upload overlaps dumping).
    while let Some(msg) = up.recv_landing(&mut rx).await? {
        match msg {
            DumpMsg::Chunk { id, data } => {
                lists
                    .push(&id, data.len() as u32)
                    .map_err(|e| crate::scratch::scratch_error(&ctx.scratch_dir, e))?;
                up.add(id, data).await?
            }
            DumpMsg::Done(done) => return Ok(((*done)?, lists.span_since(mark))),
        }
    }
    Err(AgentError::Worker(
        "the dump thread ended without a result".into(),
    ))
}

/// The checks every dump must pass; the error is the operator-facing reason.
fn validate(d: &DumpDone, server: &Server, objects: &Objects) -> Result<(), String> {
    let tool = server.dump_tool.display();
    if let Some(e) = &d.read_error {
        return Err(format!("reading the output of {tool} failed: {e}"));
    }
    if !d.status.success() {
        return Err(format!(
            "{tool} failed ({}): {}",
            describe_status(&d.status),
            d.stderr
        ));
    }
    if d.size == 0 {
        return Err(format!(
            "{tool} succeeded but its output is empty (the server lists {} tables)",
            objects.tables.len()
        ));
    }
    if !d.summary.trailer {
        return Err(format!(
            "the dump ({} bytes) does not end with the '-- Dump completed' trailer: it was cut short",
            d.size
        ));
    }
    let missing: Vec<&String> = objects
        .tables
        .iter()
        .filter(|t| !d.summary.tables.contains(t))
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        return Err(format!(
            "the dump lacks {} of the {} tables the server lists: {}",
            missing.len(),
            objects.tables.len(),
            names.join(", ")
        ));
    }
    Ok(())
}

/// A dump's entry, without its chunk list (in the pass's scratch file).
fn dump_entry(path: &str, d: &DumpDone) -> Entry {
    Entry {
        root: 0,
        path: path.as_bytes().to_vec(),
        kind: EntryKind::File as i32,
        mode: 0o600,
        mtime_sec: now_unix_ms() / 1000,
        size: d.size,
        ..Entry::default()
    }
}

#[allow(clippy::too_many_arguments)]
async fn commit<R: Remote>(
    ctx: &BackupContext<'_, R>,
    src: &SourceConfig,
    mut up: Uploader<'_, R>,
    meta: DatabaseMeta,
    dumps: Dumps,
    summaries: Vec<DatabaseSummary>,
    started: Instant,
    started_ms: i64,
) -> Result<BackupReport, AgentError> {
    let mut header = super::manifest_header(src, started_ms, vec![b"/".to_vec()]);
    header.database = Some(meta);
    let logical = dumps.entries.iter().map(|(e, _)| e.size).sum();
    let files = dumps.entries.len() as u64;
    let scratch = ctx.scratch_dir.clone();
    let (manifest_ids, refs) = upload_manifest(&mut up, &ctx.keys, &header, move |sink| {
        let scratch_err = |err| crate::scratch::scratch_error(&scratch, err);
        let mut refs = RefSorter::new(&scratch);
        for (e, span) in &dumps.entries {
            // Read in pieces twice: for the references, then by the entry's encoder.
            let mut pieces = SpanPieces::new(&dumps.lists, *span);
            while let Some((ids, _)) = pieces.next_piece().map_err(scratch_err)? {
                refs.extend(&ids).map_err(scratch_err)?;
            }
            sink.push_pieces(e, &mut pieces)?;
        }
        refs.finish().map_err(scratch_err)
    })
    .await?;
    let data_chunks = refs.len();
    let (outcome, stats) =
        super::commit_snapshot(ctx, &mut up, manifest_ids, refs, started_ms, |u| {
            SnapshotStats {
                files,
                logical_bytes: logical,
                new_logical_bytes: u.new_logical_bytes,
                chunks: data_chunks,
                new_chunks: u.new_chunks,
                files_read: files,
                ..SnapshotStats::default()
            }
        })
        .await?;
    let snapshot_id = match outcome {
        CommitOutcome::Committed { snapshot_id } => snapshot_id,
        CommitOutcome::Missing(m) => {
            return Err(AgentError::CommitGaveUp {
                source_name: src.name.clone(),
                missing: m.len(),
                attempts: 1,
            });
        }
    };
    info!(source = %src.name, snapshot = %snapshot_id, databases = summaries.len(), uploaded_bytes = up.stats.uploaded_bytes, "database snapshot committed");
    Ok(BackupReport {
        snapshot_id,
        source: src.name.clone(),
        files: stats.files,
        dirs: 0,
        symlinks: 0,
        files_read: stats.files,
        bytes_read: logical,
        logical_bytes: logical,
        chunks: data_chunks,
        new_chunks: up.stats.new_chunks,
        new_logical_bytes: up.stats.new_logical_bytes,
        uploaded_bytes: up.stats.uploaded_bytes,
        unreadable: Vec::new(),
        partial: false,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        databases: summaries,
    })
}
