//! Failed backups reported by agents (`ReportFailure`).
//!
//! A failed backup commits nothing: it is only a row here, so `lifeboatctl snapshots list` can
//! show that a scheduled backup did not happen and why. Rows hold the agent's reason text (never
//! data), truncated to [`MAX_REASON_LEN`] bytes by the service.

use rusqlite::{Connection, params};

use super::CatalogError;

/// Longest reason kept, in bytes.
pub const MAX_REASON_LEN: usize = 4096;

/// One failed backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRow {
    pub id: String,
    pub agent: String,
    pub source: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub reported_at: i64,
    pub reason: String,
}

pub fn insert(conn: &Connection, f: &FailureRow) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT INTO backup_failures (id, agent, source, started_at, finished_at, reported_at, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            f.id,
            f.agent,
            f.source,
            f.started_at,
            f.finished_at,
            f.reported_at,
            f.reason
        ],
    )?;
    Ok(())
}

/// Failures, oldest first, optionally of one agent and/or one source.
pub fn list(
    conn: &Connection,
    agent: Option<&str>,
    source: Option<&str>,
) -> Result<Vec<FailureRow>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT id, agent, source, started_at, finished_at, reported_at, reason FROM backup_failures
         WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR source = ?2) ORDER BY reported_at, id",
    )?;
    let rows = st.query_map(params![agent, source], |r| {
        Ok(FailureRow {
            id: r.get(0)?,
            agent: r.get(1)?,
            source: r.get(2)?,
            started_at: r.get(3)?,
            finished_at: r.get(4)?,
            reported_at: r.get(5)?,
            reason: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Cuts `reason` to at most [`MAX_REASON_LEN`] bytes on a character boundary.
pub fn truncate_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_LEN {
        return reason.to_owned();
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, agents};

    #[test]
    fn insert_and_list_failures() {
        let cat = Catalog::open_in_memory().expect("open");
        cat.run_blocking(|c| {
            agents::insert(
                c,
                &agents::AgentRow {
                    id: "a".into(),
                    dedup_group: "a".into(),
                    cert_sha256: "fa".into(),
                    not_after: 0,
                    created_at: 0,
                    last_seen: 0,
                    snapshots: 0,
                },
            )?;
            for (i, src) in ["db", "web"].iter().enumerate() {
                insert(
                    c,
                    &FailureRow {
                        id: format!("f{i}"),
                        agent: "a".into(),
                        source: (*src).into(),
                        started_at: 1,
                        finished_at: 2,
                        reported_at: 3 + i as i64,
                        reason: "dump has no trailer".into(),
                    },
                )?;
            }
            assert_eq!(list(c, Some("a"), None)?.len(), 2);
            let db = list(c, None, Some("db"))?;
            assert_eq!(db.len(), 1);
            assert_eq!(db[0].reason, "dump has no trailer");
            assert!(list(c, Some("b"), None)?.is_empty());
            Ok(())
        })
        .expect("ops");
        let long = "é".repeat(MAX_REASON_LEN);
        assert!(truncate_reason(&long).len() <= MAX_REASON_LEN + 3);
    }
}
