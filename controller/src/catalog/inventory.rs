//! What the catalog says is in the store: usage figures (for `lifeboatctl stats`) and the set of
//! object keys it knows (for `lifeboatctl storage orphans`). Read-only.
//!
//! Definitions (also in `lifeboatctl stats --help`):
//! - logical bytes: the sum over snapshots of their plaintext size (`logical_bytes`); a tree
//!   backed up twice counts twice;
//! - stored bytes, total: the size of every pack object (blobs + index footers);
//! - stored bytes, per dedup group: the ciphertext bytes of the group's chunks;
//! - stored bytes, per agent: the ciphertext bytes of chunks the agent's upload sessions stored
//!   *first* within its group (a chunk another group member uploaded first is credited there);
//!   the agents of a group therefore add up to the group;
//! - dedup ratio: logical / stored (so it includes compression).

use std::collections::{BTreeMap, HashSet};

use rusqlite::Connection;

use super::{CatalogError, to_u64};
use crate::refset;

/// Usage of one agent, one group, or the whole catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub name: String,
    pub dedup_group: String,
    pub snapshots: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub chunks: u64,
    pub packs: u64,
    pub agents: u64,
}

/// The catalog's usage figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    pub total: Usage,
    pub agents: Vec<Usage>,
    pub groups: Vec<Usage>,
}

fn one(conn: &Connection, sql: &str) -> Result<u64, CatalogError> {
    Ok(to_u64(conn.query_row(sql, [], |r| r.get::<_, i64>(0))?))
}

/// Computes [`UsageReport`] (see the module docs for the definitions).
pub fn usage(conn: &Connection) -> Result<UsageReport, CatalogError> {
    let total = Usage {
        snapshots: one(conn, "SELECT COUNT(*) FROM snapshots")?,
        logical_bytes: one(
            conn,
            "SELECT COALESCE(SUM(logical_bytes), 0) FROM snapshots",
        )?,
        stored_bytes: one(conn, "SELECT COALESCE(SUM(size), 0) FROM packs")?,
        chunks: one(conn, "SELECT COUNT(*) FROM chunks")?,
        packs: one(conn, "SELECT COUNT(*) FROM packs")?,
        agents: one(conn, "SELECT COUNT(*) FROM agents")?,
        ..Default::default()
    };
    let mut st = conn.prepare(
        "SELECT a.id, a.dedup_group,
            (SELECT COUNT(*) FROM snapshots s WHERE s.agent = a.id),
            (SELECT COALESCE(SUM(s.logical_bytes), 0) FROM snapshots s WHERE s.agent = a.id),
            (SELECT COALESCE(SUM(x.stored_bytes), 0) FROM sessions x WHERE x.agent = a.id),
            (SELECT COALESCE(SUM(x.stored_chunks), 0) FROM sessions x WHERE x.agent = a.id)
         FROM agents a ORDER BY a.id",
    )?;
    let agents = st
        .query_map([], |r| {
            Ok(Usage {
                name: r.get(0)?,
                dedup_group: r.get(1)?,
                snapshots: to_u64(r.get(2)?),
                logical_bytes: to_u64(r.get(3)?),
                stored_bytes: to_u64(r.get(4)?),
                chunks: to_u64(r.get(5)?),
                ..Default::default()
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut groups: BTreeMap<String, Usage> = BTreeMap::new();
    for a in &agents {
        let g = groups
            .entry(a.dedup_group.clone())
            .or_insert_with(|| Usage {
                name: a.dedup_group.clone(),
                ..Default::default()
            });
        g.agents += 1;
        g.snapshots += a.snapshots;
        g.logical_bytes += a.logical_bytes;
    }
    let mut st = conn.prepare(
        "SELECT dedup_group, COUNT(*), COALESCE(SUM(length), 0) FROM chunks GROUP BY dedup_group",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (name, chunks, bytes) = row?;
        let g = groups.entry(name.clone()).or_insert_with(|| Usage {
            name,
            ..Default::default()
        });
        g.chunks = to_u64(chunks);
        g.stored_bytes = to_u64(bytes);
    }
    Ok(UsageReport {
        total,
        agents,
        groups: groups.into_values().collect(),
    })
}

/// Every object key the catalog knows under `packs/`, `refs/` and `snapshots/`.
///
/// `refs/` keys are not stored in the catalog: they are recomputed from each snapshot's
/// reference set ([`refset::segment_keys`]), which is exactly how the commit named them.
pub fn known_keys(conn: &Connection) -> Result<HashSet<String>, CatalogError> {
    let mut keys = HashSet::new();
    let mut st = conn.prepare("SELECT key FROM packs")?;
    for k in st.query_map([], |r| r.get::<_, String>(0))? {
        keys.insert(k?);
    }
    let mut st = conn.prepare("SELECT record_key FROM snapshots")?;
    for k in st.query_map([], |r| r.get::<_, String>(0))? {
        keys.insert(k?);
    }
    let snaps: Vec<String> = conn
        .prepare("SELECT id FROM snapshots")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for snap in snaps {
        keys.extend(refset::segment_keys(super::refsets::refs_of(conn, &snap)?));
    }
    Ok(keys)
}
