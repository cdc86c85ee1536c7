//! The replication queue of a rebuilt catalog, from the two regions' listings.
//!
//! Every recognized object of the source store (pack, segment, record, registry object) gets a
//! `copy` row carrying its size and BLAKE3, so the worker checks what it copies:
//! - rebuilt from the primary: the row is done when the secondary lists the key with the same
//!   size, pending (re-queued) otherwise; without a secondary every row is pending, as in normal
//!   operation;
//! - rebuilt from the secondary: every copy row is done (the object is in the secondary), and
//!   a `repair` row (secondary → primary) is queued for each object the primary lacks or holds
//!   with another size, so a replaced primary bucket is refilled.
//!
//! Records wait on their dependencies as usual (`replication_deps`, added per snapshot).

use lifeboat_common::clock::now_unix_ms;

use super::{RebuildError, Region, Report};
use crate::catalog::{Catalog, to_u64};

const RECOGNIZED: &str = "s.region = 0 AND s.kind IN ('pack', 'refs', 'record', 'registry')
    AND s.blake3 IS NOT NULL";

/// Inserts the queue rows; fills `already_replicated` and `requeued`.
pub async fn queue_all(
    catalog: &Catalog,
    has_other: bool,
    region: Region,
    report: &mut Report,
) -> Result<(), RebuildError> {
    let now = now_unix_ms();
    let (done, queued) = catalog
        .run(move |c| {
            let tx = c.transaction()?;
            let same = "o.size IS NOT NULL AND o.size = s.size";
            let copy_done = match region {
                Region::Primary => format!("CASE WHEN {same} THEN ?1 END"),
                Region::Secondary => "?1".to_owned(),
            };
            tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO replication_queue (key, op, kind, size, blake3, enqueued_at, done_at)
                     SELECT s.key, 'copy', s.kind, s.size, s.blake3, ?1, {copy_done}
                     FROM rb_objects s LEFT JOIN rb_objects o ON o.region = 1 AND o.key = s.key
                     WHERE {RECOGNIZED}"
                ),
                [now],
            )?;
            if region == Region::Secondary {
                tx.execute(
                    &format!(
                        "INSERT OR IGNORE INTO replication_queue (key, op, kind, size, blake3, enqueued_at)
                         SELECT s.key, 'repair', s.kind, s.size, s.blake3, ?1
                         FROM rb_objects s LEFT JOIN rb_objects o ON o.region = 1 AND o.key = s.key
                         WHERE {RECOGNIZED} AND NOT ({same})"
                    ),
                    [now],
                )?;
            }
            let done: i64 = tx.query_row(
                &format!(
                    "SELECT COUNT(*) FROM rb_objects s JOIN rb_objects o ON o.region = 1 AND o.key = s.key
                     WHERE {RECOGNIZED} AND {same}"
                ),
                [],
                |r| r.get(0),
            )?;
            let queued: i64 = tx.query_row(
                "SELECT COUNT(*) FROM replication_queue WHERE done_at IS NULL",
                [],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok((to_u64(done), to_u64(queued)))
        })
        .await?;
    report.already_replicated = if has_other { done } else { 0 };
    report.requeued = queued;
    Ok(())
}
