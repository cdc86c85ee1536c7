//! Garbage collection: mark and sweep over the catalog, safe under load, with no client lock.
//!
//! The controller is the only writer of the chunk index, so GC coordinates with uploads through
//! the catalog (one connection, every closure on it atomic) and, for object keys, through
//! in-process key guards ([`guard`]). One run ([`run`]):
//!
//! 1. **finish** the object deletes a previous run left (crash, failed delete: tombstones);
//! 2. **sweep** ([`sweep::sweep`], one transaction): revive condemned chunks that are live again;
//!    delete the rows of chunks condemned by an earlier run and still neither referenced nor
//!    pinned; delete packs left without chunks; then ([`sweep::forgotten`], one transaction per
//!    snapshot) snapshots forgotten before every open session started ([`mark`] explains
//!    why later ones wait: HaveChunks relies on live snapshots' references instead of pinning
//!    what they reference) (rows, record, unused reference segments); every object so
//!    released is tombstoned in the transaction that releases it; then **delete the objects**
//!    ([`sweep::finish`]): primary now, secondary after `[secondary] delete_delay`;
//! 3. **repack** ([`repack`]): packs whose live bytes fell below `[gc] repack_below` percent
//!    are rewritten (live blobs copied into new packs, rows switched in one transaction, the old
//!    packs tombstoned and deleted), within `[gc] repack_budget` bytes of I/O per run;
//! 4. **condemn** ([`condemn`]): chunks created before the cutoff
//!    `min(start − grace, oldest open session start) − margin` that no live snapshot references
//!    and no session pins ([`mark`]) get `condemned_at` (batched transactions);
//! 5. **orphans** ([`orphans`]): objects the catalog does not know, older than the grace, are
//!    tombstoned and deleted like swept ones;
//! 6. pins of sessions whose lease expired are dropped.
//!
//! A chunk is therefore deleted only after two runs agreed it was dead, the second one
//! re-checking in the transaction that deletes it. Ingest cooperates ([`pins`]): HaveChunks and
//! uploads pin what they answer or store and revive condemned chunks (after a HEAD of the pack);
//! a commit re-validates its references in the closure that inserts the snapshot and gets the
//! missing ids back otherwise (the agent re-sends them).
//!
//! **Key reuse.** Packs and segments are content-named, so a re-upload can produce a key GC is
//! deleting. The writer holds the key's guard from before its put until its catalog row
//! commits; GC deletes only under the key's delete guard and after re-checking the catalog
//! (so the key is never deleted once re-recorded, and a writer arriving during the delete waits
//! and writes the object anew). A re-upload also gets a fresh replication copy row (the sweep
//! drops the old one), and a pending secondary delete of that key is cancelled when it falls due
//! because the key exists in the primary again ([`crate::replication::deletes`]).
//!
//! | running together with GC | safe because |
//! |---|---|
//! | ingest (HaveChunks, upload) | pins, or a live snapshot's references (kept while the session is open), + revive in the answer's transaction; new chunks are younger than the cutoff; key guards |
//! | commit | references re-validated (and condemned ones revived) atomically with the insert |
//! | restore (ReadChunks) | reads only live snapshots' chunks, which are never condemned; a chunk whose pack was repacked away since the lookup is looked up again ([`crate::service::reads`]) |
//! | forget | only sets `forgotten_at`; GC frees the objects in its next runs |
//! | another GC | serialized by [`RUN_LOCK`] |
//! | repack | part of a GC run (same lock); switches rows only where they still point at the old pack |
//! | replication | copy rows of deleted keys are dropped in the sweep transaction; secondary deletes are delayed |
//! | rebuild-catalog | offline (no server running), never concurrent |

pub mod condemn;
pub mod guard;
pub mod mark;
pub mod orphans;
pub mod pins;
pub mod repack;
pub mod sweep;
pub mod worker;

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::catalog::{Catalog, CatalogError};
use crate::store::Store;

/// One GC run at a time per process.
pub static RUN_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Default grace period: objects younger than this are never condemned nor taken for orphans.
/// A day covers any plausible gap between a put and its catalog row and clock skew, while
/// freeing space daily.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Default margin subtracted from the cutoff (clock granularity, in-flight calls).
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(600);
/// Default session lease: renewed by HaveChunks and upload batches (at most once a minute,
/// [`pins::renew_slack`]); one hour of silence
/// from a session means it is dead (agents send batches every few seconds while working).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
/// Default interval of the GC worker (0: no worker, `lifeboatctl gc` only).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Validated `[gc]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcSettings {
    pub grace: Duration,
    pub margin: Duration,
    pub lease: Duration,
    /// Zero: no periodic worker.
    pub interval: Duration,
    pub repack: repack::RepackSettings,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            grace: DEFAULT_GRACE,
            margin: DEFAULT_MARGIN,
            lease: DEFAULT_LEASE,
            interval: DEFAULT_INTERVAL,
            repack: repack::RepackSettings::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum GcError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("GC orphan scan failed: {0}")]
    Orphans(#[from] orphans::OrphanScanError),
}

/// What one run did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub dry_run: bool,
    pub cutoff: i64,
    pub swept: sweep::Swept,
    pub finished: sweep::Finished,
    pub condemned: u64,
    pub condemned_bytes: u64,
    pub orphans: orphans::Found,
    pub repacked: repack::Repacked,
    pub expired_pins: u64,
    /// Forgotten snapshots kept (references and all) because an upload session that was open
    /// when they were forgotten may rely on them ([`mark`]); a later run removes them.
    pub forgotten_waiting: u64,
    pub duration_ms: u64,
    /// Milliseconds spent in the catalog sweep, the repack, the condemn pass and the orphan
    /// scan.
    pub phase_ms: [u64; 4],
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Runs one GC pass, starting now by the controller's judging clock
/// ([`crate::fleet::clock`], which a testing build lets tests move). `secondary_delay`: queue secondary deletes with this delay (`None`: no
/// secondary). `dry_run`: count only; nothing changes.
pub async fn run(
    catalog: &Catalog,
    store: &Store,
    settings: &GcSettings,
    secondary_delay: Option<Duration>,
    dry_run: bool,
) -> Result<Report, GcError> {
    run_at(
        catalog,
        store,
        settings,
        secondary_delay,
        dry_run,
        crate::fleet::clock::now_ms(),
    )
    .await
}

/// [`run`] with an explicit start time (unix ms), for tests that drive time.
pub async fn run_at(
    catalog: &Catalog,
    store: &Store,
    settings: &GcSettings,
    secondary_delay: Option<Duration>,
    dry_run: bool,
    start: i64,
) -> Result<Report, GcError> {
    let _one = RUN_LOCK.lock().await;
    let began = Instant::now();
    let mut report = Report {
        dry_run,
        ..Default::default()
    };
    if !dry_run {
        report.finished = sweep::finish(catalog, store, secondary_delay).await?;
    }
    let t = Instant::now();
    let (grace, margin) = (millis(settings.grace), millis(settings.margin));
    let keep = catalog
        .run(move |c| mark::keep_since(c, start, margin))
        .await?;
    report.swept = catalog
        .run(move |c| sweep::sweep(c, start, (start, keep), dry_run))
        .await?;
    let (f, waiting) = sweep::forgotten(catalog, (start, keep), dry_run).await?;
    report.swept.snapshots = f.snapshots;
    report.swept.tombstoned += f.tombstoned;
    report.forgotten_waiting = waiting;
    report.phase_ms[0] = elapsed_ms(t);
    if !dry_run {
        let f = sweep::finish(catalog, store, secondary_delay).await?;
        merge(&mut report.finished, &f);
    }
    report.cutoff = catalog
        .run(move |c| mark::cutoff(c, start, grace, margin))
        .await?;
    let t = Instant::now();
    report.repacked = repack::run(
        catalog,
        store,
        settings.repack,
        report.cutoff,
        start,
        dry_run,
    )
    .await?;
    if !dry_run {
        let f = sweep::finish(catalog, store, secondary_delay).await?;
        merge(&mut report.finished, &f);
    }
    report.phase_ms[1] = elapsed_ms(t);
    let t = Instant::now();
    let mut cursor = condemn::Cursor::default();
    let cutoff = report.cutoff;
    loop {
        let cur = cursor.clone();
        let (n, bytes, next) = catalog
            .run(move |c| condemn::batch(c, &cur, cutoff, (start, keep), dry_run))
            .await?;
        report.condemned += n;
        report.condemned_bytes += bytes;
        match next {
            Some(c) => cursor = c,
            None => break,
        }
    }
    report.phase_ms[2] = elapsed_ms(t);
    let t = Instant::now();
    report.orphans =
        orphans::scan(catalog, store, start.saturating_sub(grace), start, dry_run).await?;
    report.phase_ms[3] = elapsed_ms(t);
    if !dry_run {
        let f = sweep::finish(catalog, store, secondary_delay).await?;
        merge(&mut report.finished, &f);
        report.expired_pins = catalog.run(move |c| pins::drop_expired(c, start)).await?;
    }
    report.duration_ms = elapsed_ms(began);
    tracing::info!(
        dry_run,
        condemned = report.condemned,
        swept_chunks = report.swept.chunks,
        swept_packs = report.swept.packs,
        swept_snapshots = report.swept.snapshots,
        forgotten_waiting = report.forgotten_waiting,
        repacked = report.repacked.packs,
        objects_deleted = report.finished.deleted,
        bytes_reclaimed = report.finished.bytes,
        orphans = report.orphans.orphans,
        duration_ms = report.duration_ms,
        "garbage collection done"
    );
    Ok(report)
}

fn elapsed_ms(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn merge(a: &mut sweep::Finished, b: &sweep::Finished) {
    a.deleted += b.deleted;
    a.bytes += b.bytes;
    a.kept += b.kept;
    a.deferred = b.deferred;
    a.failed = b.failed;
}

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;
