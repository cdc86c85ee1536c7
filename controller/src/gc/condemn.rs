//! Condemn: unreferenced, unpinned chunks created before the cutoff ([`super::mark::cutoff`])
//! get `condemned_at` ("unreferenced" counts snapshots forgotten since `keep` as references,
//! [`super::mark`]). Nothing is deleted here: a condemned chunk is still stored and still
//! answers "have" (and is revived when it does, [`super::pins`]); the sweep of a *later* run
//! deletes it only if it is still unreferenced then.
//!
//! The chunk table is walked in key order in batches of [`BATCH`] rows, each batch its own
//! transaction, so uploads and commits interleave with a long condemn pass instead of waiting
//! for it; every batch evaluates liveness ([`super::mark`]) atomically with its update.

use rusqlite::{Connection, OptionalExtension, named_params};

use super::mark::{PINNED, REFERENCED};
use crate::catalog::CatalogError;

/// Chunk rows per condemn transaction.
pub const BATCH: i64 = 20_000;

/// The key range one batch covers: `(after, until]` in `(dedup_group, id)` order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub group: String,
    pub id: Vec<u8>,
}

fn condition() -> String {
    format!(
        "(c.dedup_group, c.id) > (:ag, :ai) AND (c.dedup_group, c.id) <= (:ug, :ui)
         AND c.condemned_at IS NULL AND c.created_at < :cutoff
         AND NOT {REFERENCED} AND NOT {PINNED}"
    )
}

/// The last key of the batch after `cursor`: the `BATCH`-th row, or the table's last row.
fn batch_end(
    tx: &Connection,
    cursor: &Cursor,
) -> Result<Option<(String, Vec<u8>, bool)>, CatalogError> {
    let nth: Option<(String, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT dedup_group, id FROM chunks WHERE (dedup_group, id) > (?1, ?2)
             ORDER BY dedup_group, id LIMIT 1 OFFSET ?3",
        )?
        .query_row(rusqlite::params![cursor.group, cursor.id, BATCH - 1], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((g, i)) = nth {
        return Ok(Some((g, i, false)));
    }
    let last: Option<(String, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT dedup_group, id FROM chunks WHERE (dedup_group, id) > (?1, ?2)
             ORDER BY dedup_group DESC, id DESC LIMIT 1",
        )?
        .query_row(rusqlite::params![cursor.group, cursor.id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(last.map(|(g, i)| (g, i, true)))
}

/// Condemns (or with `dry_run` counts) one batch after `cursor`; returns how many chunks and
/// their bytes, and the next cursor (`None` when the table is done).
pub fn batch(
    conn: &mut Connection,
    cursor: &Cursor,
    cutoff: i64,
    (now, keep): (i64, i64),
    dry_run: bool,
) -> Result<(u64, u64, Option<Cursor>), CatalogError> {
    let tx = conn.transaction()?;
    let Some((ug, ui, last)) = batch_end(&tx, cursor)? else {
        return Ok((0, 0, None));
    };
    let args = named_params! {
        ":ag": cursor.group, ":ai": cursor.id, ":ug": ug, ":ui": ui,
        ":cutoff": cutoff, ":now": now, ":keep": keep,
    };
    let (mut n, mut bytes) = (0u64, 0u64);
    let sql = if dry_run {
        format!("SELECT c.length FROM chunks c WHERE {}", condition())
    } else {
        format!(
            "UPDATE chunks AS c SET condemned_at = :now WHERE {} RETURNING length",
            condition()
        )
    };
    {
        let mut st = tx.prepare_cached(&sql)?;
        let mut rows = st.query(args)?;
        while let Some(r) = rows.next()? {
            n += 1;
            bytes += crate::catalog::to_u64(r.get(0)?);
        }
    }
    tx.commit()?;
    let next = (!last).then_some(Cursor { group: ug, id: ui });
    Ok((n, bytes, next))
}
