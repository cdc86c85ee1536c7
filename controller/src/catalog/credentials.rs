//! Agent certificates over time: which fingerprint is current, revocation and renewal.
//!
//! An agent row names one current certificate (`cert_sha256`) and, after a renewal, the previous
//! one (`prev_cert_sha256`) which stays valid until `prev_valid_until` or until the new one is
//! first used ([`resolve`] then forgets it). A revoked agent (`revoked_at` set) matches no
//! fingerprint at all; every fingerprint it had is kept in `revoked_certs` for audit.

use rusqlite::{Connection, OptionalExtension, params};

use super::CatalogError;

/// The agent a fingerprint currently authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub id: String,
    pub group: String,
    /// The certificate's recorded expiry (Unix ms).
    pub not_after: i64,
}

/// Resolves a fingerprint at `now`: the current certificate, or the previous one within its
/// overlap. Using the current certificate ends the overlap.
pub fn resolve(conn: &Connection, fp: &str, now: i64) -> Result<Option<Current>, CatalogError> {
    let found = conn
        .prepare_cached(
            "SELECT id, dedup_group, not_after, cert_sha256 = ?1 FROM agents
             WHERE revoked_at IS NULL
               AND (cert_sha256 = ?1 OR (prev_cert_sha256 = ?1 AND prev_valid_until > ?2))",
        )?
        .query_row(params![fp, now], |r| {
            Ok((
                Current {
                    id: r.get(0)?,
                    group: r.get(1)?,
                    not_after: r.get(2)?,
                },
                r.get::<_, bool>(3)?,
            ))
        })
        .optional()?;
    let Some((cur, is_current)) = found else {
        return Ok(None);
    };
    if is_current {
        conn.prepare_cached(
            "UPDATE agents SET prev_cert_sha256 = NULL, prev_valid_until = 0
             WHERE id = ?1 AND prev_cert_sha256 IS NOT NULL",
        )?
        .execute([&cur.id])?;
    }
    Ok(Some(cur))
}

/// Revokes an agent: returns the fingerprints revoked, or `None` if there is no such agent.
pub fn revoke(
    conn: &mut Connection,
    agent: &str,
    now: i64,
) -> Result<Option<Vec<String>>, CatalogError> {
    let tx = conn.transaction()?;
    let fps: Option<(String, Option<String>)> = tx
        .query_row(
            "SELECT cert_sha256, prev_cert_sha256 FROM agents WHERE id = ?1",
            [agent],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((cur, prev)) = fps else {
        return Ok(None);
    };
    let fps: Vec<String> = std::iter::once(cur).chain(prev).collect();
    for fp in &fps {
        tx.execute(
            "INSERT OR IGNORE INTO revoked_certs (cert_sha256, agent, revoked_at) VALUES (?1, ?2, ?3)",
            params![fp, agent, now],
        )?;
    }
    tx.execute(
        "UPDATE agents SET revoked_at = ?2, prev_cert_sha256 = NULL, prev_valid_until = 0
         WHERE id = ?1",
        params![agent, now],
    )?;
    tx.commit()?;
    Ok(Some(fps))
}

/// Every revoked agent with the time it was revoked (unix ms), for `agent list`.
pub fn revoked_agents(
    conn: &Connection,
) -> Result<std::collections::HashMap<String, i64>, CatalogError> {
    let mut st =
        conn.prepare_cached("SELECT id, revoked_at FROM agents WHERE revoked_at IS NOT NULL")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether the agent is revoked.
pub fn is_revoked(conn: &Connection, agent: &str) -> Result<bool, CatalogError> {
    Ok(conn
        .prepare_cached("SELECT revoked_at IS NOT NULL FROM agents WHERE id = ?1")?
        .query_row([agent], |r| r.get::<_, bool>(0))
        .optional()?
        .unwrap_or(true))
}

/// Installs a renewed certificate; the old one stays valid until `overlap_until`.
pub fn renew(
    conn: &Connection,
    agent: &str,
    new_fp: &str,
    not_after: i64,
    overlap_until: i64,
) -> Result<(), CatalogError> {
    conn.execute(
        "UPDATE agents SET prev_cert_sha256 = cert_sha256, prev_valid_until = ?4,
                           cert_sha256 = ?2, not_after = ?3
         WHERE id = ?1 AND revoked_at IS NULL",
        params![agent, new_fp, not_after, overlap_until],
    )?;
    Ok(())
}

/// Replaces an existing agent's certificate on re-enrollment with a token that names it
/// (an agent offline past its expiry): keeps its id, group and history, clears a revocation.
pub fn reenroll(
    conn: &Connection,
    agent: &str,
    new_fp: &str,
    not_after: i64,
) -> Result<bool, CatalogError> {
    let n = conn.execute(
        "UPDATE agents SET cert_sha256 = ?2, not_after = ?3, revoked_at = NULL,
                           prev_cert_sha256 = NULL, prev_valid_until = 0
         WHERE id = ?1",
        params![agent, new_fp, not_after],
    )?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::catalog::agents::{AgentRow, insert};

    #[test]
    fn renewal_overlap_and_revocation() {
        let cat = Catalog::open_in_memory().expect("open");
        cat.run_blocking(|c| {
            insert(
                c,
                &AgentRow {
                    id: "web-01".into(),
                    dedup_group: "web-01".into(),
                    cert_sha256: "old".into(),
                    not_after: 1000,
                    created_at: 0,
                    last_seen: 0,
                    snapshots: 0,
                },
            )?;
            assert_eq!(resolve(c, "old", 10)?.map(|a| a.id), Some("web-01".into()));
            renew(c, "web-01", "new", 2000, 50)?;
            assert!(resolve(c, "old", 10)?.is_some(), "old valid in the overlap");
            assert!(resolve(c, "old", 50)?.is_none(), "overlap over");
            assert_eq!(resolve(c, "new", 20)?.map(|a| a.not_after), Some(2000));
            assert!(
                resolve(c, "old", 21)?.is_none(),
                "new one used: old forgotten"
            );
            assert_eq!(revoke(c, "web-01", 30)?, Some(vec!["new".to_owned()]));
            assert_eq!(revoke(c, "nobody", 30)?, None);
            assert!(resolve(c, "new", 31)?.is_none());
            assert!(is_revoked(c, "web-01")?);
            assert!(reenroll(c, "web-01", "third", 3000)?);
            assert!(resolve(c, "third", 40)?.is_some());
            Ok(())
        })
        .expect("ops");
    }
}
