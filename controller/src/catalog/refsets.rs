//! Reference sets: how the catalog records which chunks each snapshot references (schema v9,
//! ADR 0010).
//!
//! A snapshot's references (sorted, distinct chunk ids) are cut into content-defined *sets*: a
//! set ends after an id whose second byte is zero (one id in 256 on average), so cut points
//! depend only on the ids. A set is stored once per dedup group (`ref_sets`, named by the
//! BLAKE3 of its ids; its ids in `ref_set_chunks`, indexed by chunk), and a snapshot is the
//! list of its sets (`snapshot_sets`). Consecutive snapshots of a source share every set their
//! changes did not touch: a backup with no change inserts a few hundred `snapshot_sets` rows
//! instead of each of its (100,000+) references into two B-trees, and the catalog no longer
//! grows by every reference of every snapshot kept. `snapshot_refs` is a view with the columns
//! of the v8 table, so readers that list a snapshot's references or look a chunk up are
//! unchanged; hot paths spell the join out, and whether one snapshot references a chunk is one
//! lookup through its sets' ranges ([`cover`]).
//!
//! Invariants:
//! - a set is immutable: its name is the hash of its ids, and the rows of a new set are
//!   inserted in the transaction that first lists it;
//! - a set exists exactly while some `snapshot_sets` row lists it: [`remove_snapshot`] deletes
//!   a snapshot's rows and, in the same transaction, every set no other snapshot lists;
//! - a set listed by a live (not forgotten), complete (`missing_refs = 0`) snapshot of an agent
//!   that is in the set's dedup group has every chunk present and not condemned: those chunks
//!   were checked (and revived) when that snapshot committed, and GC never condemns a chunk a
//!   live snapshot of its group references ([`crate::gc::mark`]). The commit's first check
//!   still looks up every id (a catalog damaged by hand breaks this invariant, and agents ask
//!   nothing about the chunks they presume stored: ADR 0012); its re-validation after a GC
//!   run checks only the ids of the other sets ([`unproven`]).
//!
//! Every object-level reference segment ([`crate::refset`], cut when the leading u16 is a
//! multiple of 4096, hence when the second byte is zero) ends at a set cut too.

use std::ops::Range;

use lifeboat_common::ids::{CHUNK_ID_LEN, ChunkId};
use rusqlite::{Connection, OptionalExtension, params};

use super::{CatalogError, to_i64};

/// Whether a set ends after `id`.
fn is_cut(id: &ChunkId) -> bool {
    id.0[1] == 0
}

/// The index ranges of `sorted` that form its sets.
pub fn cuts(sorted: &[ChunkId]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, id) in sorted.iter().enumerate() {
        if is_cut(id) {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < sorted.len() {
        out.push(start..sorted.len());
    }
    out
}

/// A set's name: BLAKE3 of its ids, concatenated.
pub fn set_name(ids: &[ChunkId]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for id in ids {
        h.update(id.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// What [`insert`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inserted {
    pub sets: usize,
    pub new_sets: usize,
    pub new_refs: usize,
}

fn find_set(conn: &Connection, group: &str, name: &[u8; 32]) -> Result<Option<i64>, CatalogError> {
    Ok(conn
        .prepare_cached("SELECT id FROM ref_sets WHERE dedup_group = ?1 AND name = ?2")?
        .query_row(params![group, &name[..]], |r| r.get(0))
        .optional()?)
}

/// Records that snapshot `snap` (of an agent of `group`) references `sorted` (sorted, distinct),
/// inside the caller's transaction: existing sets are listed, new ones created.
pub fn insert(
    tx: &Connection,
    snap: &str,
    group: &str,
    sorted: &[ChunkId],
) -> Result<Inserted, CatalogError> {
    let mut out = Inserted::default();
    let mut list = tx.prepare_cached(
        "INSERT OR IGNORE INTO snapshot_sets (snapshot_id, set_id) VALUES (?1, ?2)",
    )?;
    for r in cuts(sorted) {
        let ids = &sorted[r];
        let name = set_name(ids);
        let set = match find_set(tx, group, &name)? {
            Some(set) => set,
            None => {
                tx.prepare_cached(
                    "INSERT INTO ref_sets (dedup_group, name, refs) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![group, &name[..], to_i64(ids.len() as u64)])?;
                let set = tx.last_insert_rowid();
                let mut ins = tx.prepare_cached(
                    "INSERT OR IGNORE INTO ref_set_chunks (set_id, chunk_id) VALUES (?1, ?2)",
                )?;
                for id in ids {
                    ins.execute(params![set, &id.0[..]])?;
                }
                out.new_sets += 1;
                out.new_refs += ids.len();
                set
            }
        };
        list.execute(params![snap, set])?;
        out.sets += 1;
    }
    Ok(out)
}

/// The parts of `sorted` whose presence no live, complete snapshot of `group` vouches for
/// (see the module docs): the ids a commit must check one by one.
pub fn unproven<'a>(
    conn: &Connection,
    group: &str,
    sorted: &'a [ChunkId],
) -> Result<Vec<&'a [ChunkId]>, CatalogError> {
    let mut vouched = conn.prepare_cached(
        "SELECT 1 FROM snapshot_sets ss JOIN snapshots s ON s.id = ss.snapshot_id
         JOIN agents a ON a.id = s.agent
         WHERE ss.set_id = ?1 AND a.dedup_group = ?2
           AND s.forgotten_at IS NULL AND s.missing_refs = 0 LIMIT 1",
    )?;
    let mut out = Vec::new();
    for r in cuts(sorted) {
        let ids = &sorted[r];
        let proven = match find_set(conn, group, &set_name(ids))? {
            Some(set) => vouched
                .query_row(params![set, group], |_| Ok(()))
                .optional()?
                .is_some(),
            None => false,
        };
        if !proven {
            out.push(ids);
        }
    }
    Ok(out)
}

/// Deletes snapshot `snap`'s set list and every set no other snapshot lists, inside the
/// caller's transaction. Returns how many sets were deleted.
pub fn remove_snapshot(tx: &Connection, snap: &str) -> Result<u64, CatalogError> {
    let sets: Vec<i64> = tx
        .prepare_cached("SELECT set_id FROM snapshot_sets WHERE snapshot_id = ?1")?
        .query_map(params![snap], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    tx.prepare_cached("DELETE FROM snapshot_sets WHERE snapshot_id = ?1")?
        .execute(params![snap])?;
    let mut removed = 0;
    for set in sets {
        let listed = tx
            .prepare_cached("SELECT 1 FROM snapshot_sets WHERE set_id = ?1 LIMIT 1")?
            .query_row(params![set], |_| Ok(()))
            .optional()?
            .is_some();
        if !listed {
            tx.prepare_cached("DELETE FROM ref_set_chunks WHERE set_id = ?1")?
                .execute(params![set])?;
            tx.prepare_cached("DELETE FROM ref_sets WHERE id = ?1")?
                .execute(params![set])?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The sorted references of snapshot `snap`: each set's ids in key order, set after set, then
/// sorted in memory (no SQLite sorter: its memory would grow with the snapshot).
pub fn refs_of(conn: &Connection, snap: &str) -> Result<Vec<ChunkId>, CatalogError> {
    let sets: Vec<(i64, i64)> = conn
        .prepare_cached(
            "SELECT ss.set_id, r.refs FROM snapshot_sets ss JOIN ref_sets r ON r.id = ss.set_id
             WHERE ss.snapshot_id = ?1",
        )?
        .query_map(params![snap], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let total: i64 = sets.iter().map(|(_, n)| (*n).max(0)).sum();
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut st = conn.prepare_cached("SELECT chunk_id FROM ref_set_chunks WHERE set_id = ?1")?;
    for (set, _) in sets {
        push_ids(&mut st, [set], &format!("snapshot {snap}"), &mut out)?;
    }
    out.sort_unstable();
    Ok(out)
}

/// Appends the ids (32-byte blobs) that the one-column query `st` returns for `params`;
/// `what` names their owner in errors.
pub fn push_ids(
    st: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    what: &str,
    out: &mut Vec<ChunkId>,
) -> Result<(), CatalogError> {
    for raw in st.query_map(params, |r| r.get::<_, Vec<u8>>(0))? {
        let raw = raw?;
        let a = <[u8; CHUNK_ID_LEN]>::try_from(raw.as_slice())
            .map_err(|_| CatalogError::Corrupt(format!("{what}: a reference is not 32 bytes")))?;
        out.push(ChunkId(a));
    }
    Ok(())
}

pub mod cover;

#[cfg(test)]
mod tests;
