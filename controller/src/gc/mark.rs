//! Mark: what is live. A chunk row (alias `c`) is live when
//! - a committed snapshot of an agent of its dedup group references it, the snapshot being
//!   either not forgotten or forgotten at or after the run's `:keep` time ([`REFERENCED`],
//!   through the chunk's reference sets, [`crate::catalog::refsets`]), or
//! - an upload session whose lease has not expired pinned it ([`PINNED`], `:now` bound).
//!
//! **Why `:keep`.** HaveChunks does not pin a chunk that a live snapshot of the group
//! references when it answers ([`super::pins::probe`]): that snapshot's reference rows
//! protect it. For that to hold until the session ends, a snapshot forgotten after an open
//! session started must keep its references, and count as live, until that session commits
//! or its lease expires. [`keep_since`] is the earliest `forgotten_at` that still counts: the
//! start of the oldest open session minus the margin, or the run's start when none is open.
//! A snapshot forgotten before it was forgotten before every open session started, so no
//! session can have been told "have" on its account; the sweep removes only those
//! ([`super::sweep::forgotten`]). Proof sketch, for a session `S` told "have" at `t ≥ S.start`
//! because live `P` referenced the chunk: `P.forgotten_at > t ≥ S.start`. If `S` was open when
//! the run computed `keep`, `keep ≤ S.start − margin`; if it started later, `keep ≤` the run's
//! start `< S.start`. Either way `P.forgotten_at ≥ keep`: `P`'s references stay and count.
//!
//! Marking is never materialised: GC evaluates these predicates per chunk inside the
//! transaction that acts on the answer (condemn, revive, sweep), so the decision and the change
//! are atomic and memory does not grow with the catalog. Snapshots flagged by a catalog
//! rebuild (`missing_refs`) still count as live: GC never makes a damaged snapshot worse.

use rusqlite::{Connection, OptionalExtension, params};

use crate::catalog::CatalogError;

/// SQL: chunk `c` is referenced by a snapshot of its group that is live or was forgotten at
/// or after `:keep` ([`keep_since`]).
pub const REFERENCED: &str = "EXISTS (SELECT 1 FROM ref_set_chunks rc
    CROSS JOIN snapshot_sets ss CROSS JOIN snapshots s CROSS JOIN agents a
    WHERE rc.chunk_id = c.id AND ss.set_id = rc.set_id AND s.id = ss.snapshot_id
    AND a.id = s.agent AND a.dedup_group = c.dedup_group
    AND (s.forgotten_at IS NULL OR s.forgotten_at >= :keep))";

/// SQL: chunk `c` is pinned by a session whose lease runs at `:now`.
pub const PINNED: &str =
    "EXISTS (SELECT 1 FROM session_pins p JOIN sessions x ON x.id = p.session_id
    WHERE p.dedup_group = c.dedup_group AND p.chunk_id = c.id AND x.lease_until >= :now)";

/// The start of the oldest upload session whose lease runs at `now` (an open session).
pub fn oldest_open_session(conn: &Connection, now: i64) -> Result<Option<i64>, CatalogError> {
    Ok(conn
        .query_row(
            "SELECT MIN(started_at) FROM sessions WHERE lease_until >= ?1",
            params![now],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten())
}

/// The earliest `forgotten_at` a run at `start` must still treat as live (see the module
/// docs): `min(start, oldest open session start − margin)`.
pub fn keep_since(conn: &Connection, start: i64, margin_ms: i64) -> Result<i64, CatalogError> {
    let by_session =
        oldest_open_session(conn, start)?.map_or(i64::MAX, |s| s.saturating_sub(margin_ms));
    Ok(start.min(by_session))
}

/// The condemn cutoff: only chunks created before it may be condemned.
/// `min(start − grace, oldest open session start) − margin`.
pub fn cutoff(
    conn: &Connection,
    start: i64,
    grace_ms: i64,
    margin_ms: i64,
) -> Result<i64, CatalogError> {
    let by_grace = start.saturating_sub(grace_ms);
    let by_session = oldest_open_session(conn, start)?.unwrap_or(i64::MAX);
    Ok(by_grace.min(by_session).saturating_sub(margin_ms))
}
