//! Restore grants: agent `agent` may read the snapshots of agent `from_agent`.
//!
//! Created only by an admin (`lifeboatctl agent allow-restore NEW --from OLD`), for a
//! replacement VM restoring a lost VM's data. A grant widens reads only (list, get, ReadChunks);
//! it never lets an agent write, commit or delete anything of the other agent, and never makes
//! the other agent's chunks count as "had" for deduplication (trust invariant 2).

use rusqlite::{Connection, OptionalExtension, params};

use super::CatalogError;

/// Records a grant; granting twice is a no-op. Both agents must exist (foreign keys).
pub fn insert(
    conn: &Connection,
    agent: &str,
    from_agent: &str,
    now: i64,
) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT OR IGNORE INTO restore_grants (agent, from_agent, created_at) VALUES (?1, ?2, ?3)",
        params![agent, from_agent, now],
    )?;
    Ok(())
}

/// Whether `agent` may read `from_agent`'s snapshots.
pub fn allowed(conn: &Connection, agent: &str, from_agent: &str) -> Result<bool, CatalogError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM restore_grants WHERE agent = ?1 AND from_agent = ?2")?
        .query_row(params![agent, from_agent], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some())
}

/// The dedup group of an agent, if it exists.
pub fn group_of(conn: &Connection, agent: &str) -> Result<Option<String>, CatalogError> {
    Ok(conn
        .prepare_cached("SELECT dedup_group FROM agents WHERE id = ?1")?
        .query_row([agent], |r| r.get(0))
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, agents};

    #[test]
    fn grants_are_directional() {
        let cat = Catalog::open_in_memory().expect("open");
        cat.run_blocking(|c| {
            for a in ["old", "new"] {
                agents::insert(
                    c,
                    &agents::AgentRow {
                        id: a.into(),
                        dedup_group: a.into(),
                        cert_sha256: format!("f{a}"),
                        not_after: 0,
                        created_at: 0,
                        last_seen: 0,
                        snapshots: 0,
                    },
                )?;
            }
            assert!(!allowed(c, "new", "old")?);
            insert(c, "new", "old", 1)?;
            insert(c, "new", "old", 2)?;
            assert!(allowed(c, "new", "old")?);
            assert!(!allowed(c, "old", "new")?);
            assert!(insert(c, "new", "ghost", 1).is_err(), "unknown agent");
            assert_eq!(group_of(c, "old")?.as_deref(), Some("old"));
            assert_eq!(group_of(c, "ghost")?, None);
            Ok(())
        })
        .expect("ops");
    }
}
