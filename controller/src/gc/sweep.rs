//! Sweep: catalog first, objects second.
//!
//! 1. [`sweep`] (one transaction): revive every condemned chunk that became live again; delete
//!    the rows of chunks condemned by an *earlier* run and still unreferenced and unpinned;
//!    delete the rows of packs left without any chunk row, and of forgotten snapshots (their
//!    reference rows, record, and the reference segments no remaining snapshot uses); every
//!    object so orphaned gets a `gc_tombstones` row in the same transaction.
//! 2. [`finish`] (per tombstone): claim the key ([`super::guard`]), re-check that the catalog
//!    still does not need it (a pack re-uploaded with the same content name, a segment that a
//!    snapshot committed since the sweep produced again), delete the primary object, then in one
//!    transaction drop the tombstone and queue the secondary's delete (delayed,
//!    [`crate::replication::deletes::enqueue`]).
//!
//! A crash between 1 and 2 (failpoint `gc.after_catalog`) leaves tombstones: the next run
//! finishes them first. A failed delete (failpoint `gc.object_delete` with `error` injects one)
//! leaves its tombstone for the next run too.

use std::collections::HashSet;
use std::time::Duration;

use lifeboat_common::failpoint;
use rusqlite::{Connection, OptionalExtension, Transaction, named_params, params};

use super::guard;
use super::mark::{PINNED, REFERENCED};
use crate::catalog::{Catalog, CatalogError, refsets, to_i64, to_u64};
use crate::refset;
use crate::store::Store;

/// What the catalog part of a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub revived: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub packs: u64,
    pub snapshots: u64,
    /// Objects tombstoned (packs, records, segments) and their bytes where known.
    pub tombstoned: u64,
    pub tombstoned_bytes: u64,
}

pub(super) fn tombstone(
    tx: &Connection,
    key: &str,
    kind: &str,
    size: u64,
    now: i64,
    seen: i64,
) -> Result<(), CatalogError> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO gc_tombstones (key, kind, size, created_at, snapshots_seen)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![key, kind, to_i64(size), now, seen])?;
    // A re-upload of the same content must be copied again: drop the old copy row.
    tx.prepare_cached("DELETE FROM replication_queue WHERE key = ?1 AND op = 'copy'")?
        .execute(params![key])?;
    Ok(())
}

/// The highest snapshot rowid (refs segments of snapshots after it are re-checked in finish).
pub fn snapshots_seen(conn: &Connection) -> Result<i64, CatalogError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(rowid), 0) FROM snapshots", [], |r| {
            r.get(0)
        })?,
    )
}

fn sweep_chunks(
    tx: &Transaction<'_>,
    run_start: i64,
    (now, keep): (i64, i64),
    out: &mut Swept,
) -> Result<(), CatalogError> {
    out.revived = tx.execute(
        &format!(
            "UPDATE chunks AS c SET condemned_at = NULL WHERE c.condemned_at IS NOT NULL
             AND ({REFERENCED} OR {PINNED})"
        ),
        named_params! {":now": now, ":keep": keep},
    )? as u64;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS gc_packs (id BLOB PRIMARY KEY); DELETE FROM temp.gc_packs;",
    )?;
    tx.execute(
        "INSERT OR IGNORE INTO temp.gc_packs SELECT pack_id FROM chunks
         WHERE condemned_at IS NOT NULL AND condemned_at < ?1",
        params![run_start],
    )?;
    let (n, bytes): (i64, i64) = tx.query_row(
        "SELECT COUNT(*), COALESCE(SUM(length), 0) FROM chunks
         WHERE condemned_at IS NOT NULL AND condemned_at < ?1",
        params![run_start],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    tx.execute(
        "DELETE FROM chunks WHERE condemned_at IS NOT NULL AND condemned_at < ?1",
        params![run_start],
    )?;
    out.chunks = to_u64(n);
    out.chunk_bytes = to_u64(bytes);
    let empty: Vec<(Vec<u8>, String, i64)> = tx
        .prepare(
            "SELECT p.id, p.key, p.size FROM packs p JOIN temp.gc_packs g ON g.id = p.id
             WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.pack_id = p.id)",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let seen = snapshots_seen(tx)?;
    for (id, key, size) in empty {
        tx.execute("DELETE FROM packs WHERE id = ?1", params![id])?;
        tombstone(tx, &key, "pack", to_u64(size), now, seen)?;
        out.packs += 1;
        out.tombstoned += 1;
        out.tombstoned_bytes += to_u64(size);
    }
    Ok(())
}

/// The reference-segment keys of one snapshot (its refs in order, as the commit cut them).
fn snapshot_segment_keys(conn: &Connection, snap: &str) -> Result<Vec<String>, CatalogError> {
    Ok(refset::segment_keys(refsets::refs_of(conn, snap)?))
}

/// The ids of the snapshots matching `filter` (SQL on `s`).
fn snapshot_ids_where(conn: &Connection, filter: &str) -> Result<Vec<String>, CatalogError> {
    let mut st = conn.prepare(&format!("SELECT s.id FROM snapshots s WHERE {filter}"))?;
    let rows = st.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Removes one forgotten snapshot in one transaction: its reference rows, record and the
/// segments that no snapshot in `live` uses are tombstoned (tombstones carry `seen`, so a
/// snapshot committed later that produced the same segment is caught by [`still_needed`]).
fn remove_forgotten(
    conn: &mut Connection,
    snap: &str,
    live: &HashSet<String>,
    seen: i64,
    now: i64,
    dry_run: bool,
) -> Result<Swept, CatalogError> {
    let tx = conn.transaction()?;
    let mut out = Swept::default();
    let record_key: Option<String> = tx
        .query_row(
            "SELECT record_key FROM snapshots WHERE id = ?1 AND forgotten_at IS NOT NULL",
            params![snap],
            |r| r.get(0),
        )
        .optional()?;
    let Some(record_key) = record_key else {
        return Ok(out);
    };
    let keys = snapshot_segment_keys(&tx, snap)?;
    out.snapshots = 1;
    out.tombstoned = 1 + keys.iter().filter(|k| !live.contains(*k)).count() as u64;
    if dry_run {
        return Ok(out);
    }
    refsets::remove_snapshot(&tx, snap)?;
    tx.execute(
        "DELETE FROM replication_deps WHERE record_key = ?1",
        params![record_key],
    )?;
    tx.execute("DELETE FROM snapshots WHERE id = ?1", params![snap])?;
    tombstone(&tx, &record_key, "record", 0, now, seen)?;
    for key in keys.iter().filter(|k| !live.contains(*k)) {
        tombstone(&tx, key, "refs", 0, now, seen)?;
    }
    tx.commit()?;
    Ok(out)
}

/// Step 1b: removes the snapshots forgotten before `keep` ([`super::mark::keep_since`]; those
/// forgotten since stay, with their references, until the sessions that may rely on them end),
/// one transaction each, after computing the segment keys of the remaining snapshots one
/// snapshot per catalog call (snapshots are immutable, so uploads and commits interleave
/// freely). A snapshot forgotten meanwhile still counts as live here (conservative: its
/// segments wait for the next run). Returns what was removed and how many forgotten snapshots
/// wait.
pub async fn forgotten(
    catalog: &Catalog,
    (now, keep): (i64, i64),
    dry_run: bool,
) -> Result<(Swept, u64), CatalogError> {
    let gone_sql = format!("s.forgotten_at IS NOT NULL AND s.forgotten_at < {keep}");
    let live_sql = format!("s.forgotten_at IS NULL OR s.forgotten_at >= {keep}");
    let (seen, gone, live_ids, waiting) = catalog
        .run(move |c| {
            let waiting: i64 = c.query_row(
                "SELECT COUNT(*) FROM snapshots WHERE forgotten_at >= ?1",
                params![keep],
                |r| r.get(0),
            )?;
            Ok((
                snapshots_seen(c)?,
                snapshot_ids_where(c, &gone_sql)?,
                snapshot_ids_where(c, &live_sql)?,
                to_u64(waiting),
            ))
        })
        .await?;
    let mut out = Swept::default();
    if gone.is_empty() {
        return Ok((out, waiting));
    }
    let mut live = HashSet::new();
    for snap in live_ids {
        live.extend(
            catalog
                .run(move |c| snapshot_segment_keys(c, &snap))
                .await?,
        );
    }
    let live = std::sync::Arc::new(live);
    for snap in gone {
        let live = live.clone();
        let one = catalog
            .run(move |c| remove_forgotten(c, &snap, &live, seen, now, dry_run))
            .await?;
        out.snapshots += one.snapshots;
        out.tombstoned += one.tombstoned;
    }
    Ok((out, waiting))
}

/// Step 1a: the chunk and pack part of the sweep, in one transaction (rolled back with
/// `dry_run`).
pub fn sweep(
    conn: &mut Connection,
    run_start: i64,
    (now, keep): (i64, i64),
    dry_run: bool,
) -> Result<Swept, CatalogError> {
    let tx = conn.transaction()?;
    let mut out = Swept::default();
    sweep_chunks(&tx, run_start, (now, keep), &mut out)?;
    if dry_run {
        tx.rollback()?;
    } else {
        tx.commit()?;
    }
    Ok(out)
}

/// One pending object delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub key: String,
    pub kind: String,
    pub size: u64,
    pub snapshots_seen: i64,
}

/// Every tombstone, by key.
pub fn tombstones(conn: &Connection) -> Result<Vec<Tombstone>, CatalogError> {
    let mut st =
        conn.prepare("SELECT key, kind, size, snapshots_seen FROM gc_tombstones ORDER BY key")?;
    let rows = st.query_map([], |r| {
        Ok(Tombstone {
            key: r.get(0)?,
            kind: r.get(1)?,
            size: to_u64(r.get(2)?),
            snapshots_seen: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Segment keys of committed snapshots, by snapshot id: a snapshot's reference set never
/// changes, so one finish pass computes each at most once.
pub type SegmentCache = std::collections::HashMap<String, Vec<String>>;

/// Whether the catalog needs `t.key` again (re-check under the delete guard).
pub fn still_needed(
    conn: &Connection,
    t: &Tombstone,
    cache: &mut SegmentCache,
) -> Result<bool, CatalogError> {
    let one = |sql: &str, a: &dyn rusqlite::ToSql, b: &dyn rusqlite::ToSql| {
        conn.prepare_cached(sql)?
            .query_row(params![a, b], |r| r.get::<_, i64>(0))
            .optional()
            .map(|v| v.is_some())
    };
    let last = t.key.rsplit('/').next().unwrap_or_default().to_owned();
    match t.kind.as_str() {
        "pack" => match hex::decode(&last) {
            Ok(name) => Ok(one(
                "SELECT 1 FROM packs WHERE id = ?1 AND key = ?2",
                &name,
                &t.key,
            )?),
            // Not a content name (never produced by this code): look the key up by scanning.
            Err(_) => Ok(conn
                .query_row("SELECT 1 FROM packs WHERE key = ?1", params![t.key], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()?
                .is_some()),
        },
        "record" => Ok(one(
            "SELECT 1 FROM snapshots WHERE id = ?1 AND record_key = ?2",
            &last,
            &t.key,
        )?),
        _ => {
            for snap in snapshot_ids_where(conn, &format!("s.rowid > {}", t.snapshots_seen))? {
                if !cache.contains_key(&snap) {
                    let keys = snapshot_segment_keys(conn, &snap)?;
                    cache.insert(snap.clone(), keys);
                }
                if cache.get(&snap).is_some_and(|k| k.contains(&t.key)) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

/// What [`finish`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finished {
    pub deleted: u64,
    pub bytes: u64,
    /// Re-used by the catalog since: not deleted, tombstone dropped.
    pub kept: u64,
    /// Held by a writer this run, or the delete failed: tombstone kept for the next run.
    pub deferred: u64,
    pub failed: u64,
}

/// Step 2: deletes every tombstoned object that nothing needs again.
pub async fn finish(
    catalog: &Catalog,
    store: &Store,
    secondary_delay: Option<Duration>,
) -> Result<Finished, CatalogError> {
    let mut out = Finished::default();
    let all = catalog.run(|c| tombstones(c)).await?;
    if all.is_empty() {
        return Ok(out);
    }
    failpoint::hit("gc.after_catalog");
    let mut cache = SegmentCache::new();
    for t in all {
        let Some(_claim) = guard::try_deleting(&t.key) else {
            out.deferred += 1;
            continue;
        };
        let t2 = t.clone();
        let mut c2 = std::mem::take(&mut cache);
        let (needed, back) = catalog
            .run(move |c| {
                let needed = still_needed(c, &t2, &mut c2)?;
                Ok((needed, c2))
            })
            .await?;
        cache = back;
        if needed {
            let k = t.key.clone();
            catalog
                .run(move |c| Ok(c.execute("DELETE FROM gc_tombstones WHERE key = ?1", [k])?))
                .await?;
            out.kept += 1;
            continue;
        }
        let size = match t.size {
            0 => store.head(&t.key).await.unwrap_or(0),
            n => n,
        };
        let deleted = match failpoint::check("gc.object_delete") {
            Err(e) => Err(e.to_string()),
            Ok(()) => store.delete(&t.key).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = deleted {
            tracing::warn!(key = %t.key, error = %e, "GC could not delete an object; next run retries");
            out.failed += 1;
            continue;
        }
        failpoint::hit("gc.after_object_delete");
        let (k, now) = (t.key.clone(), lifeboat_common::clock::now_unix_ms());
        catalog
            .run(move |c| {
                let tx = c.transaction()?;
                tx.execute("DELETE FROM gc_tombstones WHERE key = ?1", [&k])?;
                if let Some(delay) = secondary_delay {
                    crate::replication::deletes::enqueue(&tx, &k, now, delay)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        out.deleted += 1;
        out.bytes += size;
    }
    Ok(out)
}
