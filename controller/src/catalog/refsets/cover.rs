//! "Does snapshot S reference chunk X?" with one lookup, through S's sets in id order.
//!
//! A snapshot's sets are the cuts of its sorted references ([`super::cuts`]; a snapshot migrated
//! from v8 has one set), so they cover disjoint, contiguous ranges of the id space, and the only
//! set of S that can hold X is the one whose first id is the greatest at or below X. [`Cover`]
//! loads each set's first id once (one primary-key seek per set, a few hundred per snapshot),
//! then each question is a binary search and one primary-key lookup of (set, X) in
//! `ref_set_chunks`.
//!
//! The join through the by-chunk index (`ref_set_chunks_by_chunk`, then `snapshot_sets`) visits
//! every set that holds X, one per version of that set: a source whose every backup touches every
//! set (a dump rewritten in place changes ids all over the id space) has one per snapshot kept,
//! so `HaveChunks` paid a probe per kept snapshot for each id; this pays one.
//!
//! Safety does not rest on the ranges: "yes" is always a row of one of S's own sets. Ranges that
//! were wrong (a catalog damaged by hand) could only turn a "yes" into a "no", for which
//! `HaveChunks` pins the chunk: more protection, never less.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use lifeboat_common::ids::ChunkId;
use rusqlite::Connection;

use crate::catalog::CatalogError;

/// The text of [`MEMBER`], for the constants built from it.
macro_rules! member {
    () => {
        "EXISTS (SELECT 1 FROM ref_set_chunks WHERE set_id = :set AND chunk_id = :chunk)"
    };
}

/// SQL: set `:set` holds chunk `:chunk` (a primary-key lookup). `HaveChunks` embeds it in its
/// per-id statement ([`crate::gc::pins::probe`]), so the tests of [`Cover::references`]
/// cover the query it runs.
pub const MEMBER: &str = member!();

/// [`MEMBER`] as a statement of its own, spelled once at compile time: [`Cover::references`]
/// runs it for every id ReadChunks authorizes.
const SELECT_MEMBER: &str = concat!("SELECT ", member!());

/// One snapshot's sets, by their first id.
#[derive(Debug, Default)]
pub struct Cover {
    /// (first id, set id), sorted by first id.
    starts: Vec<(ChunkId, i64)>,
}

impl Cover {
    /// Loads `snap`'s sets (none for an unknown snapshot: then nothing is referenced).
    pub fn load(conn: &Connection, snap: &str) -> Result<Cover, CatalogError> {
        let mut st = conn.prepare_cached(
            "SELECT ss.set_id,
                    (SELECT min(rc.chunk_id) FROM ref_set_chunks rc WHERE rc.set_id = ss.set_id)
             FROM snapshot_sets ss WHERE ss.snapshot_id = ?1",
        )?;
        let rows = st.query_map([snap], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
        })?;
        let mut starts = Vec::new();
        for row in rows {
            let (set, first) = row?;
            // A set without rows (impossible by the invariants) or a malformed id covers
            // nothing: questions about its range answer "no".
            if let Some(first) = first.and_then(|f| ChunkId::try_from(f.as_slice()).ok()) {
                starts.push((first, set));
            }
        }
        starts.sort_unstable();
        Ok(Cover { starts })
    }

    /// The one set of the snapshot that can hold `id` (whether it does is [`MEMBER`]), if any.
    pub fn covering_set(&self, id: &ChunkId) -> Option<i64> {
        let after = self.starts.partition_point(|(first, _)| first <= id);
        after
            .checked_sub(1)
            .and_then(|i| self.starts.get(i))
            .map(|&(_, set)| set)
    }

    /// Whether the snapshot references `id`: [`Cover::covering_set`] and [`MEMBER`], as
    /// `HaveChunks` asks it (and ReadChunks' authorization, [`crate::catalog::snapshots::Vouch`]);
    /// its tests check the pair against the `snapshot_refs` view.
    pub fn references(&self, conn: &Connection, id: &ChunkId) -> Result<bool, CatalogError> {
        let Some(set) = self.covering_set(id) else {
            return Ok(false);
        };
        Ok(conn.prepare_cached(SELECT_MEMBER)?.query_row(
            rusqlite::named_params! {":set": set, ":chunk": &id.0[..]},
            |r| r.get(0),
        )?)
    }
}

/// Covers kept: each `HaveChunks` call of a backup asks about the same parent, each `ReadChunks`
/// call of a restore about the snapshot restored ([`crate::catalog::snapshots::Vouch`]), and
/// loading one is a seek per set (536 at 2.5 GiB; ~250 calls in a backup that re-reads a 1 GiB
/// dump, thousands in a restore). Enough for a fleet's agents restoring at once after a
/// disaster without evicting each other's covers at every call: a cover holds ~0.16 bytes per
/// reference of its snapshot (40 bytes per set of ~256), 32 covers of 2.5 GiB snapshots ~0.7 MB.
pub const CACHED: usize = 32;

/// The covers of recent parents, by snapshot id. A snapshot's set list never changes while it
/// exists, so a cover never goes stale; one of a snapshot removed since answers "no", which
/// pins (and a removed snapshot is nobody's parent).
#[derive(Debug, Default)]
pub struct CoverCache {
    recent: Mutex<VecDeque<(String, Arc<Cover>)>>,
}

impl CoverCache {
    /// `snap`'s cover, loaded on first use.
    pub fn get(&self, conn: &Connection, snap: &str) -> Result<Arc<Cover>, CatalogError> {
        let lock = || self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = lock().iter().find(|(s, _)| s == snap) {
            return Ok(Arc::clone(c));
        }
        let cover = Arc::new(Cover::load(conn, snap)?);
        let mut recent = lock();
        if recent.len() >= CACHED {
            recent.pop_front();
        }
        recent.push_back((snap.to_owned(), Arc::clone(&cover)));
        Ok(cover)
    }
}
