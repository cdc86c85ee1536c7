//! Packs, chunks (per dedup group) and upload sessions.
//!
//! A chunk row says "this dedup group has this chunk durably, at this place in this pack". Rows
//! are only inserted after the pack object is durable. Dedup is scoped by `dedup_group`: the same
//! id uploaded by two groups is two rows (each group trusts only its own uploads).

use std::collections::HashSet;

use lifeboat_common::ids::ChunkId;
use rusqlite::{Connection, OptionalExtension, params};

use super::{CatalogError, to_i64, to_u64};
use crate::pack::SealedPack;

/// Where a chunk's blob lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack_key: String,
    pub offset: u64,
    pub length: u32,
    pub blob_hash: [u8; 32],
}

/// One upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub agent: String,
    pub source: String,
    pub started_at: i64,
    pub stored_bytes: u64,
    pub stored_chunks: u64,
}

/// What recording a pack changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordOutcome {
    pub stored: u64,
    pub stored_bytes: u64,
    pub already_present: u64,
}

/// The ids among `ids` that `group` has stored (duplicates collapse).
pub fn present(
    conn: &Connection,
    group: &str,
    ids: &[ChunkId],
) -> Result<HashSet<ChunkId>, CatalogError> {
    let mut st = conn.prepare_cached("SELECT 1 FROM chunks WHERE dedup_group = ?1 AND id = ?2")?;
    let mut out = HashSet::new();
    for id in ids {
        if st
            .query_row(params![group, &id.0[..]], |r| r.get::<_, i64>(0))
            .optional()?
            .is_some()
        {
            out.insert(*id);
        }
    }
    Ok(out)
}

/// The ids among `ids` that `group` has NOT stored, in request order, each once.
pub fn missing(
    conn: &Connection,
    group: &str,
    ids: &[ChunkId],
) -> Result<Vec<ChunkId>, CatalogError> {
    let have = present(conn, group, ids)?;
    Ok(absent(ids, &have))
}

/// The ids of `ids` not in `have`, in order, each once (the shape of a "missing" answer).
pub fn absent(ids: &[ChunkId], have: &HashSet<ChunkId>) -> Vec<ChunkId> {
    let mut seen = HashSet::new();
    ids.iter()
        .filter(|id| !have.contains(id) && seen.insert(**id))
        .copied()
        .collect()
}

/// Records a durable pack and its chunks for `group`, crediting `session`, in one transaction.
/// Chunks the group already has (a concurrent upload won) are counted as already present.
pub fn record_pack(
    conn: &mut Connection,
    group: &str,
    session: &str,
    pack: &SealedPack,
    now: i64,
) -> Result<RecordOutcome, CatalogError> {
    let tx = conn.transaction()?;
    let (out, _) = record_pack_in(&tx, group, session, pack, now)?;
    tx.commit()?;
    Ok(out)
}

/// [`record_pack`] inside the caller's transaction; also returns the ids whose rows already
/// existed (another upload won the race), which the upload path pins in the same transaction.
pub fn record_pack_in(
    tx: &Connection,
    group: &str,
    session: &str,
    pack: &SealedPack,
    now: i64,
) -> Result<(RecordOutcome, Vec<ChunkId>), CatalogError> {
    let mut out = RecordOutcome::default();
    let mut existing = Vec::new();
    insert_pack_row(tx, pack, now)?;
    {
        let mut st = tx.prepare_cached(
            "INSERT OR IGNORE INTO chunks (dedup_group, id, pack_id, offset, length, blob_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for e in &pack.entries {
            let n = st.execute(params![
                group,
                &e.id.0[..],
                &pack.name[..],
                to_i64(e.offset),
                i64::from(e.length),
                &e.hash[..],
                now
            ])?;
            if n == 1 {
                out.stored += 1;
                out.stored_bytes += u64::from(e.length);
            } else {
                out.already_present += 1;
                existing.push(e.id);
            }
        }
    }
    tx.execute(
        "UPDATE sessions SET stored_bytes = stored_bytes + ?2, stored_chunks = stored_chunks + ?3 WHERE id = ?1",
        params![session, to_i64(out.stored_bytes), to_i64(out.stored)],
    )?;
    // Queued for the secondary in the same transaction that records the pack.
    queue_pack_copy(tx, pack, now)?;
    Ok((out, existing))
}

/// Records a stored pack object (its chunk rows are the caller's); a pack already recorded (the
/// same content) is left as it is.
pub fn insert_pack_row(tx: &Connection, pack: &SealedPack, now: i64) -> Result<(), CatalogError> {
    tx.execute(
        "INSERT OR IGNORE INTO packs (id, key, size, entries, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            &pack.name[..],
            pack.key,
            to_i64(pack.bytes.len() as u64),
            to_i64(pack.entries.len() as u64),
            now
        ],
    )?;
    Ok(())
}

/// Queues a pack for the secondary (call in the transaction that records it).
pub fn queue_pack_copy(tx: &Connection, pack: &SealedPack, now: i64) -> Result<(), CatalogError> {
    let queued = crate::replication::queue::NewObject {
        key: pack.key.clone(),
        kind: crate::replication::queue::Kind::Pack,
        size: pack.bytes.len() as u64,
        blake3: pack.name,
    };
    crate::replication::queue::enqueue(tx, &queued, now)
}

/// Where `group`'s copy of `id` is.
pub fn location(
    conn: &Connection,
    group: &str,
    id: &ChunkId,
) -> Result<Option<ChunkLocation>, CatalogError> {
    let row = conn
        .prepare_cached(
            "SELECT p.key, c.offset, c.length, c.blob_hash FROM chunks c JOIN packs p ON p.id = c.pack_id
             WHERE c.dedup_group = ?1 AND c.id = ?2",
        )?
        .query_row(params![group, &id.0[..]], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .optional()?;
    let Some((pack_key, offset, length, hash)) = row else {
        return Ok(None);
    };
    let blob_hash: [u8; 32] = hash
        .as_slice()
        .try_into()
        .map_err(|_| CatalogError::Corrupt(format!("blob hash of chunk {id} is not 32 bytes")))?;
    let length = u32::try_from(length)
        .map_err(|_| CatalogError::Corrupt(format!("length of chunk {id} is out of range")))?;
    Ok(Some(ChunkLocation {
        pack_key,
        offset: to_u64(offset),
        length,
        blob_hash,
    }))
}

/// Opens an upload session.
pub fn create_session(conn: &Connection, s: &SessionRow) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT INTO sessions (id, agent, source, started_at) VALUES (?1, ?2, ?3, ?4)",
        params![s.id, s.agent, s.source, s.started_at],
    )?;
    Ok(())
}

/// Looks a session up.
pub fn session(conn: &Connection, id: &str) -> Result<Option<SessionRow>, CatalogError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, agent, source, started_at, stored_bytes, stored_chunks FROM sessions WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok(SessionRow {
                id: r.get(0)?,
                agent: r.get(1)?,
                source: r.get(2)?,
                started_at: r.get(3)?,
                stored_bytes: to_u64(r.get(4)?),
                stored_chunks: to_u64(r.get(5)?),
            })
        })
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, agents};
    use crate::pack::PackBuilder;

    #[test]
    fn packs_record_chunks_per_group() {
        let cat = Catalog::open_in_memory().expect("open");
        cat.run_blocking(|c| {
            let a = agents::AgentRow {
                id: "a".into(),
                dedup_group: "g".into(),
                cert_sha256: "f".into(),
                not_after: 0,
                created_at: 0,
                last_seen: 0,
                snapshots: 0,
            };
            agents::insert(c, &a)?;
            let s = SessionRow {
                id: "s1".into(),
                agent: "a".into(),
                source: "web".into(),
                started_at: 1,
                stored_bytes: 0,
                stored_chunks: 0,
            };
            create_session(c, &s)?;
            let mut b = PackBuilder::new();
            b.push(ChunkId([1; 32]), b"one");
            b.push(ChunkId([2; 32]), b"two!");
            let p = b.finish();
            let o = record_pack(c, "g", "s1", &p, 5)?;
            assert_eq!(o.stored, 2);
            assert_eq!(o.stored_bytes, 7);
            let again = record_pack(c, "g", "s1", &p, 6)?;
            assert_eq!(again.already_present, 2);
            assert_eq!(session(c, "s1")?.map(|s| s.stored_bytes), Some(7));
            let ids = [ChunkId([1; 32]), ChunkId([3; 32]), ChunkId([3; 32])];
            assert_eq!(missing(c, "g", &ids)?, vec![ChunkId([3; 32])]);
            assert_eq!(missing(c, "other", &ids[..1])?, vec![ChunkId([1; 32])]);
            let loc = location(c, "g", &ChunkId([2; 32]))?.expect("stored");
            assert_eq!((loc.offset, loc.length), (3, 4));
            assert_eq!(loc.pack_key, p.key);
            assert_eq!(location(c, "other", &ChunkId([2; 32]))?, None);
            Ok(())
        })
        .expect("ops");
    }
}
