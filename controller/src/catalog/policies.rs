//! Stored backup policies, one row per (scope, source) (schema v7, `policies`).
//!
//! A scope is `default`, `group:<name>` or `agent:<id>`; `source = ''` applies to every source of
//! the scope. A `NULL` field is unset and inherits from the next scope
//! ([`crate::fleet::policy`] resolves them). Rows are replaced whole: the service merges a
//! change into the current row first, so the stored row is always the full current policy of
//! its (scope, source) — which is also what the registry event records.

use rusqlite::{Connection, Row, params};

use super::CatalogError;

/// One stored policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyRow {
    pub scope: String,
    pub source: String,
    pub schedule: Option<String>,
    pub rpo_ms: Option<i64>,
    pub bandwidth: Option<i64>,
    pub nice: Option<i32>,
    pub updated_at: i64,
}

impl PolicyRow {
    /// Overlays the fields `other` sets onto `self` (the merge of a `policy set`).
    pub fn merged_with(&self, other: &PolicyRow) -> PolicyRow {
        PolicyRow {
            scope: other.scope.clone(),
            source: other.source.clone(),
            schedule: other.schedule.clone().or_else(|| self.schedule.clone()),
            rpo_ms: other.rpo_ms.or(self.rpo_ms),
            bandwidth: other.bandwidth.or(self.bandwidth),
            nice: other.nice.or(self.nice),
            updated_at: other.updated_at,
        }
    }
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<PolicyRow> {
    Ok(PolicyRow {
        scope: r.get(0)?,
        source: r.get(1)?,
        schedule: r.get(2)?,
        rpo_ms: r.get(3)?,
        bandwidth: r.get(4)?,
        nice: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

/// Inserts or replaces the row of `(p.scope, p.source)`.
pub fn upsert(conn: &Connection, p: &PolicyRow) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT INTO policies (scope, source, schedule, rpo_ms, bandwidth, nice, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (scope, source) DO UPDATE SET schedule = excluded.schedule,
             rpo_ms = excluded.rpo_ms, bandwidth = excluded.bandwidth, nice = excluded.nice,
             updated_at = excluded.updated_at",
        params![
            p.scope,
            p.source,
            p.schedule,
            p.rpo_ms,
            p.bandwidth,
            p.nice,
            p.updated_at
        ],
    )?;
    Ok(())
}

/// Like [`upsert`], but keeps a newer stored row (registry replay: the latest event wins).
pub fn upsert_if_newer(conn: &Connection, p: &PolicyRow) -> Result<bool, CatalogError> {
    let n = conn.execute(
        "INSERT INTO policies (scope, source, schedule, rpo_ms, bandwidth, nice, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (scope, source) DO UPDATE SET schedule = excluded.schedule,
             rpo_ms = excluded.rpo_ms, bandwidth = excluded.bandwidth, nice = excluded.nice,
             updated_at = excluded.updated_at
         WHERE excluded.updated_at >= policies.updated_at",
        params![
            p.scope,
            p.source,
            p.schedule,
            p.rpo_ms,
            p.bandwidth,
            p.nice,
            p.updated_at
        ],
    )?;
    Ok(n > 0)
}

/// Every stored policy, by scope then source.
pub fn list(conn: &Connection) -> Result<Vec<PolicyRow>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT scope, source, schedule, rpo_ms, bandwidth, nice, updated_at FROM policies
         ORDER BY scope, source",
    )?;
    let rows = st.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The row of `(scope, source)`, if any.
pub fn get(
    conn: &Connection,
    scope: &str,
    source: &str,
) -> Result<Option<PolicyRow>, CatalogError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .prepare_cached(
            "SELECT scope, source, schedule, rpo_ms, bandwidth, nice, updated_at FROM policies
             WHERE scope = ?1 AND source = ?2",
        )?
        .query_row(params![scope, source], from_row)
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn upsert_merges_and_replay_keeps_the_newest() {
        let cat = Catalog::open_in_memory().expect("open");
        cat.run_blocking(|c| {
            let a = PolicyRow {
                scope: "default".into(),
                rpo_ms: Some(900_000),
                updated_at: 10,
                ..Default::default()
            };
            upsert(c, &a)?;
            let b = PolicyRow {
                scope: "default".into(),
                schedule: Some("every 5m".into()),
                updated_at: 20,
                ..Default::default()
            };
            let merged = a.merged_with(&b);
            upsert(c, &merged)?;
            let got = get(c, "default", "")?.expect("row");
            assert_eq!(got.rpo_ms, Some(900_000), "merge keeps unset fields");
            assert_eq!(got.schedule.as_deref(), Some("every 5m"));
            assert!(!upsert_if_newer(c, &a)?, "an older event does not win");
            assert_eq!(get(c, "default", "")?.expect("row").updated_at, 20);
            assert_eq!(list(c)?.len(), 1);
            Ok(())
        })
        .expect("ops");
    }
}
