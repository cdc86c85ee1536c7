//! The replication queue in the catalog (schema v3): one row per object and operation.
//!
//! - `op = 'copy'`: copy primary → secondary (every pack, reference segment and snapshot record,
//!   queued in the same transaction that records the object, so a committed object always has a
//!   row and a crash can never lose one);
//! - `op = 'repair'`: copy secondary → primary, queued when a read found the primary's copy
//!   missing or damaged;
//! - `op = 'delete'`: a delete of a key in the secondary, run only after `not_before` (the
//!   configured delay) and only when the secondary's credentials may delete
//!   ([`super::deletes`]); never picked by [`ready`].
//!
//! A scrub ([`super::scrub`]) that finds a secondary copy missing or damaged re-arms its done
//! copy row ([`requeue_copy`]); the worker then overwrites the damaged copy with the primary's
//! bytes, verified against the row.
//!
//! Rows are kept when done (`done_at` set): a snapshot is *replicated* when its record's copy row
//! is done, and a record becomes ready only when every object in `replication_deps` for it has a
//! done copy row — so a record never reaches the secondary before what it references.
//! Failed attempts set `last_error` and push `next_attempt_at` out (exponential backoff, decided
//! by the worker); the queue survives restarts because it is just rows.

use rusqlite::{Connection, OptionalExtension, params};

use lifeboat_common::ids::ChunkId;

use crate::catalog::refsets::push_ids;
use crate::catalog::snapshots::{self, SnapshotRow};
use crate::catalog::{CatalogError, to_i64, to_u64};

/// What kind of object a row copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pack,
    Refs,
    Record,
    /// An append-only registry object ([`crate::registry`]); waits for nothing.
    Registry,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pack => "pack",
            Kind::Refs => "refs",
            Kind::Record => "record",
            Kind::Registry => "registry",
        }
    }
}

/// The direction of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// primary → secondary
    Copy,
    /// secondary → primary (a damaged or missing primary object)
    Repair,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Copy => "copy",
            Op::Repair => "repair",
        }
    }
}

/// An object to queue.
#[derive(Debug, Clone)]
pub struct NewObject {
    pub key: String,
    pub kind: Kind,
    pub size: u64,
    /// BLAKE3 of the object's bytes.
    pub blake3: [u8; 32],
}

/// Queues a copy of `obj` to the secondary (no-op if already queued).
pub fn enqueue(conn: &Connection, obj: &NewObject, now: i64) -> Result<(), CatalogError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO replication_queue (key, op, kind, size, blake3, enqueued_at)
         VALUES (?1, 'copy', ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        obj.key,
        obj.kind.as_str(),
        to_i64(obj.size),
        &obj.blake3[..],
        now
    ])?;
    Ok(())
}

/// Queues (or re-arms) a repair copy of `key` from the secondary to the primary.
pub fn enqueue_repair(conn: &Connection, key: &str, now: i64) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT INTO replication_queue (key, op, kind, enqueued_at) VALUES (?1, 'repair', ?2, ?3)
         ON CONFLICT (key, op) DO UPDATE SET done_at = NULL, attempts = 0, next_attempt_at = 0,
             enqueued_at = excluded.enqueued_at",
        params![key, kind_of_key(key).as_str(), now],
    )?;
    Ok(())
}

/// The kind of object a key names (by its prefix).
pub fn kind_of_key(key: &str) -> Kind {
    if key.starts_with("packs/") {
        Kind::Pack
    } else if key.starts_with("refs/") {
        Kind::Refs
    } else if key.starts_with("registry/") {
        Kind::Registry
    } else {
        Kind::Record
    }
}

/// Re-arms the done copy row of `key` (a scrub found the secondary's copy missing or damaged):
/// it becomes pending again, so the lag shows it until the worker has copied it. Returns whether
/// a row was re-armed.
pub fn requeue_copy(
    conn: &Connection,
    key: &str,
    reason: &str,
    now: i64,
) -> Result<bool, CatalogError> {
    let n = conn.execute(
        "UPDATE replication_queue SET done_at = NULL, attempts = 0, next_attempt_at = 0,
             enqueued_at = ?2, last_error = ?3, last_error_at = ?2
         WHERE key = ?1 AND op = 'copy'",
        params![key, now, reason],
    )?;
    Ok(n > 0)
}

/// Records that the record at `record_key` may be copied only after `deps` and after every
/// pack holding a chunk of snapshot `snapshot_id` for `group` (same transaction as the insert).
/// One lookup per reference; a commit uses [`add_commit_deps`].
pub fn add_record_deps(
    conn: &Connection,
    record_key: &str,
    deps: &[String],
    snapshot_id: &str,
    group: &str,
) -> Result<(), CatalogError> {
    add_deps(conn, record_key, deps)?;
    conn.execute(
        &format!("INSERT OR IGNORE INTO replication_deps (record_key, dep_key) {PACKS_OF_SETS}"),
        params![record_key, group, snapshot_id],
    )?;
    Ok(())
}

/// The keys of the packs holding `?2`'s chunks of snapshot `?3`'s sets, `?1` beside each.
const PACKS_OF_SETS: &str = "SELECT ?1, p.key FROM (SELECT DISTINCT c.pack_id FROM snapshot_sets ss
         CROSS JOIN ref_set_chunks rc CROSS JOIN chunks c
         WHERE ss.snapshot_id = ?3
           AND rc.set_id = ss.set_id AND c.dedup_group = ?2 AND c.id = rc.chunk_id) d
     JOIN packs p ON p.id = d.pack_id";

fn add_deps(conn: &Connection, record_key: &str, deps: &[String]) -> Result<(), CatalogError> {
    let mut st = conn.prepare_cached(
        "INSERT OR IGNORE INTO replication_deps (record_key, dep_key) VALUES (?1, ?2)",
    )?;
    for d in deps {
        st.execute(params![record_key, d])?;
    }
    Ok(())
}

/// [`add_record_deps`] for snapshot `row`, being committed: from its parent's dependencies
/// rather than a lookup per reference (a backup with nothing changed spent ~70 ms of its
/// commit on 129,000 lookups at 2.5 GiB). The parent is the latest other live snapshot of the
/// same agent and source whose record is queued. The record waits for
/// 1. the parent's pack dependencies: the packs of the parent's chunks when it was committed,
///    kept current since (a repack adds the new pack to whoever waited for the old one, a
///    deleted pack held no live chunk);
/// 2. the packs of the chunks the parent does not reference (one lookup per such chunk: a
///    rewritten dump changes every set, but a tenth of its chunks; a chunk the parent
///    references is covered by 1, or by 3 if it moved, whichever set holds it now);
/// 3. every pack of `group` queued after the parent's record: a chunk of a set both list that
///    lives in another pack now moved there after the parent's commit (a repack, or an upload
///    again after its pack was lost), and packs are queued in the transaction that records
///    them (`replication_queue.seq` only grows).
///
/// Together that is every pack holding a chunk of `row`, and a few more (the parent's chunks
/// that `row` dropped, the group's other new packs): waiting for more never loses an order,
/// waiting for less could. Without such a parent (a source's first snapshot), or when more rows
/// were queued since the parent's record than `row` has references, it is [`add_record_deps`].
pub fn add_commit_deps(
    conn: &Connection,
    row: &SnapshotRow,
    deps: &[String],
    group: &str,
) -> Result<(), CatalogError> {
    let parent: Option<(String, String, i64)> = conn
        .prepare_cached(
            "SELECT s.id, s.record_key, q.seq FROM snapshots s
             JOIN replication_queue q ON q.key = s.record_key AND q.op = 'copy'
             WHERE s.agent = ?1 AND s.source = ?2 AND s.id != ?3 AND s.forgotten_at IS NULL
             ORDER BY s.committed_at DESC, s.id DESC LIMIT 1",
        )?
        .query_row(params![row.agent, row.source, row.id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let newest: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM replication_queue")?
        .query_row([], |r| r.get(0))?;
    // Part 3 reads every row queued since the parent's record (the whole fleet's): after a
    // long pause that can be more than the snapshot's references, then looked up one by one.
    let Some((parent, parent_key, parent_seq)) =
        parent.filter(|(_, _, seq)| newest - seq <= to_i64(row.reference_count))
    else {
        return add_record_deps(conn, &row.record_key, deps, &row.id, group);
    };
    add_deps(conn, &row.record_key, deps)?;
    let key = &row.record_key;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO replication_deps (record_key, dep_key)
         SELECT ?1, dep_key FROM replication_deps
         WHERE record_key = ?2 AND dep_key >= 'packs/' AND dep_key < 'packs0'",
    )?
    .execute(params![key, parent_key])?;
    add_unshared_deps(conn, key, group, (&row.id, &parent))?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO replication_deps (record_key, dep_key)
         SELECT ?1, q.key FROM replication_queue q
         WHERE q.seq > ?2 AND q.op = 'copy' AND q.kind = 'pack'
           AND EXISTS (SELECT 1 FROM chunks c WHERE c.pack_id = q.blake3 AND c.dedup_group = ?3)",
    )?
    .execute(params![key, parent_seq, group])?;
    Ok(())
}

/// Inserts a committed snapshot, queues its objects for the secondary and records that its
/// record waits for them, inside the caller's transaction (the commit re-validates its
/// references and ends the session's pins in the same one).
pub fn insert_snapshot_in(
    tx: &Connection,
    row: &SnapshotRow,
    refs: &[ChunkId],
    group: &str,
    objects: &[NewObject],
    now: i64,
) -> Result<(), CatalogError> {
    snapshots::insert_in(tx, row, refs)?;
    let mut deps = Vec::new();
    for o in objects {
        enqueue(tx, o, now)?;
        if o.key != row.record_key {
            deps.push(o.key.clone());
        }
    }
    add_commit_deps(tx, row, &deps, group)
}

/// Part 2 of [`add_commit_deps`]: `key` waits for the packs of snapshot `snap`'s chunks that
/// `parent` does not reference. Only a set `parent` does not list can hold one, and the
/// parent's chunks in the same ids' range are in its sets `snap` does not list (a snapshot's
/// sets partition its references), so both sides are read from those sets only and the
/// chunks found on one side alone looked up. At 2.5 GiB after the bench's 1% change every set
/// is new, and looking up each of their ~128,000 chunks took ~200 ms of the commit; ~15,000
/// are not the parent's. A backup with no change reads nothing.
fn add_unshared_deps(
    conn: &Connection,
    key: &str,
    group: &str,
    (snap, parent): (&str, &str),
) -> Result<(), CatalogError> {
    let ours = unshared_refs(conn, snap, parent)?;
    if ours.is_empty() {
        return Ok(());
    }
    let mut theirs = unshared_refs(conn, parent, snap)?;
    theirs.sort_unstable();
    let mut pack_of =
        conn.prepare_cached("SELECT pack_id FROM chunks WHERE dedup_group = ?1 AND id = ?2")?;
    let mut packs = std::collections::BTreeSet::new();
    for id in ours {
        if theirs.binary_search(&id).is_err()
            && let Some(pack) = pack_of
                .query_row(params![group, &id.0[..]], |r| r.get::<_, Vec<u8>>(0))
                .optional()?
        {
            packs.insert(pack);
        }
    }
    let mut wait = conn.prepare_cached(
        "INSERT OR IGNORE INTO replication_deps (record_key, dep_key)
         SELECT ?1, key FROM packs WHERE id = ?2",
    )?;
    for pack in packs {
        wait.execute(params![key, pack])?;
    }
    Ok(())
}

/// The chunk ids in the sets `snap` lists and `other` does not.
fn unshared_refs(conn: &Connection, snap: &str, other: &str) -> Result<Vec<ChunkId>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT rc.chunk_id FROM snapshot_sets ss CROSS JOIN ref_set_chunks rc
         WHERE ss.snapshot_id = ?1
           AND NOT EXISTS (SELECT 1 FROM snapshot_sets o
                           WHERE o.snapshot_id = ?2 AND o.set_id = ss.set_id)
           AND rc.set_id = ss.set_id",
    )?;
    let mut out = Vec::new();
    push_ids(
        &mut st,
        params![snap, other],
        &format!("snapshot {snap}"),
        &mut out,
    )?;
    Ok(out)
}

/// One row the worker may run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub seq: i64,
    pub key: String,
    pub op: Op,
    pub size: Option<u64>,
    pub blake3: Option<[u8; 32]>,
    pub attempts: u32,
}

/// Up to `limit` rows ready at `now`, oldest first. A record copy is ready only when every
/// dependency has a done copy row.
pub fn ready(conn: &Connection, now: i64, limit: usize) -> Result<Vec<Job>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT q.seq, q.key, q.op, q.size, q.blake3, q.attempts FROM replication_queue q
         WHERE q.done_at IS NULL AND q.op IN ('copy', 'repair')
           AND q.next_attempt_at <= ?1 AND q.not_before <= ?1
           AND (q.kind != 'record' OR q.op != 'copy' OR NOT EXISTS (
               SELECT 1 FROM replication_deps d WHERE d.record_key = q.key AND NOT EXISTS (
                   SELECT 1 FROM replication_queue x
                   WHERE x.key = d.dep_key AND x.op = 'copy' AND x.done_at IS NOT NULL)))
         ORDER BY q.seq LIMIT ?2",
    )?;
    let rows = st.query_map(params![now, to_i64(limit as u64)], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<Vec<u8>>>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, key, op, size, hash, attempts) = row?;
        let blake3 = match hash {
            None => None,
            Some(h) => Some(<[u8; 32]>::try_from(h.as_slice()).map_err(|_| {
                CatalogError::Corrupt(format!("replication row {seq}: hash is not 32 bytes"))
            })?),
        };
        out.push(Job {
            seq,
            key,
            op: if op == "repair" { Op::Repair } else { Op::Copy },
            size: size.map(to_u64),
            blake3,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        });
    }
    Ok(out)
}

/// Marks a row done.
pub fn mark_done(conn: &Connection, seq: i64, now: i64) -> Result<(), CatalogError> {
    conn.execute(
        "UPDATE replication_queue SET done_at = ?2, last_error = NULL WHERE seq = ?1",
        params![seq, now],
    )?;
    Ok(())
}

/// Records a failed attempt and when to retry.
pub fn mark_failed(
    conn: &Connection,
    seq: i64,
    error: &str,
    now: i64,
    next_attempt_at: i64,
) -> Result<(), CatalogError> {
    conn.execute(
        "UPDATE replication_queue SET attempts = attempts + 1, last_error = ?2,
             last_error_at = ?3, next_attempt_at = ?4 WHERE seq = ?1",
        params![seq, error, now, next_attempt_at],
    )?;
    Ok(())
}

/// The queue's figures for `replication status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub pending_objects: u64,
    pub pending_bytes: u64,
    /// `enqueued_at` (unix ms) of the oldest pending row.
    pub oldest_pending_at: Option<i64>,
    pub replicated_objects: u64,
    /// The most recent error of a pending row: (key, message, unix ms).
    pub last_error: Option<(String, String, i64)>,
}

/// Pending and done counts, the oldest pending row and the last error.
pub fn summary(conn: &Connection) -> Result<Summary, CatalogError> {
    let (n, bytes, oldest): (i64, i64, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(COALESCE(size, 0)), 0), MIN(enqueued_at)
         FROM replication_queue WHERE done_at IS NULL AND op IN ('copy', 'repair')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let done: i64 = conn.query_row(
        "SELECT COUNT(*) FROM replication_queue WHERE done_at IS NOT NULL AND op = 'copy'",
        [],
        |r| r.get(0),
    )?;
    let last_error = conn
        .query_row(
            "SELECT key, last_error, last_error_at FROM replication_queue
             WHERE done_at IS NULL AND last_error IS NOT NULL
             ORDER BY last_error_at DESC LIMIT 1",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                ))
            },
        )
        .optional()?;
    Ok(Summary {
        pending_objects: to_u64(n),
        pending_bytes: to_u64(bytes),
        oldest_pending_at: oldest,
        replicated_objects: to_u64(done),
        last_error,
    })
}

/// Whether the record at `record_key` has been copied to the secondary.
pub fn record_replicated(conn: &Connection, record_key: &str) -> Result<bool, CatalogError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM replication_queue WHERE key = ?1 AND op = 'copy' AND done_at IS NOT NULL",
        )?
        .query_row(params![record_key], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Per agent and source, the newest snapshot whose record is in the secondary:
/// (agent, source, snapshot id, committed_at).
pub fn newest_replicated(
    conn: &Connection,
) -> Result<Vec<(String, String, String, i64)>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT s.agent, s.source, s.id, MAX(s.committed_at) FROM snapshots s
         JOIN replication_queue q ON q.key = s.record_key AND q.op = 'copy' AND q.done_at IS NOT NULL
         WHERE s.forgotten_at IS NULL
         GROUP BY s.agent, s.source ORDER BY s.agent, s.source",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests;
