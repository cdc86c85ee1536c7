//! Restore of a `mysql` snapshot: each selected database's dump is streamed from the controller,
//! verified chunk by chunk, and piped into the `mariadb`/`mysql` client; then the loaded
//! database is compared with the manifest (base tables, row counts, checksums where recorded,
//! views, routines, triggers, events). A mismatch is a failed restore listing the differences.
//!
//! Where it loads:
//! - a database that does not exist (or `--as NEW`): created with the snapshot's charset and
//!   collation, loaded, verified. If verification fails it is left as loaded, for inspection.
//! - an existing database: refused unless `--drop-existing`. Then the dump is first loaded into
//!   a temporary database `<name>_lbtmp_<hex>` and verified there; a failure drops the temporary
//!   database and leaves the existing one untouched. Only after that proof is the existing
//!   database dropped and the dump loaded into the final name (views, routines, triggers and
//!   events are recreated by this load, which a cross-database `RENAME TABLE` cannot do for
//!   triggers) and verified again; the temporary copy is dropped last, and kept if this second
//!   verification fails, so a verified copy always exists.
//!
//! Users (`--users`): the users-and-grants dump is loaded first (`CREATE USER IF NOT EXISTS`,
//! then grants), so definers exist; accounts on the server that the backup does not know are
//! reported, never removed.

use std::collections::BTreeSet;
use std::time::Instant;

use lifeboat_common::keys::DataKeys;
use lifeboat_common::manifest::{ChunkList, DatabaseDump, DatabaseMeta, EncodedManifest, Entry};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::database::validate_database_name;
use crate::error::AgentError;
use crate::mysql::load::load;
use crate::mysql::{MysqlError, Server, ident};
use crate::remote::Remote;

/// What to restore.
#[derive(Clone, Debug, Default)]
pub struct DbRestoreOptions {
    pub database: Option<String>,
    pub as_name: Option<String>,
    pub drop_existing: bool,
    pub users: bool,
    /// Restore users and grants only (implies `users`).
    pub users_only: bool,
}

/// One restored database.
#[derive(Clone, Debug, Serialize)]
pub struct DbRestored {
    pub name: String,
    pub into: String,
    pub tables: usize,
    pub rows: u64,
    pub replaced: bool,
    pub bytes_loaded: u64,
}

/// The outcome, as printed by `restore --json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DbRestoreReport {
    pub snapshot_id: String,
    pub databases: Vec<DbRestored>,
    pub users_restored: bool,
    pub users_not_in_backup: Vec<String>,
    pub duration_ms: u64,
}

async fn blocking<T: Send + 'static>(
    server: &Server,
    f: impl FnOnce(&Server) -> Result<T, MysqlError> + Send + 'static,
) -> Result<T, AgentError> {
    let s = server.clone();
    Ok(tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| AgentError::Worker(e.to_string()))??)
}

/// The dump at `path` and its chunk list (left in the restore's scratch file if it is long).
fn entry(m: &EncodedManifest, path: &str) -> Result<(Entry, ChunkList), AgentError> {
    for listed in m.entries_with_lists() {
        let (e, list) = listed.map_err(super::unreadable_entry)?;
        if e.path == path.as_bytes() {
            return Ok((e, list));
        }
    }
    Err(AgentError::Invalid(format!(
        "the snapshot's manifest has no entry {path}"
    )))
}

/// Restores the databases (and users) of an already verified manifest.
pub async fn restore_databases<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    server: &Server,
    m: &EncodedManifest,
    opts: &DbRestoreOptions,
) -> Result<DbRestoreReport, AgentError> {
    let started = Instant::now();
    let meta = m.header.database.as_ref().ok_or_else(|| {
        AgentError::Invalid(
            "this snapshot holds no database metadata; is it a mysql source?".into(),
        )
    })?;
    let selected = select(meta, opts)?;
    let mut report = DbRestoreReport::default();
    if opts.users {
        restore_users(remote, keys, server, m, meta, &mut report).await?;
    }
    for d in selected {
        let target = opts.as_name.clone().unwrap_or_else(|| d.name.clone());
        let restored = restore_one(remote, keys, server, m, d, &target, opts.drop_existing).await?;
        info!(database = %d.name, into = %target, tables = restored.tables, rows = restored.rows, "database restored and verified");
        report.databases.push(restored);
    }
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

fn select<'m>(
    meta: &'m DatabaseMeta,
    opts: &DbRestoreOptions,
) -> Result<Vec<&'m DatabaseDump>, AgentError> {
    let names = || {
        meta.databases
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let selected: Vec<&DatabaseDump> = match &opts.database {
        Some(want) => vec![
            meta.databases
                .iter()
                .find(|d| &d.name == want)
                .ok_or_else(|| {
                    AgentError::Invalid(format!(
                        "the snapshot holds no database {want}; it holds: {}",
                        names()
                    ))
                })?,
        ],
        None if opts.users_only => Vec::new(),
        None => meta.databases.iter().collect(),
    };
    if let Some(new) = &opts.as_name {
        validate_database_name(new).map_err(|e| AgentError::Invalid(format!("--as: {e}")))?;
        if selected.len() != 1 {
            return Err(AgentError::Invalid(format!(
                "--as needs exactly one database; add --database NAME (the snapshot holds: {})",
                names()
            )));
        }
    }
    Ok(selected)
}

async fn restore_users<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    server: &Server,
    m: &EncodedManifest,
    meta: &DatabaseMeta,
    report: &mut DbRestoreReport,
) -> Result<(), AgentError> {
    if meta.users_path.is_empty() {
        return Err(AgentError::Invalid(
            "--users: this snapshot has no users-and-grants dump (the source had users = false)"
                .into(),
        ));
    }
    let (e, list) = entry(m, &meta.users_path)?;
    load(remote, keys, server, (&e, &list), None).await?;
    let now = blocking(server, |s| s.users()).await?;
    let known: BTreeSet<&String> = meta.users.iter().collect();
    report.users_not_in_backup = now.into_iter().filter(|u| !known.contains(u)).collect();
    if !report.users_not_in_backup.is_empty() {
        warn!(users = ?report.users_not_in_backup, "accounts on the server that the backup does not know were left as they are");
    }
    report.users_restored = true;
    Ok(())
}

async fn create(server: &Server, db: &str, d: &DatabaseDump) -> Result<(), AgentError> {
    let mut sql = format!("CREATE DATABASE {}", ident(db));
    if !d.default_charset.is_empty() {
        sql += &format!(" CHARACTER SET {}", d.default_charset);
    }
    if !d.default_collation.is_empty() {
        sql += &format!(" COLLATE {}", d.default_collation);
    }
    blocking(server, move |s| {
        s.query("CREATE DATABASE", &sql).map(|_| ())
    })
    .await
}

async fn drop_db(server: &Server, db: &str) -> Result<(), AgentError> {
    let sql = format!("DROP DATABASE {}", ident(db));
    blocking(server, move |s| s.query("DROP DATABASE", &sql).map(|_| ())).await
}

#[allow(clippy::too_many_arguments)]
async fn load_and_verify<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    server: &Server,
    e: (&Entry, &ChunkList),
    d: &DatabaseDump,
    db: &str,
) -> Result<Result<(u64, u64), String>, AgentError> {
    let bytes = load(remote, keys, server, e, Some(db)).await?;
    let (db2, d2) = (db.to_owned(), d.clone());
    let diffs = blocking(server, move |s| compare(s, &db2, &d2)).await?;
    Ok(diffs.map(|rows| (bytes, rows)))
}

async fn restore_one<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    server: &Server,
    m: &EncodedManifest,
    d: &DatabaseDump,
    target: &str,
    drop_existing: bool,
) -> Result<DbRestored, AgentError> {
    let (e, list) = entry(m, &d.path)?;
    let e = (&e, &list);
    let t2 = target.to_owned();
    let exists = blocking(server, move |s| s.schema(&t2)).await?.is_some();
    let failed = |differences: String, outcome: String| AgentError::RestoreVerify {
        database: target.to_owned(),
        differences,
        outcome,
    };
    let done = |bytes_loaded, rows, replaced| DbRestored {
        name: d.name.clone(),
        into: target.to_owned(),
        tables: d.tables.len(),
        rows,
        replaced,
        bytes_loaded,
    };
    if !exists {
        create(server, target, d).await?;
        return match load_and_verify(remote, keys, server, e, d, target).await? {
            Ok((bytes, rows)) => Ok(done(bytes, rows, false)),
            Err(diff) => Err(failed(
                diff,
                format!(
                    "database {target} was created by this restore and is left as loaded for inspection"
                ),
            )),
        };
    }
    if !drop_existing {
        return Err(AgentError::Invalid(format!(
            "database {target} already exists: pass --drop-existing to replace it (it is kept until the restored copy is verified), or --as NEW_NAME to restore beside it"
        )));
    }
    let tmp = temp_name(target);
    create(server, &tmp, d).await?;
    match load_and_verify(remote, keys, server, e, d, &tmp).await {
        Ok(Ok(_)) => {}
        Ok(Err(diff)) => {
            drop_db(server, &tmp).await?;
            return Err(failed(
                diff,
                format!("the existing database {target} was not touched"),
            ));
        }
        Err(err) => {
            let _ = drop_db(server, &tmp).await;
            return Err(err);
        }
    }
    info!(database = %target, temporary = %tmp, "restored copy verified; replacing the existing database");
    drop_db(server, target).await?;
    create(server, target, d).await?;
    match load_and_verify(remote, keys, server, e, d, target).await? {
        Ok((bytes, rows)) => {
            drop_db(server, &tmp).await?;
            Ok(done(bytes, rows, true))
        }
        Err(diff) => Err(failed(
            diff,
            format!("a verified copy of the snapshot is kept in database {tmp}"),
        )),
    }
}

/// `<target>_lbtmp_<8 hex>`, within the 64-character limit.
fn temp_name(target: &str) -> String {
    let mut r = [0u8; 4];
    lifeboat_common::keys::fill_random(&mut r);
    let keep: String = target.chars().take(64 - 15).collect();
    format!("{keep}_lbtmp_{}", hex::encode(r))
}

/// Compares database `db` with the snapshot's description: `Ok(total rows)` or the differences.
fn compare(s: &Server, db: &str, d: &DatabaseDump) -> Result<Result<u64, String>, MysqlError> {
    let objects = s.objects(db)?;
    let counts = s.row_counts(db, &objects.tables)?;
    let want_sums: Vec<String> = d
        .tables
        .iter()
        .filter(|t| t.checksum.is_some())
        .map(|t| t.name.clone())
        .collect();
    let sums = if want_sums.is_empty() {
        Default::default()
    } else {
        s.checksums(db, &want_sums)?
    };
    let mut diffs = Vec::new();
    let mut rows = 0;
    for t in &d.tables {
        match counts.get(&t.name) {
            None => diffs.push(format!("table {} is missing", t.name)),
            Some(&n) if n != t.rows => diffs.push(format!(
                "table {} has {n} rows, the snapshot {}",
                t.name, t.rows
            )),
            Some(&n) => rows += n,
        }
        if let Some(want) = t.checksum
            && sums.get(&t.name) != Some(&want)
        {
            diffs.push(format!("table {} checksum differs", t.name));
        }
    }
    let known: BTreeSet<&String> = d.tables.iter().map(|t| &t.name).collect();
    for t in objects.tables.iter().filter(|t| !known.contains(t)) {
        diffs.push(format!("table {t} is not in the snapshot"));
    }
    for (kind, want, have) in [
        ("view", &d.views, &objects.views),
        ("routine", &d.routines, &objects.routines),
        ("trigger", &d.triggers, &objects.triggers),
        ("event", &d.events, &objects.events),
    ] {
        for w in want.iter().filter(|w| !have.contains(w)) {
            diffs.push(format!("{kind} {w} is missing"));
        }
    }
    Ok(if diffs.is_empty() {
        Ok(rows)
    } else {
        Err(diffs.join("; "))
    })
}
