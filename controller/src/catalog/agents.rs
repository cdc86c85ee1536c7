//! Agents and admin certificates.

use rusqlite::{Connection, OptionalExtension, params};

use super::{CatalogError, to_u64};

/// One enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub id: String,
    pub dedup_group: String,
    pub cert_sha256: String,
    pub not_after: i64,
    pub created_at: i64,
    pub last_seen: i64,
    pub snapshots: u64,
}

/// Inserts an agent. Returns `false` (and changes nothing) if the id or fingerprint exists.
pub fn insert(conn: &Connection, a: &AgentRow) -> Result<bool, CatalogError> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM agents WHERE id = ?1 OR cert_sha256 = ?2",
            params![a.id, a.cert_sha256],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_some() {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO agents (id, dedup_group, cert_sha256, not_after, created_at, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, 0)",
        params![
            a.id,
            a.dedup_group,
            a.cert_sha256,
            a.not_after,
            a.created_at
        ],
    )?;
    Ok(true)
}

/// Every agent, by id, with its snapshot count.
pub fn list(conn: &Connection) -> Result<Vec<AgentRow>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT a.id, a.dedup_group, a.cert_sha256, a.not_after, a.created_at, a.last_seen,
                (SELECT COUNT(*) FROM snapshots s WHERE s.agent = a.id AND s.forgotten_at IS NULL)
         FROM agents a ORDER BY a.id",
    )?;
    let rows = st.query_map([], |r| {
        Ok(AgentRow {
            id: r.get(0)?,
            dedup_group: r.get(1)?,
            cert_sha256: r.get(2)?,
            not_after: r.get(3)?,
            created_at: r.get(4)?,
            last_seen: r.get(5)?,
            snapshots: to_u64(r.get(6)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The agent (id, dedup group) whose current certificate has this fingerprint.
pub fn by_fingerprint(
    conn: &Connection,
    fp: &str,
) -> Result<Option<(String, String)>, CatalogError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, dedup_group FROM agents WHERE cert_sha256 = ?1 AND revoked_at IS NULL",
        )?
        .query_row([fp], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Records an admin certificate fingerprint.
pub fn insert_admin(conn: &Connection, fp: &str, now: i64) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT OR IGNORE INTO admins (cert_sha256, created_at) VALUES (?1, ?2)",
        params![fp, now],
    )?;
    Ok(())
}

/// Whether this fingerprint is an admin certificate's.
pub fn is_admin(conn: &Connection, fp: &str) -> Result<bool, CatalogError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM admins WHERE cert_sha256 = ?1")?
        .query_row([fp], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some())
}

/// Minimum interval between two `last_seen` writes for one agent (keeps calls cheap).
pub const LAST_SEEN_RESOLUTION_MS: i64 = 30_000;

/// Updates `last_seen` if it is older than [`LAST_SEEN_RESOLUTION_MS`].
pub fn touch(conn: &Connection, agent: &str, now: i64) -> Result<(), CatalogError> {
    conn.prepare_cached("UPDATE agents SET last_seen = ?2 WHERE id = ?1 AND last_seen < ?3")?
        .execute(params![agent, now, now - LAST_SEEN_RESOLUTION_MS])?;
    Ok(())
}

/// Records the version an agent announced on its control stream. A non-empty version also
/// marks the agent as one that keeps a control stream, so losing it is alerted on
/// (`fleet::alerts::Condition::Disconnected`).
pub fn set_version(
    conn: &Connection,
    agent: &str,
    version: &str,
    now: i64,
) -> Result<(), CatalogError> {
    conn.prepare_cached("UPDATE agents SET version = ?2, last_seen = ?3 WHERE id = ?1")?
        .execute(params![agent, version, now])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn agents_are_unique_and_found_by_fingerprint() {
        let cat = Catalog::open_in_memory().expect("open");
        cat.run_blocking(|c| {
            let a = AgentRow {
                id: "web-01".into(),
                dedup_group: "web".into(),
                cert_sha256: "aa".into(),
                not_after: 10,
                created_at: 1,
                last_seen: 0,
                snapshots: 0,
            };
            assert!(insert(c, &a)?);
            assert!(!insert(c, &a)?, "same id refused");
            assert_eq!(
                by_fingerprint(c, "aa")?,
                Some(("web-01".into(), "web".into()))
            );
            assert_eq!(by_fingerprint(c, "bb")?, None);
            touch(c, "web-01", 100_000)?;
            let l = list(c)?;
            assert_eq!(l.len(), 1);
            assert_eq!(l[0].last_seen, 100_000);
            insert_admin(c, "cc", 1)?;
            assert!(is_admin(c, "cc")?);
            assert!(!is_admin(c, "aa")?);
            Ok(())
        })
        .expect("ops");
    }
}
