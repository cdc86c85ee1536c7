//! Delayed deletes in the secondary store.
//!
//! A delete (from retention and GC, once they exist) reaches the secondary only after a delay
//! (`[secondary] delete_delay`, default 7 days), so an admin mistake or a compromised controller
//! cannot destroy the second copy at once. It is a `replication_queue` row with `op = 'delete'`
//! and `not_before = enqueued_at + delay`; [`enqueue`] is the producers' API.
//!
//! With `[secondary] deletes = false` (credentials that cannot delete: the strongest protection
//! against a compromised controller) the worker never deletes: the rows are only listed
//! (`lifeboatctl replication deletes`, `manual = true`) for an operator's job or a bucket
//! lifecycle rule.
//!
//! Execution ([`run_due`]) is idempotent (a missing object is fine). A key that exists in the
//! primary again when its delete falls due (the same content re-uploaded: keys are content
//! hashes) is not deleted: the row is closed as cancelled. A scrub never samples a key with a
//! delete row, so it cannot re-copy what was deleted on purpose.
//!
//! A due delete also waits for every copy queued before it ([`due`]): the secondary never loses
//! an object's replacement before it has it (a repacked chunk is in the old pack or the new).
//!
//! Every function takes `now` (unix ms) from its caller, so tests drive time explicitly.

use std::time::Duration;

use rusqlite::{Connection, params};
use tracing::{info, warn};

use super::queue::kind_of_key;
use crate::catalog::{Catalog, CatalogError, to_i64};
use crate::store::{Store, StoreError};

/// Retry delay after a failed delete.
pub const RETRY: Duration = Duration::from_secs(60);
/// Deletes run per round at most.
pub const BATCH: usize = 256;

/// A pending delete, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelete {
    pub key: String,
    pub enqueued_at: i64,
    pub not_before: i64,
    pub attempts: u32,
    pub last_error: Option<String>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Queues a delete of `key` in the secondary, not before `now + delay`. Queuing a key again
/// re-arms its row with the new time (the later delete wins).
pub fn enqueue(
    conn: &Connection,
    key: &str,
    now: i64,
    delay: Duration,
) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT INTO replication_queue (key, op, kind, enqueued_at, not_before)
         VALUES (?1, 'delete', ?2, ?3, ?4)
         ON CONFLICT (key, op) DO UPDATE SET done_at = NULL, attempts = 0, next_attempt_at = 0,
             last_error = NULL, enqueued_at = excluded.enqueued_at,
             not_before = excluded.not_before",
        params![
            key,
            kind_of_key(key).as_str(),
            now,
            now.saturating_add(millis(delay))
        ],
    )?;
    Ok(())
}

/// Whether a delete of `key` has been queued (pending or done).
pub fn is_queued(conn: &Connection, key: &str) -> Result<bool, CatalogError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM replication_queue WHERE key = ?1 AND op = 'delete'",
        params![key],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Every delete not yet done, soonest first.
pub fn list(conn: &Connection) -> Result<Vec<PendingDelete>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT key, enqueued_at, not_before, attempts, last_error FROM replication_queue
         WHERE op = 'delete' AND done_at IS NULL ORDER BY not_before, key",
    )?;
    let rows = st.query_map([], |r| {
        Ok(PendingDelete {
            key: r.get(0)?,
            enqueued_at: r.get(1)?,
            not_before: r.get(2)?,
            attempts: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(u32::MAX),
            last_error: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Up to `limit` deletes due at `now`: (seq, key). A delete never runs ahead of a copy queued
/// before it: a repack queues the new pack's copy before the old pack's delete
/// ([`crate::gc::repack`]), so the secondary always holds one of the two.
pub fn due(conn: &Connection, now: i64, limit: usize) -> Result<Vec<(i64, String)>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT d.seq, d.key FROM replication_queue d
         WHERE d.op = 'delete' AND d.done_at IS NULL AND d.not_before <= ?1
           AND d.next_attempt_at <= ?1
           AND NOT EXISTS (SELECT 1 FROM replication_queue x WHERE x.done_at IS NULL
               AND x.op = 'copy' AND x.enqueued_at <= d.enqueued_at)
         ORDER BY d.not_before, d.seq LIMIT ?2",
    )?;
    let rows = st.query_map(params![now, to_i64(limit as u64)], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What one round of [`run_due`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub deleted: u64,
    /// Not deleted: the key exists in the primary again.
    pub cancelled: u64,
    pub failed: u64,
}

/// Runs the deletes due at `now` (none when `enabled` is false: the secondary's credentials
/// cannot delete, the rows stay listed). A delete that fails is retried after [`RETRY`].
pub async fn run_due(
    catalog: &Catalog,
    primary: &Store,
    secondary: &Store,
    enabled: bool,
    now: i64,
) -> Result<Round, CatalogError> {
    let mut round = Round::default();
    if !enabled {
        return Ok(round);
    }
    let rows = catalog.run(move |c| due(c, now, BATCH)).await?;
    for (seq, key) in rows {
        let outcome = match primary.head(&key).await {
            Ok(_) => Ok(false),
            Err(StoreError::NotFound { .. }) => secondary.delete(&key).await.map(|()| true),
            Err(e) => Err(e),
        };
        let update = match outcome {
            Ok(true) => {
                info!(key = %key, "delayed delete done in the secondary");
                round.deleted += 1;
                catalog.run(move |c| close(c, seq, now, None)).await
            }
            Ok(false) => {
                warn!(key = %key, "delayed delete cancelled: the object exists in the primary again");
                round.cancelled += 1;
                let why = "cancelled: the object exists in the primary again".to_owned();
                catalog.run(move |c| close(c, seq, now, Some(&why))).await
            }
            Err(e) => {
                warn!(key = %key, error = %e, "delayed delete failed; will retry");
                round.failed += 1;
                let (msg, next) = (e.to_string(), now.saturating_add(millis(RETRY)));
                catalog
                    .run(move |c| super::queue::mark_failed(c, seq, &msg, now, next))
                    .await
            }
        };
        update?;
    }
    Ok(round)
}

fn close(conn: &Connection, seq: i64, now: i64, note: Option<&str>) -> Result<(), CatalogError> {
    conn.execute(
        "UPDATE replication_queue SET done_at = ?2, last_error = ?3 WHERE seq = ?1",
        params![seq, now, note],
    )?;
    Ok(())
}

/// `AdminService.ListDelayedDeletes`: every pending delete; `manual` when the controller will
/// not run it itself (`[secondary] deletes = false`). Empty without a secondary.
pub async fn answer(
    state: &crate::service::State,
    run_now: bool,
) -> Result<lifeboat_proto::v1::ListDelayedDeletesResponse, CatalogError> {
    use lifeboat_proto::v1 as pb;
    let Some(secondary) = &state.secondary else {
        return Ok(pb::ListDelayedDeletesResponse::default());
    };
    let manual = !state.replication.settings.deletes;
    let round = if run_now {
        run_due(
            &state.catalog,
            &state.store,
            secondary,
            !manual,
            crate::fleet::clock::now_ms(),
        )
        .await?
    } else {
        Round::default()
    };
    let rows = state.catalog.run(|c| list(c)).await?;
    Ok(pb::ListDelayedDeletesResponse {
        deleted: round.deleted,
        cancelled: round.cancelled,
        failed: round.failed,
        deletes: rows
            .into_iter()
            .map(|d| pb::DelayedDelete {
                key: d.key,
                enqueued_at_unix_ms: d.enqueued_at,
                not_before_unix_ms: d.not_before,
                manual,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests;
