//! Repack: rewrite packs that are mostly dead, so the bytes of swept chunks come back even when a
//! pack still holds a live one.
//!
//! A pack whose live blob bytes (chunk rows not condemned) fall below
//! [`RepackSettings::min_live_percent`] of its blob area is a candidate; candidates are taken
//! emptiest first until [`RepackSettings::budget`] (bytes read plus bytes written in this run) is
//! spent, the rest waits for the next run. Per candidate:
//!
//! 1. read the live blobs (ranged GETs, nearby blobs coalesced), verify each BLAKE3 against its
//!    chunk row, and append them to a new pack of the same dedup group (a pack that fails to
//!    read or verify is skipped and logged; nothing about it changes);
//! 2. when the new pack is full (or at the end), put it under the key's writer guard
//!    ([`super::guard`]) and, in **one transaction** ([`switch`]): record the new pack, move each
//!    chunk row from the old pack to the new one *only if it still points at the old pack with
//!    the same length and hash*, queue the new pack for the secondary, make records still waiting
//!    for the old pack wait for the new one too, and tombstone every old pack left without a row;
//! 3. the tombstones are deleted by [`super::sweep::finish`] like any other: primary now,
//!    secondary after `[secondary] delete_delay`, which also waits for the new pack's copy
//!    ([`crate::replication::deletes::due`]), so the secondary never holds neither.
//!
//! Packs with no chunk row at all (a rebuilt catalog picked the other copy of their chunks; a
//! pack whose every chunk another upload won) older than the cutoff are tombstoned without I/O.
//! Condemned rows are not copied: they stay in the old pack, which the sweep deletes once they
//! are gone.
//!
//! **Readers.** The object of a live chunk may change under a reader between the catalog lookup
//! and the GET. The restore path ([`crate::service::reads`]) looks the chunk up again when its
//! pack is not found, and reads it from where it now is; the old pack is deleted only after the
//! switch committed, so one of the two reads sees the blob. HaveChunks, uploads and commits
//! work on chunk rows (group, id), which a switch keeps. Repack runs inside a GC run
//! ([`super::RUN_LOCK`]), so no sweep or condemn moves under it.

use std::ops::Range;

use lifeboat_common::ids::{CHUNK_ID_LEN, ChunkId};
use rusqlite::{Connection, params};

use super::sweep::{snapshots_seen, tombstone};
use crate::catalog::{Catalog, CatalogError, to_i64, to_u64};
use crate::pack::{ENTRY_LEN, PackBuilder, SealedPack, TRAILER_LEN};
use crate::store::Store;

/// Default: repack a pack once less than half of its blob bytes are live. Rewriting a pack then
/// writes at most as many bytes as it frees (write amplification ≤ 1), and stored bytes stay
/// below 2 × live in the worst case (far less in practice: dead chunks gather in old packs).
pub const DEFAULT_MIN_LIVE_PERCENT: u8 = 50;
/// Default I/O budget per run (bytes read + written): a few minutes of a slow object store, so
/// a daily run never turns into a full rewrite of the bucket.
pub const DEFAULT_BUDGET: u64 = 4 << 30;
/// Gaps between live blobs up to this size are read rather than split into another GET.
const COALESCE_GAP: u64 = 1 << 20;
/// Packs examined per catalog call when looking for candidates.
const SCAN_BATCH: i64 = 2_000;

/// `[gc] repack_below`, `[gc] repack_budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepackSettings {
    /// A pack with less live data than this percentage of its blob bytes is rewritten
    /// (0: never repack).
    pub min_live_percent: u8,
    /// Bytes read plus written per run.
    pub budget: u64,
}

impl Default for RepackSettings {
    fn default() -> Self {
        RepackSettings {
            min_live_percent: DEFAULT_MIN_LIVE_PERCENT,
            budget: DEFAULT_BUDGET,
        }
    }
}

/// What one repack pass did (with `dry_run`: found).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repacked {
    /// Packs below the threshold.
    pub candidates: u64,
    /// Candidates rewritten and tombstoned this run.
    pub packs: u64,
    /// Packs with no chunk row, tombstoned.
    pub empty_packs: u64,
    pub chunks_moved: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Sizes of the tombstoned packs minus the bytes written.
    pub bytes_freed: i64,
    /// Candidates left for a later run (budget spent).
    pub deferred: u64,
    /// Candidates skipped because a read or a hash check failed, and new packs whose put
    /// failed (their chunks stay where they were).
    pub skipped: u64,
}

/// A pack below the threshold.
#[derive(Debug, Clone)]
struct Candidate {
    id: [u8; 32],
    key: String,
    /// Blob bytes (the pack minus its index): what `live` is a fraction of.
    area: u64,
    live: u64,
    group: String,
}

/// One live chunk row of a candidate.
#[derive(Debug, Clone)]
struct LiveRow {
    group: String,
    id: ChunkId,
    offset: u64,
    length: u32,
    hash: [u8; 32],
}

fn blob_area(size: i64, entries: i64) -> u64 {
    let footer = entries.saturating_mul(ENTRY_LEN as i64) + TRAILER_LEN as i64;
    to_u64(size.saturating_sub(footer)).max(1)
}

fn pack_id(raw: Vec<u8>) -> Result<[u8; 32], CatalogError> {
    raw.as_slice()
        .try_into()
        .map_err(|_| CatalogError::Corrupt("a pack id is not 32 bytes".into()))
}

/// One batch of the candidate scan, after `cursor`: (candidates, empty packs to drop, next).
#[allow(clippy::type_complexity)]
fn scan_batch(
    conn: &Connection,
    cursor: &[u8],
    min_live_percent: u8,
    cutoff: i64,
) -> Result<(Vec<Candidate>, Vec<(Vec<u8>, String, u64)>, Option<Vec<u8>>), CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT p.id, p.key, p.size, p.entries, p.created_at,
           (SELECT COALESCE(SUM(c.length), 0) FROM chunks c
              WHERE c.pack_id = p.id AND c.condemned_at IS NULL),
           (SELECT COUNT(*) FROM chunks c WHERE c.pack_id = p.id),
           (SELECT MIN(c.dedup_group) FROM chunks c WHERE c.pack_id = p.id)
         FROM packs p WHERE p.id > ?1 ORDER BY p.id LIMIT ?2",
    )?;
    let mut rows = st.query(params![cursor, SCAN_BATCH])?;
    let (mut cands, mut empty, mut last, mut n) = (Vec::new(), Vec::new(), None, 0);
    while let Some(r) = rows.next()? {
        n += 1;
        let id: Vec<u8> = r.get(0)?;
        let (key, size, entries, created): (String, i64, i64, i64) =
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        let (live, count, group): (i64, i64, Option<String>) = (r.get(5)?, r.get(6)?, r.get(7)?);
        last = Some(id.clone());
        if count == 0 {
            if created < cutoff {
                empty.push((id, key, to_u64(size)));
            }
            continue;
        }
        let live = to_u64(live);
        let area = blob_area(size, entries);
        if live == 0 || u128::from(live) * 100 >= u128::from(area) * u128::from(min_live_percent) {
            continue;
        }
        cands.push(Candidate {
            id: pack_id(id)?,
            key,
            area,
            live,
            group: group.unwrap_or_default(),
        });
    }
    Ok((cands, empty, if n < SCAN_BATCH { None } else { last }))
}

/// Tombstones packs without any chunk row (re-checked in the transaction).
fn drop_empty(
    conn: &mut Connection,
    empty: &[(Vec<u8>, String, u64)],
    now: i64,
) -> Result<u64, CatalogError> {
    let tx = conn.transaction()?;
    let seen = snapshots_seen(&tx)?;
    let mut n = 0;
    for (id, key, size) in empty {
        let gone = tx.execute(
            "DELETE FROM packs WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.pack_id = ?1)",
            params![id],
        )?;
        if gone == 1 {
            tx.execute(
                "DELETE FROM replication_deps WHERE dep_key = ?1",
                params![key],
            )?;
            tombstone(&tx, key, "pack", *size, now, seen)?;
            n += 1;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Every candidate and the number of empty packs dropped.
async fn candidates(
    catalog: &Catalog,
    settings: RepackSettings,
    cutoff: i64,
    now: i64,
    dry_run: bool,
) -> Result<(Vec<Candidate>, u64), CatalogError> {
    let (mut all, mut dropped, mut cursor) = (Vec::new(), 0, Vec::new());
    loop {
        let cur = std::mem::take(&mut cursor);
        let pct = settings.min_live_percent;
        let (cands, empty, next) = catalog
            .run(move |c| scan_batch(c, &cur, pct, cutoff))
            .await?;
        all.extend(cands);
        dropped += if dry_run {
            empty.len() as u64
        } else if empty.is_empty() {
            0
        } else {
            catalog.run(move |c| drop_empty(c, &empty, now)).await?
        };
        match next {
            Some(n) => cursor = n,
            None => break,
        }
    }
    Ok((all, dropped))
}

fn live_rows(conn: &Connection, pack: &[u8; 32]) -> Result<Vec<LiveRow>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT dedup_group, id, offset, length, blob_hash FROM chunks
         WHERE pack_id = ?1 AND condemned_at IS NULL ORDER BY offset",
    )?;
    let rows = st.query_map(params![&pack[..]], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Vec<u8>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (group, id, offset, length, hash) = row?;
        let id: [u8; CHUNK_ID_LEN] = id
            .as_slice()
            .try_into()
            .map_err(|_| CatalogError::Corrupt("a chunk id is not 32 bytes".into()))?;
        out.push(LiveRow {
            group,
            id: ChunkId(id),
            offset: to_u64(offset),
            length: u32::try_from(length)
                .map_err(|_| CatalogError::Corrupt("a chunk length is out of range".into()))?,
            hash: hash
                .as_slice()
                .try_into()
                .map_err(|_| CatalogError::Corrupt("a blob hash is not 32 bytes".into()))?,
        });
    }
    Ok(out)
}

/// Byte ranges covering `rows` (sorted by offset), merging gaps up to `gap`.
fn coalesce(rows: &[LiveRow], gap: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in rows {
        let end = r.offset + u64::from(r.length);
        match out.last_mut() {
            Some(last) if r.offset <= last.end.saturating_add(gap) => last.end = last.end.max(end),
            _ => out.push(r.offset..end),
        }
    }
    out
}

/// Reads and verifies the live blobs of one pack: (row, blob) in offset order, bytes read.
async fn read_live(
    store: &Store,
    key: &str,
    rows: Vec<LiveRow>,
) -> Result<(Vec<(LiveRow, bytes::Bytes)>, u64), String> {
    let mut out = Vec::with_capacity(rows.len());
    let mut read = 0u64;
    let mut next = 0usize;
    for range in coalesce(&rows, COALESCE_GAP) {
        let data = store
            .get_range(key, range.clone())
            .await
            .map_err(|e| e.to_string())?;
        read += data.len() as u64;
        while let Some(r) = rows.get(next).filter(|r| r.offset < range.end) {
            let from = usize::try_from(r.offset - range.start).unwrap_or(usize::MAX);
            let to = from.saturating_add(r.length as usize);
            let blob = data.get(from..to).ok_or("short read")?;
            if blake3::hash(blob).as_bytes() != &r.hash {
                return Err(format!("chunk {} does not match its recorded hash", r.id));
            }
            out.push((r.clone(), data.slice(from..to)));
            next += 1;
        }
    }
    Ok((out, read))
}

/// A new pack being filled for one group, with where each of its chunks comes from.
#[derive(Default)]
struct Filling {
    pack: PackBuilder,
    from: Vec<(ChunkId, [u8; 32])>,
}

/// What one [`switch`] changed.
#[derive(Debug, Default)]
struct Switched {
    moved: u64,
    drained: u64,
    drained_bytes: u64,
}

/// The catalog half of a repack, one transaction: see the module docs (step 2).
fn switch(
    conn: &mut Connection,
    group: &str,
    sealed: &SealedPack,
    from: &[(ChunkId, [u8; 32])],
    now: i64,
) -> Result<Switched, CatalogError> {
    let tx = conn.transaction()?;
    let mut out = Switched::default();
    crate::catalog::chunks::insert_pack_row(&tx, sealed, now)?;
    let mut old: Vec<[u8; 32]> = Vec::new();
    {
        let mut st = tx.prepare_cached(
            "UPDATE chunks SET pack_id = ?1, offset = ?2
             WHERE dedup_group = ?3 AND id = ?4 AND pack_id = ?5 AND length = ?6 AND blob_hash = ?7",
        )?;
        for (e, (id, was)) in sealed.entries.iter().zip(from) {
            debug_assert_eq!(&e.id, id);
            out.moved += st.execute(params![
                &sealed.name[..],
                to_i64(e.offset),
                group,
                &id.0[..],
                &was[..],
                i64::from(e.length),
                &e.hash[..]
            ])? as u64;
            if !old.contains(was) {
                old.push(*was);
            }
        }
    }
    crate::catalog::chunks::queue_pack_copy(&tx, sealed, now)?;
    let seen = snapshots_seen(&tx)?;
    for was in old {
        let Some((key, size)) = tx
            .query_row(
                "SELECT key, size FROM packs WHERE id = ?1",
                params![&was[..]],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?
        else {
            continue;
        };
        // Records not yet copied that wait for the old pack wait for the new one as well.
        tx.execute(
            "INSERT OR IGNORE INTO replication_deps (record_key, dep_key)
             SELECT record_key, ?2 FROM replication_deps WHERE dep_key = ?1",
            params![key, sealed.key],
        )?;
        let drained = tx.execute(
            "DELETE FROM packs WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.pack_id = ?1)",
            params![&was[..]],
        )?;
        if drained == 1 {
            tx.execute(
                "DELETE FROM replication_deps WHERE dep_key = ?1",
                params![key],
            )?;
            tombstone(&tx, &key, "pack", to_u64(size), now, seen)?;
            out.drained += 1;
            out.drained_bytes += to_u64(size);
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Puts a filled pack and switches its chunks to it.
async fn flush(
    catalog: &Catalog,
    store: &Store,
    group: String,
    mut filling: Filling,
    now: i64,
    out: &mut Repacked,
) -> Result<(), CatalogError> {
    if filling.pack.is_empty() {
        return Ok(());
    }
    let sealed = filling.pack.finish();
    let _writing = super::guard::writing(vec![sealed.key.clone()]).await;
    if let Err(e) = store.put_new(&sealed.key, sealed.bytes.clone()).await {
        tracing::warn!(pack = %sealed.key, error = %e, "repack could not store a new pack; the old packs stay, next run retries");
        out.skipped += 1;
        return Ok(());
    }
    out.bytes_written += sealed.bytes.len() as u64;
    let written = sealed.bytes.len() as u64;
    let from = std::mem::take(&mut filling.from);
    let s = catalog
        .run(move |c| switch(c, &group, &sealed, &from, now))
        .await?;
    out.chunks_moved += s.moved;
    out.packs += s.drained;
    out.bytes_freed += i64::try_from(s.drained_bytes).unwrap_or(i64::MAX)
        - i64::try_from(written).unwrap_or(i64::MAX);
    Ok(())
}

/// Adds one blob to the pack being filled; returns the packs ready to flush (the previous
/// group's when the group changes, this one when full). A pack shared by two groups (identical
/// uploads) has its rows moved per group.
fn add(
    filling: &mut Option<(String, Filling)>,
    row: &LiveRow,
    blob: &[u8],
    from: [u8; 32],
) -> Vec<(String, Filling)> {
    let mut ready = Vec::new();
    if filling.as_ref().is_some_and(|(g, _)| *g != row.group) {
        ready.extend(filling.take());
    }
    let (_, f) = filling.get_or_insert_with(|| (row.group.clone(), Filling::default()));
    if f.pack.push(row.id, blob) {
        f.from.push((row.id, from));
    }
    if f.pack.is_full() {
        ready.extend(filling.take());
    }
    ready
}

/// Takes candidates (emptiest first) while the budget lasts; returns them grouped by dedup
/// group, and how many were left for a later run.
fn choose(mut cands: Vec<Candidate>, budget: u64) -> (Vec<Candidate>, u64) {
    cands.sort_by_key(|c| (u128::from(c.live) << 64) / u128::from(c.area));
    let (mut chosen, mut spent, mut deferred) = (Vec::new(), 0u64, 0u64);
    for c in cands {
        // Read the live blobs, write them again.
        let cost = c.live.saturating_mul(2);
        if !chosen.is_empty() && spent.saturating_add(cost) > budget {
            deferred += 1;
            continue;
        }
        spent = spent.saturating_add(cost);
        chosen.push(c);
    }
    chosen.sort_by(|a, b| a.group.cmp(&b.group));
    (chosen, deferred)
}

/// One repack pass (inside a GC run). `cutoff`: empty packs created before it are dropped.
/// With `dry_run`, only counts candidates and empty packs.
pub async fn run(
    catalog: &Catalog,
    store: &Store,
    settings: RepackSettings,
    cutoff: i64,
    now: i64,
    dry_run: bool,
) -> Result<Repacked, CatalogError> {
    let mut out = Repacked::default();
    if settings.min_live_percent == 0 {
        return Ok(out);
    }
    let (cands, empty) = candidates(catalog, settings, cutoff, now, dry_run).await?;
    out.empty_packs = empty;
    out.candidates = cands.len() as u64;
    if dry_run {
        return Ok(out);
    }
    let (chosen, deferred) = choose(cands, settings.budget);
    out.deferred = deferred;
    let mut filling: Option<(String, Filling)> = None;
    for c in chosen {
        let id = c.id;
        let rows = catalog.run(move |conn| live_rows(conn, &id)).await?;
        let (blobs, read) = match read_live(store, &c.key, rows).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(pack = %c.key, error = %e, "repack skipped a pack it could not read or verify; run `lifeboatctl replication scrub`");
                out.skipped += 1;
                continue;
            }
        };
        out.bytes_read += read;
        for (row, blob) in blobs {
            for (g, f) in add(&mut filling, &row, &blob, c.id) {
                flush(catalog, store, g, f, now, &mut out).await?;
            }
        }
    }
    if let Some((g, f)) = filling.take() {
        flush(catalog, store, g, f, now, &mut out).await?;
    }
    tracing::info!(
        candidates = out.candidates,
        repacked = out.packs,
        empty = out.empty_packs,
        chunks_moved = out.chunks_moved,
        bytes_read = out.bytes_read,
        bytes_written = out.bytes_written,
        deferred = out.deferred,
        "repack done"
    );
    Ok(out)
}
