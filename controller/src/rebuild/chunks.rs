//! Chunk rows of a rebuilt catalog: which pack serves chunk `id` for dedup group `G`.
//!
//! Neither a pack's footer nor its key names a dedup group, so the group comes from the
//! reference sets: every chunk a snapshot of an agent in group G references gets a row for G.
//! When several packs hold the id, the choice matters for isolation (ADR 0003: another group's
//! blob under the same id must never be served to G, since a compromised agent could have
//! uploaded garbage under an id it expects G to produce). Packs are written by one upload
//! session of one agent, so all entries of a pack belong to one group; the rebuild uses that:
//! 1. **ownership** ([`owners`]): a pack that is the *only* pack holding some chunk referenced
//!    by group G is G's (`rb_owner`);
//! 2. **choice** ([`derive`]): for (G, id), a pack owned by G first, then a pack owned by no
//!    group, and a pack owned only by other groups last (used only when nothing else holds the
//!    id; a blob is always verified by the agent — AEAD + keyed hash — so a wrong one fails a
//!    restore loudly, never silently).
//!
//! Residual ambiguity: two single-entry packs holding the same id, each referenced by both
//! groups, cannot be told apart from the bucket alone (see ADR 0008).
//!
//! Then each snapshot's `missing_refs` (references no pack holds, plus those hidden by
//! unreadable segments) and its record's pack dependencies for replication are set. Both passes
//! run per batch of snapshots, one transaction each.

use lifeboat_common::clock::now_unix_ms;
use rusqlite::{Connection, params};

use super::{BATCH, RebuildError, Report};
use crate::catalog::{Catalog, CatalogError, to_i64, to_u64};
use crate::replication::queue;

/// One snapshot as the chunk passes see it.
struct Snap {
    id: String,
    record_key: String,
    group: String,
    unread: u64,
}

fn page(c: &Connection, after: &str) -> Result<Vec<Snap>, CatalogError> {
    let mut st = c.prepare_cached(
        "SELECT s.id, s.record_key, a.dedup_group, s.missing_refs FROM snapshots s
         JOIN agents a ON a.id = s.agent WHERE s.id > ?1 ORDER BY s.id LIMIT ?2",
    )?;
    let rows = st.query_map(params![after, to_i64(BATCH as u64)], |r| {
        Ok(Snap {
            id: r.get(0)?,
            record_key: r.get(1)?,
            group: r.get(2)?,
            unread: to_u64(r.get(3)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Runs `f` on every batch of snapshots, one transaction per batch.
async fn each_batch<F>(catalog: &Catalog, f: F) -> Result<(), CatalogError>
where
    F: Fn(&Connection, &[Snap]) -> Result<(), CatalogError> + Send + Sync + Clone + 'static,
{
    let mut after = String::new();
    loop {
        let f = f.clone();
        let from = after.clone();
        let last = catalog
            .run(move |c| {
                let tx = c.transaction()?;
                let snaps = page(&tx, &from)?;
                f(&tx, &snaps)?;
                tx.commit()?;
                Ok(snaps.last().map(|s| s.id.clone()))
            })
            .await?;
        match last {
            Some(id) => after = id,
            None => return Ok(()),
        }
    }
}

/// Pass 1: packs that are the only holder of a chunk a group references belong to that group.
fn owners(c: &Connection, snaps: &[Snap]) -> Result<(), CatalogError> {
    let mut st = c.prepare_cached(
        "INSERT OR IGNORE INTO rb_owner (pack_id, grp)
         SELECT DISTINCT e.pack_id, ?2 FROM snapshot_sets ss CROSS JOIN ref_set_chunks r
         CROSS JOIN rb_entries e
         WHERE ss.snapshot_id = ?1 AND r.set_id = ss.set_id AND e.chunk_id = r.chunk_id
           AND NOT EXISTS (
             SELECT 1 FROM rb_entries x WHERE x.chunk_id = e.chunk_id AND x.pack_id != e.pack_id)",
    )?;
    for s in snaps {
        st.execute(params![s.id, s.group])?;
    }
    Ok(())
}

/// Pass 2: chunk rows (best pack first, see the module docs), flags and pack dependencies.
fn derive(c: &Connection, snaps: &[Snap], now: i64) -> Result<(), CatalogError> {
    let mut ins = c.prepare_cached(
        "INSERT OR IGNORE INTO chunks (dedup_group, id, pack_id, offset, length, blob_hash, created_at)
         SELECT ?2, e.chunk_id, e.pack_id, e.offset, e.length, e.hash, ?3
         FROM snapshot_sets ss CROSS JOIN ref_set_chunks r CROSS JOIN rb_entries e
         WHERE ss.snapshot_id = ?1 AND r.set_id = ss.set_id AND e.chunk_id = r.chunk_id
           AND NOT EXISTS (SELECT 1 FROM chunks k WHERE k.dedup_group = ?2 AND k.id = r.chunk_id)
         ORDER BY e.chunk_id,
             EXISTS (SELECT 1 FROM rb_owner o WHERE o.pack_id = e.pack_id AND o.grp = ?2) DESC,
             EXISTS (SELECT 1 FROM rb_owner o WHERE o.pack_id = e.pack_id AND o.grp != ?2) ASC,
             e.pack_id",
    )?;
    let mut missing = c.prepare_cached(
        "SELECT COUNT(*) FROM snapshot_sets ss CROSS JOIN ref_set_chunks r
         WHERE ss.snapshot_id = ?1 AND r.set_id = ss.set_id AND NOT EXISTS (
             SELECT 1 FROM chunks x WHERE x.dedup_group = ?2 AND x.id = r.chunk_id)",
    )?;
    for s in snaps {
        ins.execute(params![s.id, s.group, now])?;
        let n: i64 = missing.query_row(params![s.id, s.group], |r| r.get(0))?;
        let total = to_u64(n) + s.unread;
        if total != s.unread {
            c.execute(
                "UPDATE snapshots SET missing_refs = ?2 WHERE id = ?1",
                params![s.id, to_i64(total)],
            )?;
        }
        queue::add_record_deps(c, &s.record_key, &[], &s.id, &s.group)?;
    }
    Ok(())
}

/// Both passes; fills `chunks` and `flagged_snapshots`.
pub async fn derive_all(catalog: &Catalog, report: &mut Report) -> Result<(), RebuildError> {
    catalog
        .run(|c| {
            c.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS rb_owner (
                    pack_id BLOB NOT NULL,
                    grp     TEXT NOT NULL,
                    PRIMARY KEY (pack_id, grp)
                 ) WITHOUT ROWID;",
            )?;
            Ok(())
        })
        .await?;
    each_batch(catalog, owners).await?;
    let now = now_unix_ms();
    each_batch(catalog, move |c, s| derive(c, s, now)).await?;
    let (chunks, flagged) = catalog
        .run(|c| {
            let chunks: i64 = c.query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))?;
            let mut st =
                c.prepare("SELECT id FROM snapshots WHERE missing_refs > 0 ORDER BY id")?;
            let flagged = st
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((to_u64(chunks), flagged))
        })
        .await?;
    report.chunks = chunks;
    report.flagged_snapshots = flagged;
    Ok(())
}
