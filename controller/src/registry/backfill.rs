//! Start-up backfill: objects the catalog knows about but never queued for the secondary.
//!
//! - Registry: admins, agents, restore grants and revocations recorded before registry objects
//!   existed (or by `lifeboat-controller init`, which has no store at hand), and a revocation
//!   whose object could not be written when it happened (the catalog revokes first, see
//!   [`crate::enrollment::revoke`]). Each object's key is a function of the catalog row, and the
//!   replication queue row is the marker that it was written, so a rerun writes nothing new.
//! - Snapshots committed before catalog migration 3 (no queue row for their record): their
//!   reference segments and record are queued, the record waiting on its dependencies.
//!
//! Failures are logged and counted, never fatal: the controller serves without them and the
//! next start retries. Cost: one catalog query per kind, plus one put per missing object.

use rusqlite::{Connection, OptionalExtension};

use super::{Change, Pending, revocation};
use crate::catalog::{CatalogError, to_u64};
use crate::refset;
use crate::replication::queue::{self, Kind, NewObject};
use crate::service::State;

/// What a backfill did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backfilled {
    pub registry_written: u64,
    pub snapshots_queued: u64,
    pub failed: u64,
}

fn queued(conn: &Connection, key: &str) -> Result<bool, CatalogError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM replication_queue WHERE key = ?1 AND op = 'copy'")?
        .query_row([key], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The registry objects the catalog's rows imply that were never queued.
pub fn missing_registry(conn: &Connection) -> Result<Vec<Pending>, CatalogError> {
    let mut out = Vec::new();
    let mut st = conn.prepare("SELECT cert_sha256, created_at FROM admins ORDER BY cert_sha256")?;
    for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
        let (fp, at) = r?;
        out.push(Pending::admin(&fp, at));
    }
    let mut st = conn.prepare(
        "SELECT a.id, a.dedup_group, a.cert_sha256, a.not_after, a.created_at FROM agents a
         WHERE NOT EXISTS (SELECT 1 FROM replication_queue q
             WHERE q.op = 'copy' AND q.key >= 'registry/agents/' || a.id || '/'
               AND q.key < 'registry/agents/' || a.id || '0')",
    )?;
    for r in st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get(3)?,
            r.get(4)?,
        ))
    })? {
        let (id, group, fp, not_after, at) = r?;
        let change = Change::Added {
            group,
            cert_sha256: fp,
            not_after_unix_ms: not_after,
        };
        out.push(Pending::agent(&id, at, change));
    }
    let mut st = conn.prepare("SELECT agent, from_agent, created_at FROM restore_grants")?;
    for r in st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
    })? {
        let (a, f, at) = r?;
        out.push(Pending::grant(&a, &f, at));
    }
    let mut st = conn.prepare(
        "SELECT agent, revoked_at, cert_sha256 FROM revoked_certs ORDER BY agent, revoked_at",
    )?;
    let mut groups: Vec<(String, i64, Vec<String>)> = Vec::new();
    for r in st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get(2)?))
    })? {
        let (agent, at, fp) = r?;
        match groups.last_mut() {
            Some((a, t, fps)) if *a == agent && *t == at => fps.push(fp),
            _ => groups.push((agent, at, vec![fp])),
        }
    }
    out.extend(
        groups
            .into_iter()
            .map(|(agent, at, fps)| revocation(&agent, at, fps)),
    );
    let mut missing = Vec::new();
    for p in out {
        if !queued(conn, &p.key)? {
            missing.push(p);
        }
    }
    Ok(missing)
}

/// Snapshots whose record has no queue row: (id, record key, group).
fn unqueued_snapshots(conn: &Connection) -> Result<Vec<(String, String, String)>, CatalogError> {
    let mut st = conn.prepare(
        "SELECT s.id, s.record_key, a.dedup_group FROM snapshots s JOIN agents a ON a.id = s.agent
         WHERE NOT EXISTS (SELECT 1 FROM replication_queue q
             WHERE q.key = s.record_key AND q.op = 'copy')
         ORDER BY s.committed_at",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Runs both backfills against `state`'s catalog and primary store.
pub async fn run(state: &State) -> Result<Backfilled, CatalogError> {
    let mut out = Backfilled::default();
    let missing = state.catalog.run(|c| missing_registry(c)).await?;
    for p in missing {
        match p.put(&state.store, state.store_deadline).await {
            Ok(()) => {
                let now = lifeboat_common::clock::now_unix_ms();
                state.catalog.run(move |c| p.enqueue(c, now)).await?;
                out.registry_written += 1;
            }
            Err(e) => {
                tracing::warn!(key = %p.key, error = %e, "registry object not written; retried at the next start");
                out.failed += 1;
            }
        }
    }
    let snaps = state.catalog.run(|c| unqueued_snapshots(c)).await?;
    for (id, record_key, group) in snaps {
        let record = match state.store.get(&record_key).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(snapshot = %id, key = %record_key, error = %e, "snapshot record not queued: cannot read it");
                out.failed += 1;
                continue;
            }
        };
        let now = lifeboat_common::clock::now_unix_ms();
        state
            .catalog
            .run(move |c| queue_snapshot(c, &id, &record_key, &group, &record, now))
            .await?;
        out.snapshots_queued += 1;
    }
    if out != Backfilled::default() {
        tracing::info!(
            registry = out.registry_written,
            snapshots = out.snapshots_queued,
            failed = out.failed,
            "start-up backfill queued objects for the secondary"
        );
    }
    Ok(out)
}

fn queue_snapshot(
    c: &mut Connection,
    id: &str,
    record_key: &str,
    group: &str,
    record: &[u8],
    now: i64,
) -> Result<(), CatalogError> {
    let refs = crate::catalog::refsets::refs_of(c, id)?;
    let segments = refset::segments(&refs);
    let tx = c.transaction()?;
    let mut deps = Vec::new();
    for s in &segments {
        let obj = NewObject {
            key: s.key.clone(),
            kind: Kind::Refs,
            size: s.bytes.len() as u64,
            blake3: *blake3::hash(&s.bytes).as_bytes(),
        };
        queue::enqueue(&tx, &obj, now)?;
        deps.push(s.key.clone());
    }
    let obj = NewObject {
        key: record_key.to_owned(),
        kind: Kind::Record,
        size: to_u64(record.len() as i64),
        blake3: *blake3::hash(record).as_bytes(),
    };
    queue::enqueue(&tx, &obj, now)?;
    queue::add_record_deps(&tx, record_key, &deps, id, group)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, agents, credentials};

    #[test]
    fn missing_registry_is_derived_from_rows_and_idempotent() {
        let cat = Catalog::open_in_memory().expect("open");
        let missing = cat
            .run_blocking(|c| {
                agents::insert_admin(c, "ad", 1)?;
                for (id, fp) in [("a", "fa"), ("b", "fb")] {
                    agents::insert(
                        c,
                        &agents::AgentRow {
                            id: id.into(),
                            dedup_group: id.into(),
                            cert_sha256: fp.into(),
                            not_after: 9,
                            created_at: 2,
                            last_seen: 0,
                            snapshots: 0,
                        },
                    )?;
                }
                crate::catalog::grants::insert(c, "b", "a", 3)?;
                credentials::revoke(c, "a", 4)?;
                missing_registry(c)
            })
            .expect("missing");
        let keys: Vec<&str> = missing.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys.len(),
            5,
            "admin, two agents, grant, revocation: {keys:?}"
        );
        assert!(keys.contains(&"registry/admins/ad.json"));
        assert!(keys.contains(&revocation("a", 4, vec!["fa".into()]).key.as_str()));
        let again = cat
            .run_blocking(|c| {
                for p in &missing {
                    p.enqueue(c, 5)?;
                }
                missing_registry(c)
            })
            .expect("again");
        assert!(again.is_empty(), "queued objects are not written twice");
    }

    #[test]
    fn snapshots_without_queue_rows_are_queued_once() {
        use crate::catalog::snapshots::{SnapshotRow, insert};
        use lifeboat_common::ids::ChunkId;
        let cat = Catalog::open_in_memory().expect("open");
        let refs = vec![ChunkId([1; 32]), ChunkId([2; 32])];
        let queued_keys = cat
            .run_blocking(|c| {
                agents::insert(
                    c,
                    &agents::AgentRow {
                        id: "a".into(),
                        dedup_group: "g".into(),
                        cert_sha256: "fa".into(),
                        not_after: 9,
                        created_at: 2,
                        last_seen: 0,
                        snapshots: 0,
                    },
                )?;
                let row = SnapshotRow {
                    reference_count: 2,
                    ..SnapshotRow::sample("00000000000000000001", "a", "web", 1)
                };
                insert(c, &row, &refs)?;
                let todo = unqueued_snapshots(c)?;
                assert_eq!(todo.len(), 1);
                let (id, key, group) = &todo[0];
                assert_eq!(group, "g");
                queue_snapshot(c, id, key, group, b"{}", 5)?;
                assert!(unqueued_snapshots(c)?.is_empty(), "idempotent");
                let mut st = c.prepare("SELECT key, kind FROM replication_queue ORDER BY key")?;
                let rows = st
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .expect("backfill");
        let seg = refset::segments(&refs);
        assert_eq!(queued_keys.len(), 1 + seg.len(), "{queued_keys:?}");
        assert!(queued_keys.contains(&(seg[0].key.clone(), "refs".to_owned())));
        assert!(queued_keys.contains(&(
            "snapshots/a/00000000000000000001".to_owned(),
            "record".to_owned()
        )));
    }
}
