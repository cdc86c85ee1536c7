//! Rebuild steps that read JSON objects: the registry, then snapshot records with their
//! reference segments (`snapshots` and their reference sets, [`crate::catalog::refsets`];
//! chunk rows are derived afterwards by [`super::chunks`]).
//!
//! Registry objects are few (one per fleet change) and are replayed together; records are read
//! [`RECORDS_PER_BATCH`] at a time, and each reference segment is read once and kept in the
//! `rb_segments` temporary table, so snapshots that share segments (most consecutive ones) cost
//! one record read each.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::ids::ChunkId;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::listing::{self, content_name};
use super::{BATCH, READS_IN_FLIGHT, RebuildError, Report};
use crate::catalog::snapshots::{self as snaps, SnapshotRow};
use crate::catalog::{Catalog, CatalogError, refsets};
use crate::record::{SnapshotRecord, record_key};
use crate::refset;
use crate::registry::replay::{Collected, Parsed, parse};
use crate::store::Store;

/// Snapshot records per batch (each may bring new segments to read).
pub const RECORDS_PER_BATCH: usize = 64;

/// Reads `keys` with at most [`READS_IN_FLIGHT`] in flight; a failed read is `Err(message)`.
async fn read_many(
    store: &Store,
    keys: Vec<String>,
    report: &mut Report,
) -> Result<Vec<(String, Result<Bytes, String>)>, RebuildError> {
    let limit = Arc::new(Semaphore::new(READS_IN_FLIGHT));
    let mut set = JoinSet::new();
    for key in keys {
        let (store, limit) = (store.clone(), limit.clone());
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let r = store.get(&key).await.map_err(|e| e.to_string());
            (key, r)
        });
    }
    let mut out = Vec::new();
    while let Some(j) = set.join_next().await {
        let (key, r) = j.map_err(|e| RebuildError::Task(e.to_string()))?;
        report.objects_read += 1;
        if let Ok(b) = &r {
            report.bytes_read += b.len() as u64;
        }
        out.push((key, r));
    }
    Ok(out)
}

/// Marks one page of listed objects in one transaction: recognized as `kind` with their BLAKE3,
/// or invalid (`None`).
async fn mark_page(
    catalog: &Catalog,
    kind: &'static str,
    marks: Vec<(String, Option<[u8; 32]>)>,
) -> Result<(), RebuildError> {
    catalog
        .run(move |c| {
            let tx = c.transaction()?;
            for (key, hash) in &marks {
                match hash {
                    Some(h) => listing::mark(&tx, key, kind, h)?,
                    None => listing::mark_invalid(&tx, key)?,
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok(())
}

/// Marks the key escrow envelopes (`keys/`) as recognized objects, after checking each header,
/// so the queue copies them to the region that lacks them like everything else: a rebuilt
/// controller whose new primary is empty still hands out (and re-replicates) the escrow.
pub async fn escrow(
    catalog: &Catalog,
    store: &Store,
    report: &mut Report,
) -> Result<(), RebuildError> {
    let mut after = None;
    loop {
        let page = listing::page(catalog, "keys/", after.clone(), BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        let keys = page.into_iter().map(|p| p.0).collect();
        let read = read_many(store, keys, report).await?;
        let marks: Vec<(String, Option<[u8; 32]>)> = read
            .into_iter()
            .map(|(key, r)| {
                let ok = r.and_then(|b| {
                    lifeboat_common::escrow::EnvelopeHeader::parse(&b)
                        .map(|_| *blake3::hash(&b).as_bytes())
                        .map_err(|e| e.to_string())
                });
                match ok {
                    Ok(h) => (key, Some(h)),
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "key escrow object skipped");
                        report.invalid_objects += 1;
                        (key, None)
                    }
                }
            })
            .collect();
        // The same queue kind `escrow::put` uses.
        mark_page(catalog, "record", marks).await?;
    }
    Ok(())
}

/// Reads and replays every `registry/` object, then inserts the fleet.
pub async fn registry(
    catalog: &Catalog,
    store: &Store,
    report: &mut Report,
) -> Result<(), RebuildError> {
    let mut collected = Collected::default();
    let mut after = None;
    loop {
        let page = listing::page(catalog, "registry/", after.clone(), BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        let keys = page.into_iter().map(|p| p.0).collect();
        let read = read_many(store, keys, report).await?;
        let mut marks: Vec<(String, Option<[u8; 32]>)> = Vec::new();
        for (key, r) in read {
            let parsed = r.and_then(|b| parse(&key, &b).map(|p| (p, b)));
            match parsed {
                Ok((Parsed::Other, _)) => {}
                Ok((p, b)) => {
                    collected.add(&key, p);
                    marks.push((key, Some(*blake3::hash(&b).as_bytes())));
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "registry object skipped");
                    report.invalid_objects += 1;
                    marks.push((key, None));
                }
            }
        }
        mark_page(catalog, "registry", marks).await?;
    }
    let fleet = collected.replay();
    let applied = catalog
        .run(move |c| {
            let tx = c.transaction()?;
            let a = fleet.apply(&tx)?;
            tx.commit()?;
            Ok(a)
        })
        .await?;
    report.agents = applied.agents;
    report.revoked_agents = applied.revoked_agents;
    report.admins = applied.admins;
    report.grants = applied.grants;
    Ok(())
}

/// A record that parsed and matches its key.
struct Parsed1 {
    key: String,
    record: SnapshotRecord,
    manifest: Vec<ChunkId>,
    hash: [u8; 32],
}

fn parse_record(key: &str, bytes: &[u8]) -> Result<Parsed1, String> {
    let record = SnapshotRecord::from_bytes(bytes).map_err(|e| e.to_string())?;
    if record_key(&record.agent, &record.id) != key {
        return Err(format!(
            "names agent {} and snapshot {}, not its key",
            record.agent, record.id
        ));
    }
    let manifest = record
        .manifest_ids
        .iter()
        .map(|h| {
            h.parse::<ChunkId>()
                .map_err(|e| format!("manifest id {h:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(bad) = record
        .ref_segments
        .iter()
        .find(|k| content_name(k).map(|n| n.0) != Some("refs"))
    {
        return Err(format!("reference segment key {bad:?} is malformed"));
    }
    Ok(Parsed1 {
        key: key.to_owned(),
        manifest,
        hash: *blake3::hash(bytes).as_bytes(),
        record,
    })
}

/// Segments of `records` not yet in `rb_segments` and not known bad.
fn unread_segments(c: &Connection, records: &[Parsed1]) -> Result<Vec<String>, CatalogError> {
    let mut out = HashSet::new();
    let mut st = c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM rb_segments WHERE key = ?1)
             OR EXISTS (SELECT 1 FROM rb_objects WHERE region = 0 AND key = ?1 AND kind = 'invalid')",
    )?;
    for r in records {
        for k in &r.record.ref_segments {
            if !st.query_row([k], |x| x.get::<_, bool>(0))? {
                out.insert(k.clone());
            }
        }
    }
    Ok(out.into_iter().collect())
}

fn store_segments(
    c: &mut Connection,
    read: &[(String, Result<Bytes, String>)],
) -> Result<u64, CatalogError> {
    let tx = c.transaction()?;
    let mut invalid = 0;
    for (key, r) in read {
        let decoded = r.as_ref().map_err(|e| e.clone()).and_then(|b| {
            let name = content_name(key).map(|n| n.1);
            if name != Some(*blake3::hash(b).as_bytes()) {
                return Err("content does not match its name".to_owned());
            }
            refset::decode(b).map_err(|e| e.to_string())
        });
        match decoded {
            Ok(ids) => {
                let mut st = tx.prepare_cached(
                    "INSERT OR IGNORE INTO rb_segments (key, chunk_id) VALUES (?1, ?2)",
                )?;
                for id in ids {
                    st.execute(params![key, &id.0[..]])?;
                }
            }
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "reference segment unreadable");
                if listing::source_size(&tx, key)?.is_some() {
                    listing::mark_invalid(&tx, key)?;
                    invalid += 1;
                } else {
                    tx.execute(
                        "INSERT OR IGNORE INTO rb_objects (region, key, size, modified, kind)
                         VALUES (0, ?1, 0, 0, 'invalid')",
                        [key],
                    )?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(invalid)
}

/// Ensures the snapshot's agent exists; `Some(agent)` when a placeholder was created.
fn ensure_agent(c: &Connection, agent: &str, now: i64) -> Result<Option<String>, CatalogError> {
    let n = c.execute(
        "INSERT OR IGNORE INTO agents (id, dedup_group, cert_sha256, not_after, created_at, revoked_at)
         VALUES (?1, ?1, 'unregistered:' || ?1, 0, ?2, ?2)",
        params![agent, now],
    )?;
    Ok((n == 1).then(|| agent.to_owned()))
}

/// Inserts one snapshot and its refs (chunk rows come later, [`super::chunks`]). References
/// hidden by unreadable segments are counted into `missing_refs` now.
fn insert_snapshot(c: &Connection, p: &Parsed1) -> Result<(), CatalogError> {
    let r = &p.record;
    let row = SnapshotRow {
        id: r.id.clone(),
        agent: r.agent.clone(),
        source: r.source.clone(),
        session_id: "rebuilt".into(),
        started_at: r.started_at_unix_ms,
        finished_at: r.finished_at_unix_ms,
        committed_at: r.committed_at_unix_ms,
        stats: r.stats,
        stored_bytes: r.stored_bytes,
        manifest_ids: p.manifest.clone(),
        reference_count: r.reference_count,
        record_key: p.key.clone(),
    };
    let mut ids: Vec<ChunkId> = Vec::new();
    let mut st = c.prepare_cached("SELECT chunk_id FROM rb_segments WHERE key = ?1")?;
    for k in &r.ref_segments {
        refsets::push_ids(&mut st, [k], &format!("segment {k}"), &mut ids)?;
    }
    ids.sort_unstable();
    ids.dedup();
    snaps::insert_in(c, &row, &ids)?;
    let unread = r.reference_count.saturating_sub(ids.len() as u64);
    if unread > 0 {
        c.execute(
            "UPDATE snapshots SET missing_refs = ?2 WHERE id = ?1",
            params![r.id, crate::catalog::to_i64(unread)],
        )?;
    }
    // The segments now; the packs once chunk rows exist ([`super::chunks`]).
    let mut dep = c.prepare_cached(
        "INSERT OR IGNORE INTO replication_deps (record_key, dep_key) VALUES (?1, ?2)",
    )?;
    for k in &r.ref_segments {
        dep.execute(params![p.key, k])?;
    }
    listing::mark(c, &p.key, "record", &p.hash)?;
    Ok(())
}

/// What one batch of records added.
#[derive(Default)]
struct BatchOutcome {
    snapshots: u64,
    placeholders: Vec<String>,
    invalid: u64,
}

fn insert_batch(c: &mut Connection, records: &[Parsed1]) -> Result<BatchOutcome, CatalogError> {
    let now = now_unix_ms();
    let tx = c.transaction()?;
    let mut out = BatchOutcome::default();
    for p in records {
        if let Some(a) = ensure_agent(&tx, &p.record.agent, now)? {
            tracing::warn!(agent = %a, "snapshots of an agent with no registry objects: recreated revoked");
            out.placeholders.push(a);
        }
        let exists = tx
            .query_row(
                "SELECT 1 FROM snapshots WHERE id = ?1",
                [&p.record.id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if exists {
            tracing::warn!(key = %p.key, "snapshot id seen twice; later record skipped");
            listing::mark_invalid(&tx, &p.key)?;
            out.invalid += 1;
            continue;
        }
        insert_snapshot(&tx, p)?;
        out.snapshots += 1;
    }
    tx.commit()?;
    Ok(out)
}

/// Reads every snapshot record and its segments into the catalog.
pub async fn read_all(
    catalog: &Catalog,
    store: &Store,
    report: &mut Report,
) -> Result<(), RebuildError> {
    let mut after = None;
    loop {
        let page = listing::page(catalog, "snapshots/", after.clone(), RECORDS_PER_BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        let read = read_many(store, page.into_iter().map(|p| p.0).collect(), report).await?;
        let mut records = Vec::new();
        let mut bad = Vec::new();
        for (key, r) in read {
            match r.and_then(|b| parse_record(&key, &b)) {
                Ok(p) => records.push(p),
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "snapshot record skipped");
                    bad.push(key);
                }
            }
        }
        records.sort_by(|a, b| a.key.cmp(&b.key));
        let records = Arc::new(records);
        let r2 = records.clone();
        let segs = catalog.run(move |c| unread_segments(c, &r2)).await?;
        let segs = read_many(store, segs, report).await?;
        report.invalid_objects += catalog.run(move |c| store_segments(c, &segs)).await?;
        let r2 = records.clone();
        let out = catalog
            .run(move |c| {
                for k in &bad {
                    listing::mark_invalid(c, k)?;
                }
                let mut out = insert_batch(c, &r2)?;
                out.invalid += bad.len() as u64;
                Ok(out)
            })
            .await?;
        report.snapshots += out.snapshots;
        report.placeholder_agents.extend(out.placeholders);
        report.invalid_objects += out.invalid;
    }
    Ok(())
}
