//! The last *alerted* state of each (agent, source, condition) (schema v7, `alert_state`).
//!
//! Written by the alert worker right where it logs the alert
//! ([`crate::fleet::alert_worker`]), read back at start-up: a restarted controller compares
//! fresh assessments with these rows, so it neither repeats an alert nor invents a recovery.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use super::CatalogError;
use crate::fleet::alerts::{Condition, Key};

/// The stored name of a condition. Do not change: rows of older controllers use them.
pub fn condition_name(c: Condition) -> &'static str {
    match c {
        Condition::RpoBreached => "rpo_breached",
        Condition::ReplicatedRpoBreached => "replicated_rpo_breached",
        Condition::BackupFailing => "backup_failing",
        Condition::Disconnected => "disconnected",
    }
}

fn parse_condition(s: &str) -> Option<Condition> {
    match s {
        "rpo_breached" => Some(Condition::RpoBreached),
        "replicated_rpo_breached" => Some(Condition::ReplicatedRpoBreached),
        "backup_failing" => Some(Condition::BackupFailing),
        "disconnected" => Some(Condition::Disconnected),
        _ => None,
    }
}

/// Every stored state (rows naming an unknown condition, from a newer controller, are skipped).
pub fn load(conn: &Connection) -> Result<BTreeMap<Key, bool>, CatalogError> {
    let mut st = conn.prepare_cached("SELECT agent, source, condition, firing FROM alert_state")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, bool>(3)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (agent, source, cond, firing) = row?;
        if let Some(c) = parse_condition(&cond) {
            out.insert((agent, source, c), firing);
        }
    }
    Ok(out)
}

/// Makes the table equal to `next` (one transaction): changed rows get `now` as `changed_at`,
/// keys absent from `next` are removed.
pub fn store(
    conn: &mut Connection,
    next: &BTreeMap<Key, bool>,
    now: i64,
) -> Result<(), CatalogError> {
    let tx = conn.transaction()?;
    let current = load(&tx)?;
    for key in current.keys().filter(|k| !next.contains_key(*k)) {
        tx.execute(
            "DELETE FROM alert_state WHERE agent = ?1 AND source = ?2 AND condition = ?3",
            params![key.0, key.1, condition_name(key.2)],
        )?;
    }
    for (key, firing) in next {
        if current.get(key) == Some(firing) {
            continue;
        }
        tx.execute(
            "INSERT INTO alert_state (agent, source, condition, firing, changed_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (agent, source, condition)
             DO UPDATE SET firing = excluded.firing, changed_at = excluded.changed_at",
            params![key.0, key.1, condition_name(key.2), firing, now],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn store_replaces_and_load_reads_back() {
        let cat = Catalog::open_in_memory().expect("open");
        let k = |s: &str, c| ("a".to_owned(), s.to_owned(), c);
        let first = BTreeMap::from([
            (k("db", Condition::RpoBreached), true),
            (k("web", Condition::BackupFailing), false),
        ]);
        cat.run_blocking(|c| store(c, &first, 1)).expect("store");
        assert_eq!(cat.run_blocking(|c| load(c)).expect("load"), first);
        let second = BTreeMap::from([(k("db", Condition::RpoBreached), false)]);
        cat.run_blocking(|c| store(c, &second, 2)).expect("store");
        assert_eq!(cat.run_blocking(|c| load(c)).expect("load"), second);
    }
}
