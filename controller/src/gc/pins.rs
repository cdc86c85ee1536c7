//! Pins and leases: what an upload session was told it "has", or uploaded, stays live until
//! the session commits or its lease expires.
//!
//! - [`answer_have`] (HaveChunks) renews the lease, revives condemned chunks it answers "have"
//!   for, pins those that the session's parent snapshot (the latest live one of its agent and
//!   source) does not reference, and computes the answer. A chunk a live snapshot references
//!   needs no pin: GC keeps a snapshot forgotten after an open session started, references and
//!   all, until that session ends ([`super::mark`], `keep`). In a backup after a small change
//!   nearly every id is such a chunk, and its pin row would cost two B-tree inserts, two deletes
//!   at commit and their WAL pages. A condemned chunk is answered "have" only after its pack was
//!   confirmed present in the store (HEAD); a pack that is gone makes its condemned rows
//!   disappear and the ids are answered "missing", so the agent uploads them again.
//! - Its lookups ([`probe`]) run in a read transaction on a read-only connection, beside the
//!   writer ([`crate::catalog::Catalog::read`]); only when something must be pinned, revived or
//!   renewed does a write transaction ([`settle`]) look those ids up again and write. A backup
//!   that changed little writes nothing, and two HaveChunks calls look up on two cores (2.5 GiB
//!   no change: median 0.53 → 0.47 s). The snapshot read may be older than the writer's last
//!   commit: an id answered without a write is stored and referenced by the parent as of a
//!   moment after the session started, which is what `keep` needs; the others are settled on
//!   the writer's current state.
//! - [`pin_present`] (UploadChunks, per batch) does the same in one transaction for the blobs
//!   an upload skips as already stored; [`pin`] pins, in the pack's own transaction, the chunks
//!   whose rows another upload recorded first.
//! - The chunks a session uploads itself are protected without pin rows: their rows are created
//!   after the session started, and GC's condemn cutoff is at most the start of the oldest
//!   session whose lease runs ([`super::mark::cutoff`]), minus the margin. The protection ends
//!   exactly when a pin's would (commit or lease expiry), and the upload path writes a third of
//!   the catalog pages it did with a pin row and index entry per chunk.
//! - [`commit_check`] (CommitSnapshot) re-validates, in the closure that inserts the snapshot,
//!   that every referenced chunk still has a row (reviving condemned ones); [`release`] then
//!   drops the session's pins and lease: the snapshot's reference set keeps its chunks live.
//!
//! A chunk row that exists was never swept (the sweep deletes rows before objects, in the
//! transaction that tombstones the pack), so reviving a row is safe; the HEAD in
//! [`answer_have`] additionally catches a pack lost behind the controller's back.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use lifeboat_common::ids::ChunkId;
use rusqlite::{Connection, OptionalExtension, named_params, params};

use crate::catalog::refsets::cover::{CoverCache, MEMBER};
use crate::catalog::{Catalog, CatalogError, chunk_epoch, refsets, snapshots};
use crate::store::{Store, StoreError};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Extends `session`'s lease to `now + lease`, unless it already runs to within
/// [`renew_slack`] of that: a busy session then writes its lease once a minute rather than on
/// every call (each write is a catalog commit, an fsync), and its pins still outlive its last
/// call by at least `lease − slack`.
pub fn renew(
    conn: &Connection,
    session: &str,
    now: i64,
    lease: Duration,
) -> Result<(), CatalogError> {
    let (until, due) = lease_bounds(now, lease);
    conn.prepare_cached("UPDATE sessions SET lease_until = ?2 WHERE id = ?1 AND lease_until < ?3")?
        .execute(params![session, until, due])?;
    Ok(())
}

/// The lease a call at `now` sets (`now + lease`), and the `lease_until` below which it is due
/// for renewal (that minus [`renew_slack`]).
fn lease_bounds(now: i64, lease: Duration) -> (i64, i64) {
    let until = now.saturating_add(millis(lease));
    (until, until.saturating_sub(millis(renew_slack(lease))))
}

/// How stale a lease may get before a call renews it: a tenth of the lease, at most a minute.
pub fn renew_slack(lease: Duration) -> Duration {
    (lease / 10).min(Duration::from_secs(60))
}

/// Pins `ids` (which the caller knows are stored for `group`) to `session`.
pub fn pin(
    conn: &Connection,
    session: &str,
    group: &str,
    ids: &[ChunkId],
) -> Result<(), CatalogError> {
    let mut st = conn.prepare_cached(
        "INSERT OR IGNORE INTO session_pins (session_id, dedup_group, chunk_id) VALUES (?1, ?2, ?3)",
    )?;
    for id in ids {
        st.execute(params![session, group, &id.0[..]])?;
    }
    Ok(())
}

/// Whether `group` has `id` (a chunk row), reviving it if condemned.
fn have_and_revive(conn: &Connection, group: &str, id: &ChunkId) -> Result<bool, CatalogError> {
    let condemned: Option<Option<i64>> = conn
        .prepare_cached("SELECT condemned_at FROM chunks WHERE dedup_group = ?1 AND id = ?2")?
        .query_row(params![group, &id.0[..]], |r| r.get(0))
        .optional()?;
    match condemned {
        None => Ok(false),
        Some(None) => Ok(true),
        Some(Some(_)) => {
            revive(conn, group, id)?;
            Ok(true)
        }
    }
}

fn revive(conn: &Connection, group: &str, id: &ChunkId) -> Result<(), CatalogError> {
    conn.prepare_cached(
        "UPDATE chunks SET condemned_at = NULL WHERE dedup_group = ?1 AND id = ?2",
    )?
    .execute(params![group, &id.0[..]])?;
    tracing::debug!(group, chunk = %id, "condemned chunk revived by a dedup hit");
    Ok(())
}

/// In one transaction: renews the lease, revives every stored id and pins those that the
/// session's parent snapshot (its agent's and source's latest, live now) does not reference
/// (module docs), returns the stored ones. A batch with nothing to pin and
/// a fresh lease writes nothing (no commit to sync).
pub fn pin_present(
    conn: &mut Connection,
    covers: &CoverCache,
    session: &str,
    group: &str,
    ids: &[ChunkId],
    now: i64,
    lease: Duration,
) -> Result<HashSet<ChunkId>, CatalogError> {
    let tx = conn.transaction()?;
    let found = probe(&tx, covers, session, group, ids, now, lease)?;
    let have = settle(
        &tx,
        (session, group),
        found,
        Read::ThisTransaction,
        now,
        lease,
    )?;
    tx.commit()?;
    Ok(have)
}

/// What [`probe`] found, before anything is written.
#[derive(Debug)]
pub struct Probe {
    /// The ids with a chunk row (condemned or not).
    pub have: HashSet<ChunkId>,
    /// Those of `have` that need a write: not referenced by the parent (to pin) or condemned
    /// (to revive).
    pub settle: Vec<ChunkId>,
    /// Those of `settle` whose row was condemned.
    pub condemned: HashSet<ChunkId>,
    /// The session's lease is due for renewal ([`renew`]).
    pub renew: bool,
}

/// Where the [`Probe`] handed to [`settle`] was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// In the transaction `settle` writes in: what it found still holds.
    ThisTransaction,
    /// In an earlier (read) transaction: rows may have been condemned or swept since, so each
    /// id to settle is looked up again.
    Earlier,
}

impl Probe {
    /// Whether [`settle`] has anything to write.
    pub fn writes(&self) -> bool {
        self.renew || !self.settle.is_empty()
    }
}

/// The lookups of [`pin_present`], writing nothing: which ids are stored, which of those need
/// a pin or a revival, whether the lease needs renewing. Run it in a transaction (its lookups
/// must see one state). HaveChunks runs it on a read-only connection ([`answer_have`]); an id
/// it does not list in [`Probe::settle`] is stored and referenced by the parent, which was
/// live in the snapshot read, after the session started: GC's `keep` rule protects it from
/// then until the session ends ([`super::mark`]), whatever commits since.
pub fn probe(
    conn: &Connection,
    covers: &CoverCache,
    session: &str,
    group: &str,
    ids: &[ChunkId],
    now: i64,
    lease: Duration,
) -> Result<Probe, CatalogError> {
    let (_, due) = lease_bounds(now, lease);
    let renew = conn
        .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1 AND lease_until < ?2")?
        .query_row(params![session, due], |_| Ok(()))
        .optional()?
        .is_some();
    let parent = snapshots::session_parent(conn, session)?;
    // In key order: consecutive probes share B-tree pages.
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut have = HashSet::with_capacity(sorted.len());
    let mut to_settle = Vec::new();
    let mut condemned_ids = HashSet::new();
    // The parent's sets by range: whether it references an id is one lookup
    // ([`crate::catalog::refsets::cover`]).
    let cover = match &parent {
        Some(p) => covers.get(conn, p)?,
        None => Default::default(),
    };
    // One statement per id: the row (looked up even when the parent references the id: a
    // damaged catalog, rows lost and references kept, must answer "missing" so the agent
    // re-sends) and whether the parent's covering set holds it.
    let mut st = conn.prepare_cached(&format!(
        "SELECT c.condemned_at, :set IS NOT NULL AND {MEMBER}
         FROM chunks c WHERE c.dedup_group = :group AND c.id = :chunk"
    ))?;
    for id in &sorted {
        let set = cover.covering_set(id);
        let row: Option<(Option<i64>, bool)> = st
            .query_row(
                named_params! {":group": group, ":chunk": &id.0[..], ":set": set},
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((condemned, in_parent)) = row else {
            continue;
        };
        have.insert(*id);
        if condemned.is_some() {
            condemned_ids.insert(*id);
        }
        if condemned.is_some() || !in_parent {
            to_settle.push(*id);
        }
    }
    Ok(Probe {
        have,
        settle: to_settle,
        condemned: condemned_ids,
        renew,
    })
}

/// The writes [`probe`] found needed, in the caller's write transaction: renews the lease,
/// revives each id to settle that is condemned and pins it. A probe `read` in an earlier
/// transaction may be out of date: each id is looked up again, and one gone meanwhile is
/// answered missing. Returns the stored ids.
pub fn settle(
    conn: &Connection,
    (session, group): (&str, &str),
    found: Probe,
    read: Read,
    now: i64,
    lease: Duration,
) -> Result<HashSet<ChunkId>, CatalogError> {
    let Probe {
        mut have,
        settle: ids,
        condemned,
        renew: due,
    } = found;
    if due {
        renew(conn, session, now, lease)?;
    }
    let mut to_pin = Vec::with_capacity(ids.len());
    for id in ids {
        let stored = match read {
            Read::ThisTransaction => {
                if condemned.contains(&id) {
                    revive(conn, group, &id)?;
                }
                true
            }
            Read::Earlier => have_and_revive(conn, group, &id)?,
        };
        if stored {
            to_pin.push(id);
        } else {
            have.remove(&id);
        }
    }
    pin(conn, session, group, &to_pin)?;
    Ok(have)
}

/// The condemned chunks among `ids` and their pack keys. Between a GC's condemn and its next
/// sweep there are some; the rest of the time none, and one probe of the partial index
/// `chunks_condemned` says so without a lookup per id.
pub fn condemned_packs(
    conn: &Connection,
    group: &str,
    ids: &[ChunkId],
) -> Result<Vec<(ChunkId, String)>, CatalogError> {
    let any: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM chunks WHERE condemned_at IS NOT NULL LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    if any.is_none() {
        return Ok(Vec::new());
    }
    let mut st = conn.prepare_cached(
        "SELECT p.key FROM chunks c JOIN packs p ON p.id = c.pack_id
         WHERE c.dedup_group = ?1 AND c.id = ?2 AND c.condemned_at IS NOT NULL",
    )?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(k) = st
            .query_row(params![group, &id.0[..]], |r| r.get::<_, String>(0))
            .optional()?
        {
            out.push((*id, k));
        }
    }
    Ok(out)
}

/// Drops the condemned rows of `group` that live in the lost pack `pack_key` (its object is
/// gone), so the ids are answered missing and uploaded again.
pub fn drop_lost(conn: &Connection, group: &str, pack_key: &str) -> Result<u64, CatalogError> {
    let n = conn.execute(
        "DELETE FROM chunks WHERE dedup_group = ?1 AND condemned_at IS NOT NULL
         AND pack_id IN (SELECT id FROM packs WHERE key = ?2)",
        params![group, pack_key],
    )?;
    Ok(n as u64)
}

/// HaveChunks: confirms condemned packs, then answers and pins in one transaction. Returns the
/// missing ids in request order, each once.
pub async fn answer_have(
    catalog: &Catalog,
    store: &Store,
    session: &str,
    group: &str,
    ids: Vec<ChunkId>,
    lease: Duration,
) -> Result<Vec<ChunkId>, PinError> {
    let g = group.to_owned();
    let (ids, condemned) = catalog
        .read(move |c| {
            // One read transaction: one lock for all the lookups, not one per id.
            let tx = c.transaction()?;
            let cp = condemned_packs(&tx, &g, &ids)?;
            tx.commit()?;
            Ok((ids, cp))
        })
        .await?;
    let packs: BTreeSet<String> = condemned.into_iter().map(|(_, k)| k).collect();
    for key in packs {
        match store.head(&key).await {
            Ok(_) => {}
            Err(StoreError::NotFound { .. }) => {
                tracing::warn!(pack = %key, "condemned pack is missing from the store; its chunks will be uploaded again");
                let (g, k) = (group.to_owned(), key.clone());
                catalog.run(move |c| drop_lost(c, &g, &k)).await?;
            }
            Err(e) => return Err(PinError::Store(e)),
        }
    }
    // The lookups on a read-only connection (beside the writer: pack records, commits), then
    // only if something must be pinned, revived or renewed, those writes ([`probe`]).
    let (s, g) = (session.to_owned(), group.to_owned());
    let now = lifeboat_common::clock::now_unix_ms();
    let covers = catalog.covers();
    let (ids, found) = catalog
        .read(move |c| {
            let tx = c.transaction()?;
            let found = probe(&tx, &covers, &s, &g, &ids, now, lease)?;
            tx.commit()?;
            Ok((ids, found))
        })
        .await?;
    let have = if found.writes() {
        let (s, g) = (session.to_owned(), group.to_owned());
        catalog
            .run(move |c| {
                let tx = c.transaction()?;
                let have = settle(&tx, (&s, &g), found, Read::Earlier, now, lease)?;
                tx.commit()?;
                Ok(have)
            })
            .await?
    } else {
        found.have
    };
    Ok(crate::catalog::chunks::absent(&ids, &have))
}

/// CommitSnapshot's re-validation (call in the closure that inserts the snapshot): the ids
/// of `refs` (sorted, distinct) that `group` no longer has; condemned ones are revived. Ids
/// of a reference set that a live, complete snapshot of the group lists are present and not
/// condemned by construction ([`crate::catalog::refsets`]): only the others are looked up.
pub fn commit_check(
    conn: &Connection,
    group: &str,
    refs: &[ChunkId],
) -> Result<Vec<ChunkId>, CatalogError> {
    let mut missing = Vec::new();
    for part in refsets::unproven(conn, group, refs)? {
        for id in part {
            if !have_and_revive(conn, group, id)? {
                missing.push(*id);
            }
        }
    }
    Ok(missing)
}

/// What CommitSnapshot's first, read-only check found ([`Checked::look_up`]), for the
/// re-validation in the closure that inserts the snapshot ([`Checked::revalidate`]).
#[derive(Debug, Default)]
pub struct Checked {
    /// Ids `group` does not have: the commit is refused with them.
    pub missing: Vec<ChunkId>,
    /// Ids present but condemned: the insert revives them.
    condemned: Vec<ChunkId>,
    /// The writer's [`chunk_epoch`] when the check ran.
    epoch: i64,
}

impl Checked {
    /// [`Checked::look_up`] on the writer connection alone (tests).
    #[cfg(test)]
    pub fn new(conn: &Connection, group: &str, refs: &[ChunkId]) -> Result<Self, CatalogError> {
        Self::look_up(conn, group, refs, chunk_epoch::current(conn)?)
    }

    /// Looks up every id of `refs` (sorted, distinct), without writing. Every id, not only
    /// those of sets no live snapshot lists ([`commit_check`]'s shortcut): agents ask nothing
    /// about the chunks they presume stored (the file cache's), so this is their one check, and
    /// a catalog that lost chunk rows while snapshots still reference them (damage the
    /// invariants rule out, so the shortcut would trust it) must refuse the commit, which makes
    /// the agent send those chunks again.
    ///
    /// `epoch` is the writer's [`chunk_epoch`], read *before* `conn` began its read transaction
    /// (so a read-only connection can do the lookups, two of them side by side): a chunk
    /// deleted or condemned before that read is seen by `conn`, one deleted or condemned after
    /// it moved the epoch (in the same transaction), and [`Checked::revalidate`] looks again.
    pub fn look_up(
        conn: &Connection,
        group: &str,
        refs: &[ChunkId],
        epoch: i64,
    ) -> Result<Self, CatalogError> {
        let mut out = Checked {
            epoch,
            ..Checked::default()
        };
        let mut st = conn.prepare_cached(
            "SELECT condemned_at IS NOT NULL FROM chunks WHERE dedup_group = ?1 AND id = ?2",
        )?;
        for id in refs {
            let condemned: Option<bool> = st
                .query_row(params![group, &id.0[..]], |r| r.get(0))
                .optional()?;
            match condemned {
                None => out.missing.push(*id),
                Some(true) => out.condemned.push(*id),
                Some(false) => {}
            }
        }
        Ok(out)
    }

    /// Both checks' findings (of two parts of the references, looked up with the same epoch).
    pub fn and(mut self, other: Checked) -> Checked {
        debug_assert_eq!(self.epoch, other.epoch);
        self.missing.extend(other.missing);
        self.condemned.extend(other.condemned);
        self
    }

    /// CommitSnapshot's re-validation, in the closure that inserts the snapshot: the ids of
    /// `refs` that `group` no longer has, condemned ones revived. If no chunk row was deleted
    /// or condemned since the first check (the chunk epoch has not moved), what it found still
    /// holds and only the condemned ids it saw are revived; otherwise every id is checked
    /// again ([`commit_check`]). A 1% change of 2.5 GiB references ~128,000 ids in sets no
    /// earlier snapshot has: the second look-up of each was ~250 ms of the commit.
    pub fn revalidate(
        &self,
        conn: &Connection,
        group: &str,
        refs: &[ChunkId],
    ) -> Result<Vec<ChunkId>, CatalogError> {
        if chunk_epoch::current(conn)? != self.epoch {
            return commit_check(conn, group, refs);
        }
        for id in &self.condemned {
            revive(conn, group, id)?;
        }
        Ok(self.missing.clone())
    }
}

/// Ends `session`'s pins and lease (its snapshot is committed).
pub fn release(conn: &Connection, session: &str) -> Result<(), CatalogError> {
    conn.execute(
        "DELETE FROM session_pins WHERE session_id = ?1",
        params![session],
    )?;
    conn.execute(
        "UPDATE sessions SET lease_until = 0 WHERE id = ?1",
        params![session],
    )?;
    Ok(())
}

/// Drops the pins of sessions whose lease expired before `now`.
pub fn drop_expired(conn: &Connection, now: i64) -> Result<u64, CatalogError> {
    let n = conn.execute(
        "DELETE FROM session_pins WHERE session_id IN (SELECT id FROM sessions WHERE lease_until < ?1)",
        params![now],
    )?;
    Ok(n as u64)
}

/// Errors of [`answer_have`].
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
