//! Committed snapshots and their reference sets.
//!
//! A snapshot row and its reference sets ([`super::refsets`]) are inserted in one transaction,
//! after the record and segment objects are durable, so a visible snapshot always has all of
//! its data.
//!
//! A forgotten snapshot (`forgotten_at` set by retention, `lifeboatctl forget`) is invisible to
//! every query here that serves a caller: listings, "latest", lookups by id and the ReadChunks
//! authorization. Its rows stay until GC removes its objects, so GC still marks from nothing
//! but live snapshots while the record and reference set remain on disk.
//!
//! A snapshot flagged by the catalog rebuild (`missing_refs > 0`: chunks no pack holds) is
//! likewise never listed, "latest" or found by id: it is not restorable ([`crate::rebuild`]).

use lifeboat_common::ids::{CHUNK_ID_LEN, ChunkId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{CatalogError, refsets, to_i64, to_u64};
use crate::record::SnapshotStats;

/// One committed snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub id: String,
    pub agent: String,
    pub source: String,
    pub session_id: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub committed_at: i64,
    pub stats: SnapshotStats,
    pub stored_bytes: u64,
    pub manifest_ids: Vec<ChunkId>,
    pub reference_count: u64,
    pub record_key: String,
}

#[cfg(test)]
impl SnapshotRow {
    /// A committed snapshot of `agent`'s `source` at `at` with no data, for tests (override
    /// fields with `..SnapshotRow::sample(..)`).
    pub fn sample(id: &str, agent: &str, source: &str, at: i64) -> SnapshotRow {
        SnapshotRow {
            id: id.into(),
            agent: agent.into(),
            source: source.into(),
            session_id: "s".into(),
            started_at: at,
            finished_at: at,
            committed_at: at,
            stats: SnapshotStats::default(),
            stored_bytes: 0,
            manifest_ids: Vec::new(),
            reference_count: 0,
            record_key: format!("snapshots/{agent}/{id}"),
        }
    }
}

/// How a snapshot is named in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A full id or a prefix of one (lowercase hex).
    IdOrPrefix(String),
    /// The most recent snapshot of a source.
    Latest { source: String },
}

/// Why a lookup found no single snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Box<SnapshotRow>),
    NotFound,
    Ambiguous(Vec<String>),
}

const COLUMNS: &str =
    "id, agent, source, session_id, started_at, finished_at, committed_at, files, dirs,
    symlinks, logical_bytes, new_logical_bytes, chunks, new_chunks, unreadable, files_read,
    stored_bytes, manifest_ids, reference_count, record_key";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(SnapshotRow, Vec<u8>)> {
    let u = |i: usize| r.get::<_, i64>(i).map(to_u64);
    let row = SnapshotRow {
        id: r.get(0)?,
        agent: r.get(1)?,
        source: r.get(2)?,
        session_id: r.get(3)?,
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        committed_at: r.get(6)?,
        stats: SnapshotStats {
            files: u(7)?,
            dirs: u(8)?,
            symlinks: u(9)?,
            logical_bytes: u(10)?,
            new_logical_bytes: u(11)?,
            chunks: u(12)?,
            new_chunks: u(13)?,
            unreadable: u(14)?,
            files_read: u(15)?,
        },
        stored_bytes: u(16)?,
        manifest_ids: Vec::new(),
        reference_count: u(18)?,
        record_key: r.get(19)?,
    };
    Ok((row, r.get(17)?))
}

fn finish(pair: (SnapshotRow, Vec<u8>)) -> Result<SnapshotRow, CatalogError> {
    let (mut row, raw) = pair;
    if !raw.len().is_multiple_of(CHUNK_ID_LEN) {
        return Err(CatalogError::Corrupt(format!(
            "manifest ids of snapshot {} are {} bytes, not a multiple of 32",
            row.id,
            raw.len()
        )));
    }
    row.manifest_ids = raw
        .chunks_exact(CHUNK_ID_LEN)
        .map(|c| {
            let mut a = [0u8; CHUNK_ID_LEN];
            a.copy_from_slice(c);
            ChunkId(a)
        })
        .collect();
    Ok(row)
}

/// Inserts a snapshot and its reference set (sorted, distinct) in one transaction.
pub fn insert(
    conn: &mut Connection,
    s: &SnapshotRow,
    refs: &[ChunkId],
) -> Result<(), CatalogError> {
    let tx = conn.transaction()?;
    insert_in(&tx, s, refs)?;
    tx.commit()?;
    Ok(())
}

/// Inserts a snapshot and its reference set inside the caller's transaction (so other rows,
/// such as replication queue rows, commit atomically with it).
pub fn insert_in(tx: &Connection, s: &SnapshotRow, refs: &[ChunkId]) -> Result<(), CatalogError> {
    let manifest: Vec<u8> = s.manifest_ids.iter().flat_map(|i| i.0).collect();
    let st = &s.stats;
    tx.execute(
        &format!(
            "INSERT INTO snapshots ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
            ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        ),
        params![
            s.id,
            s.agent,
            s.source,
            s.session_id,
            s.started_at,
            s.finished_at,
            s.committed_at,
            to_i64(st.files),
            to_i64(st.dirs),
            to_i64(st.symlinks),
            to_i64(st.logical_bytes),
            to_i64(st.new_logical_bytes),
            to_i64(st.chunks),
            to_i64(st.new_chunks),
            to_i64(st.unreadable),
            to_i64(st.files_read),
            to_i64(s.stored_bytes),
            manifest,
            to_i64(s.reference_count),
            s.record_key
        ],
    )?;
    if !refs.is_empty() {
        // Sets are shared within the agent's dedup group (an agent unknown to the catalog,
        // in tests, is a group of its own).
        let group: String = tx
            .prepare_cached("SELECT dedup_group FROM agents WHERE id = ?1")?
            .query_row(params![s.agent], |r| r.get(0))
            .optional()?
            .unwrap_or_else(|| s.agent.clone());
        refsets::insert(tx, &s.id, &group, refs)?;
    }
    Ok(())
}

/// Snapshots, oldest first, optionally of one agent and/or one source.
pub fn list(
    conn: &Connection,
    agent: Option<&str>,
    source: Option<&str>,
) -> Result<Vec<SnapshotRow>, CatalogError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM snapshots WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR source = ?2)
         AND forgotten_at IS NULL AND missing_refs = 0 ORDER BY committed_at, id"
    ))?;
    let rows = st.query_map(params![agent, source], from_row)?;
    rows.map(|r| finish(r?)).collect()
}

/// Finds one snapshot, optionally restricted to one agent.
pub fn find(
    conn: &Connection,
    agent: Option<&str>,
    sel: &Selector,
) -> Result<Lookup, CatalogError> {
    match sel {
        Selector::Latest { source } => {
            let row = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM snapshots WHERE (?1 IS NULL OR agent = ?1) AND source = ?2
                     AND forgotten_at IS NULL AND missing_refs = 0 ORDER BY committed_at DESC, id DESC LIMIT 1"
                ))?
                .query_row(params![agent, source], from_row)
                .optional()?;
            Ok(match row {
                Some(r) => Lookup::Found(Box::new(finish(r)?)),
                None => Lookup::NotFound,
            })
        }
        Selector::IdOrPrefix(prefix) => {
            // The prefix is validated hex by the caller, so it holds no LIKE wildcards.
            let mut st = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM snapshots WHERE (?1 IS NULL OR agent = ?1) AND id LIKE ?2 || '%'
                 AND forgotten_at IS NULL AND missing_refs = 0 ORDER BY id LIMIT 11"
            ))?;
            let mut rows = st
                .query_map(params![agent, prefix], from_row)?
                .map(|r| finish(r?))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(match rows.len() {
                0 => Lookup::NotFound,
                1 => Lookup::Found(Box::new(rows.remove(0))),
                _ => Lookup::Ambiguous(rows.into_iter().map(|r| r.id).collect()),
            })
        }
    }
}

/// The parent of upload session `session`: the latest live (not forgotten), complete
/// (`missing_refs = 0`) snapshot of its agent and source, whose references hold nearly every
/// id the session asks about ([`crate::gc::pins`]).
pub fn session_parent(conn: &Connection, session: &str) -> Result<Option<String>, CatalogError> {
    Ok(conn
        .prepare_cached(
            "SELECT s.id FROM sessions x JOIN snapshots s ON s.agent = x.agent AND s.source = x.source
             WHERE x.id = ?1 AND s.forgotten_at IS NULL AND s.missing_refs = 0
             ORDER BY s.committed_at DESC, s.id DESC LIMIT 1",
        )?
        .query_row(params![session], |r| r.get(0))
        .optional()?)
}

/// A live snapshot of `agent` that references `id`, if any. Through the by-chunk index: every
/// set that holds `id`, then every snapshot that lists such a set until one is `agent`'s and
/// live, so its cost grows with the snapshots (of every agent of the group) that share the set;
/// [`Vouch`] asks it once per snapshot, not once per id.
pub fn referencing_snapshot(
    conn: &Connection,
    agent: &str,
    id: &ChunkId,
) -> Result<Option<String>, CatalogError> {
    Ok(conn
        .prepare_cached(
            "SELECT s.id FROM ref_set_chunks rc CROSS JOIN snapshot_sets ss CROSS JOIN snapshots s
             WHERE rc.chunk_id = ?2 AND ss.set_id = rc.set_id AND s.id = ss.snapshot_id
               AND s.agent = ?1 AND s.forgotten_at IS NULL LIMIT 1",
        )?
        .query_row(params![agent, &id.0[..]], |r| r.get(0))
        .optional()?)
}

/// Whether a live snapshot of one agent references each id asked about, for ReadChunks'
/// authorization: use one per read transaction.
///
/// The ids of one request come from the snapshot being restored, so each is first looked up in
/// the sets of the snapshot that vouched for the id before it ([`refsets::cover`]: a binary
/// search and one primary-key lookup), and only on a miss through [`referencing_snapshot`],
/// whose answer vouches for the next ids. With many snapshots listing the same set (agents of a
/// group backing up the same files, long retention) the by-chunk query walks them all until it
/// meets one of the caller's (on a copy of a bench catalog, ~10 µs an id, ~190 µs with 2,000
/// snapshots of another agent listing the same sets: docs/performance.md, session 22). "Yes" is
/// always a row of a set of a snapshot of the caller that was live in this transaction: the
/// same rule as the by-chunk query alone.
pub struct Vouch<'a> {
    covers: &'a refsets::cover::CoverCache,
    agent: &'a str,
    last: Option<std::sync::Arc<refsets::cover::Cover>>,
}

impl<'a> Vouch<'a> {
    pub fn new(covers: &'a refsets::cover::CoverCache, agent: &'a str) -> Self {
        Vouch {
            covers,
            agent,
            last: None,
        }
    }

    /// Whether a live snapshot of the agent references `id` (in the caller's transaction).
    pub fn referenced(&mut self, conn: &Connection, id: &ChunkId) -> Result<bool, CatalogError> {
        if let Some(cover) = &self.last
            && cover.references(conn, id)?
        {
            return Ok(true);
        }
        let Some(snap) = referencing_snapshot(conn, self.agent, id)? else {
            return Ok(false);
        };
        self.last = Some(self.covers.get(conn, &snap)?);
        Ok(true)
    }
}

/// A live (not forgotten) snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRow {
    pub id: String,
    pub agent: String,
    pub source: String,
    pub committed_at: i64,
    /// The catalog rebuild found chunks of its reference set that no pack holds.
    pub damaged: bool,
}

/// Every live snapshot, optionally of one agent and/or source, ordered by agent, source, time.
/// Damaged snapshots (`missing_refs`) are included and flagged.
pub fn retention_rows(
    conn: &Connection,
    agent: Option<&str>,
    source: Option<&str>,
) -> Result<Vec<RetentionRow>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT id, agent, source, committed_at, missing_refs FROM snapshots
         WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR source = ?2) AND forgotten_at IS NULL
         ORDER BY agent, source, committed_at, id",
    )?;
    let rows = st.query_map(params![agent, source], |r| {
        Ok(RetentionRow {
            id: r.get(0)?,
            agent: r.get(1)?,
            source: r.get(2)?,
            committed_at: r.get(3)?,
            damaged: r.get::<_, i64>(4)? != 0,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks snapshots forgotten at `now`, all in one transaction; returns how many changed (ids
/// already forgotten or unknown are skipped). Nothing is deleted: GC frees the objects later.
pub fn forget(conn: &mut Connection, ids: &[String], now: i64) -> Result<u64, CatalogError> {
    let tx = conn.transaction()?;
    let mut changed = 0u64;
    {
        let mut up = tx.prepare_cached(
            "UPDATE snapshots SET forgotten_at = ?2 WHERE id = ?1 AND forgotten_at IS NULL",
        )?;
        for id in ids {
            changed += up.execute(params![id, now])? as u64;
        }
    }
    tx.commit()?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, agents};

    fn row(id: &str, agent: &str, source: &str, at: i64) -> SnapshotRow {
        SnapshotRow {
            stats: SnapshotStats {
                files: 3,
                ..Default::default()
            },
            stored_bytes: 9,
            manifest_ids: vec![ChunkId([4; 32])],
            reference_count: 1,
            ..SnapshotRow::sample(id, agent, source, at)
        }
    }

    /// Agents "a" and "b", each in the dedup group `group(name)`.
    fn agents_a_and_b(c: &Connection, group: impl Fn(&str) -> &str) -> Result<(), CatalogError> {
        for (a, fp) in [("a", "fa"), ("b", "fb")] {
            agents::insert(
                c,
                &agents::AgentRow {
                    id: a.into(),
                    dedup_group: group(a).into(),
                    cert_sha256: fp.into(),
                    not_after: 0,
                    created_at: 0,
                    last_seen: 0,
                    snapshots: 0,
                },
            )?;
        }
        Ok(())
    }

    #[test]
    fn insert_list_find_and_refs() {
        let cat = Catalog::open_in_memory().expect("open");
        cat.run_blocking(|c| {
            agents_a_and_b(c, |a| a)?;
            insert(
                c,
                &row("aaaa000000000000000a", "a", "web", 1),
                &[ChunkId([4; 32])],
            )?;
            insert(
                c,
                &row("aaaa000000000000000b", "a", "web", 2),
                &[ChunkId([5; 32])],
            )?;
            insert(
                c,
                &row("bbbb000000000000000b", "b", "web", 3),
                &[ChunkId([6; 32])],
            )?;
            let l = list(c, Some("a"), None)?;
            assert_eq!(l.len(), 2);
            assert_eq!(l[0].manifest_ids, vec![ChunkId([4; 32])]);
            assert_eq!(l[0].stats.files, 3);
            assert_eq!(list(c, None, Some("web"))?.len(), 3);
            let latest = find(
                c,
                Some("a"),
                &Selector::Latest {
                    source: "web".into(),
                },
            )?;
            assert!(matches!(latest, Lookup::Found(r) if r.id == "aaaa000000000000000b"));
            let amb = find(c, Some("a"), &Selector::IdOrPrefix("aaaa".into()))?;
            assert!(matches!(amb, Lookup::Ambiguous(v) if v.len() == 2));
            let other = find(c, Some("a"), &Selector::IdOrPrefix("bbbb".into()))?;
            assert_eq!(other, Lookup::NotFound, "agent a cannot see b's snapshot");
            assert!(referencing_snapshot(c, "a", &ChunkId([5; 32]))?.is_some());
            assert!(referencing_snapshot(c, "a", &ChunkId([6; 32]))?.is_none());
            // Forgetting hides the snapshot from every caller-facing query.
            assert_eq!(retention_rows(c, Some("a"), Some("web"))?.len(), 2);
            assert_eq!(forget(c, &["aaaa000000000000000b".into()], 9)?, 1);
            assert_eq!(forget(c, &["aaaa000000000000000b".into()], 9)?, 0);
            let l = list(c, Some("a"), None)?;
            assert_eq!(l.len(), 1);
            assert_eq!(l[0].id, "aaaa000000000000000a");
            let latest = find(
                c,
                Some("a"),
                &Selector::Latest {
                    source: "web".into(),
                },
            )?;
            assert!(matches!(latest, Lookup::Found(r) if r.id == "aaaa000000000000000a"));
            let gone = find(
                c,
                None,
                &Selector::IdOrPrefix("aaaa000000000000000b".into()),
            )?;
            assert_eq!(gone, Lookup::NotFound);
            assert!(
                referencing_snapshot(c, "a", &ChunkId([5; 32]))?.is_none(),
                "a forgotten snapshot no longer authorizes reads"
            );
            let r = retention_rows(c, Some("a"), Some("web"))?;
            assert_eq!(r.len(), 1);
            assert!(!r[0].damaged);
            Ok(())
        })
        .expect("ops");
    }

    #[test]
    fn vouch_answers_as_the_by_chunk_query_does() {
        let cat = Catalog::open_in_memory().expect("open");
        let covers = crate::catalog::refsets::cover::CoverCache::default();
        cat.run_blocking(|c| {
            agents_a_and_b(c, |_| "g")?;
            let id = |n: u8| ChunkId([n; 32]);
            insert(
                c,
                &row("aaaa000000000000000a", "a", "web", 1),
                &[id(1), id(2)],
            )?;
            insert(c, &row("aaaa000000000000000b", "a", "db", 2), &[id(3)])?;
            insert(
                c,
                &row("bbbb000000000000000b", "b", "web", 3),
                &[id(2), id(4)],
            )?;
            let asked = [1, 2, 3, 2, 4, 9, 1];
            let by_query = |c: &Connection| -> Result<Vec<bool>, CatalogError> {
                asked
                    .iter()
                    .map(|&n| Ok(referencing_snapshot(c, "a", &id(n))?.is_some()))
                    .collect()
            };
            let by_vouch = |c: &Connection| -> Result<Vec<bool>, CatalogError> {
                let mut v = Vouch::new(&covers, "a");
                asked.iter().map(|&n| v.referenced(c, &id(n))).collect()
            };
            // 2 is also b's, 4 only b's (same group: same ids), 9 nobody's; 3 is in a's
            // other snapshot, after a cover that does not hold it.
            let want = vec![true, true, true, true, false, false, true];
            assert_eq!(by_query(c)?, want);
            assert_eq!(by_vouch(c)?, want);
            // A forgotten snapshot vouches for nothing, whichever way it is asked.
            assert_eq!(forget(c, &["aaaa000000000000000b".into()], 9)?, 1);
            let want = vec![true, true, false, true, false, false, true];
            assert_eq!(by_query(c)?, want);
            assert_eq!(by_vouch(c)?, want);
            Ok(())
        })
        .expect("ops");
    }

    /// The point of [`Vouch`]: after the first id, the ids of the snapshot restored are answered
    /// from its sets, not by the by-chunk query, whose walk grows with the snapshots listing the
    /// same sets (here 300 of another agent, whose ids sort first). Counted in SQLite's virtual
    /// machine steps, so the test fails if the cover path is never taken.
    #[test]
    fn vouch_answers_from_the_sets_of_the_snapshot_that_vouched() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let cat = Catalog::open_in_memory().expect("open");
        let covers = crate::catalog::refsets::cover::CoverCache::default();
        cat.run_blocking(|c| {
            agents_a_and_b(c, |_| "g")?;
            let ids: Vec<ChunkId> = (1..=8).map(|n| ChunkId([n; 32])).collect();
            let restored = "aaaa000000000000000a";
            insert(c, &row(restored, "a", "web", 1), &ids)?;
            for n in 0..300 {
                let other = format!("0000{n:016}");
                insert(c, &row(&other, "b", "web", 2 + n), &[])?;
                c.execute(
                    "INSERT INTO snapshot_sets (snapshot_id, set_id)
                     SELECT ?1, set_id FROM snapshot_sets WHERE snapshot_id = ?2",
                    params![other, restored],
                )?;
            }
            let steps = Arc::new(AtomicU64::new(0));
            let counter = Arc::clone(&steps);
            c.progress_handler(
                10,
                Some(move || {
                    counter.fetch_add(1, Ordering::Relaxed);
                    false
                }),
            )?;
            let counted = |f: &mut dyn FnMut() -> Result<bool, CatalogError>| {
                steps.store(0, Ordering::Relaxed);
                let all = (0..ids.len()).map(|_| f()).collect::<Result<Vec<_>, _>>();
                (all, steps.load(Ordering::Relaxed))
            };
            let mut asked = ids.iter();
            let (by_query, query_steps) = counted(&mut || {
                let id = asked.next().expect("an id");
                Ok(referencing_snapshot(c, "a", id)?.is_some())
            });
            let mut vouch = Vouch::new(&covers, "a");
            let mut asked = ids.iter();
            let (by_vouch, vouch_steps) =
                counted(&mut || vouch.referenced(c, asked.next().expect("an id")));
            assert_eq!(by_query?, vec![true; 8]);
            assert_eq!(by_vouch?, vec![true; 8]);
            assert!(
                vouch_steps * 3 < query_steps,
                "Vouch took {vouch_steps} steps against the by-chunk query's {query_steps}"
            );
            c.progress_handler(0, None::<fn() -> bool>)?;
            Ok(())
        })
        .expect("ops");
    }
}
