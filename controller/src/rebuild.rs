//! `lifeboat-controller rebuild-catalog`: a working catalog from the bucket alone.
//!
//! The catalog is an index of the bucket; everything it holds that matters is in objects:
//! packs (with index footers), reference segments and snapshot records, and the registry
//! ([`crate::registry`]). The rebuild, in order:
//! 1. **list** the chosen store (primary or secondary) into a temporary table, streamed, and the
//!    other region's store when one is configured ([`listing`]);
//! 2. **registry**: read every `registry/` object and replay it ([`crate::registry::replay`]):
//!    agents, admins, grants, revocations;
//! 3. **packs**: read each pack's index footer with ranged reads (the tail, one more read only
//!    when the index is larger) into `packs` and a temporary entry table ([`packs`]);
//! 4. **snapshots**: read each record and its reference segments (each segment read once, even
//!    when many snapshots share it), insert `snapshots` and their reference sets ([`snapshots`]);
//! 5. **chunks**: derive the `chunks` rows for each snapshot's dedup group, flag snapshots with
//!    missing references, add the records' pack dependencies ([`chunks`]);
//! 6. **replication queue**: every object gets its copy row, done when the other region already
//!    holds it with the same size, pending (re-queued) otherwise ([`requeue`]).
//!
//! **How a chunk gets its dedup group.** Neither the pack footer nor the pack key names one.
//! The group comes from the reference sets: a chunk referenced by a snapshot of agent A gets a
//! row for A's group (from the registry), pointing at a pack that holds it — preferring a pack
//! that is provably A's group's ([`chunks`] explains how, and why it matters for isolation). A
//! chunk that no snapshot references (an upload whose commit never happened) gets no row: the
//! agent's next backup is told it is missing and re-sends it (bandwidth once, never
//! correctness).
//!
//! **Missing references.** A snapshot whose reference set cannot be read completely, or names a
//! chunk no pack holds, is inserted with `missing_refs` = the number missing and is never listed
//! or resolved as restorable; the report names it.
//!
//! Safety: the new catalog is built at `<catalog>.rebuilding` and renamed into place only when
//! complete; an existing catalog is refused unless `--force`, which moves it aside to
//! `<catalog>.replaced-<unix ms>` (never deletes it). Stop the controller first. Memory is
//! bounded: listings and pack entries live in SQLite temporary tables, objects are read in
//! batches of [`BATCH`] with at most [`READS_IN_FLIGHT`] reads in flight, one transaction per
//! batch.

pub mod chunks;
pub mod listing;
pub mod packs;
pub mod requeue;
pub mod snapshots;

use std::path::{Path, PathBuf};
use std::time::Instant;

use lifeboat_common::clock::now_unix_ms;
use serde::Serialize;
use thiserror::Error;

use crate::catalog::{Catalog, CatalogError};
use crate::config::{ControllerConfig, StoreConfig};
use crate::store::{Store, StoreError};

/// Objects handled per batch (and per catalog transaction).
pub const BATCH: usize = 256;
/// Store reads in flight at most.
pub const READS_IN_FLIGHT: usize = 16;

#[derive(Debug, Error)]
pub enum RebuildError {
    #[error(
        "catalog {0} already exists; stop the controller and pass --force to move it aside (it is kept as {0}.replaced-<time>), or point catalog.path elsewhere"
    )]
    CatalogExists(PathBuf),
    #[error(
        "--region secondary needs a [secondary] store in the controller config; add it or rebuild from the primary"
    )]
    NoSecondary,
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a store read task failed: {0}")]
    Task(String),
}

/// Which store the catalog is rebuilt from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Primary,
    Secondary,
}

/// How to rebuild.
#[derive(Debug, Clone)]
pub struct Options {
    pub region: Region,
    /// Move an existing catalog aside instead of refusing.
    pub force: bool,
}

/// What a rebuild did (printed to stderr, and as JSON with `--json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub region: Option<Region>,
    pub catalog: PathBuf,
    /// Where the previous catalog was moved (with `--force`).
    pub moved_aside: Option<PathBuf>,
    pub duration_ms: u64,
    /// Objects listed in the chosen store.
    pub objects_listed: u64,
    /// Objects listed in the other region's store (0 without one).
    pub other_objects_listed: u64,
    /// GET and ranged-GET requests made.
    pub objects_read: u64,
    pub bytes_read: u64,
    pub agents: u64,
    pub revoked_agents: u64,
    /// Agents that have snapshots but no registry objects: recreated revoked, with their own
    /// dedup group; re-enroll them with `lifeboatctl token create --agent NAME`.
    pub placeholder_agents: Vec<String>,
    pub admins: u64,
    pub grants: u64,
    pub packs: u64,
    pub chunks: u64,
    pub snapshots: u64,
    /// Snapshots with references no pack holds: kept, never listed as restorable.
    pub flagged_snapshots: Vec<String>,
    /// Objects that could not be read or parsed (named in the log), skipped.
    pub invalid_objects: u64,
    /// Objects under prefixes the catalog does not index (`keys/`, `registry/role`, …).
    pub ignored_objects: u64,
    /// Objects the other region already holds (size match): their copy rows are done.
    pub already_replicated: u64,
    /// Objects queued for copying to the region that lacks them.
    pub requeued: u64,
}

/// The path the new catalog is built at.
fn building_path(catalog: &Path) -> PathBuf {
    let mut s = catalog.as_os_str().to_owned();
    s.push(".rebuilding");
    PathBuf::from(s)
}

fn sidecars(p: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [p.to_owned(), with("-wal"), with("-shm")]
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RebuildError + 'a {
    move |source| RebuildError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Removes a half-built catalog left by an interrupted rebuild (ours, never the live one).
fn clear_building(p: &Path) -> Result<(), RebuildError> {
    for f in sidecars(p) {
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &f)(e)),
        }
    }
    Ok(())
}

/// Moves `from` (and its WAL files) to `to` (and its WAL files).
fn move_catalog(from: &Path, to: &Path) -> Result<(), RebuildError> {
    for (a, b) in sidecars(from).iter().zip(sidecars(to).iter()) {
        match std::fs::rename(a, b) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && a != from => {}
            Err(e) => return Err(io("move", a)(e)),
        }
    }
    Ok(())
}

fn open_store(cfg: &StoreConfig) -> Result<Store, StoreError> {
    match cfg {
        StoreConfig::Local { path } => Store::local(path),
        StoreConfig::S3(s3) => Store::s3(s3),
    }
}

/// Rebuilds the catalog named by `cfg` from the bucket.
pub async fn run(cfg: &ControllerConfig, opts: &Options) -> Result<Report, RebuildError> {
    let started = Instant::now();
    if cfg.catalog.exists() && !opts.force {
        return Err(RebuildError::CatalogExists(cfg.catalog.clone()));
    }
    let primary = open_store(&cfg.store)?;
    let secondary = cfg.secondary.as_ref().map(open_store).transpose()?;
    let (source, other) = match (opts.region, secondary) {
        (Region::Primary, s) => (primary, s),
        (Region::Secondary, Some(s)) => (s, Some(primary)),
        (Region::Secondary, None) => return Err(RebuildError::NoSecondary),
    };
    let building = building_path(&cfg.catalog);
    clear_building(&building)?;
    let catalog = Catalog::open(&building)?;
    let mut report = Report {
        region: Some(opts.region),
        catalog: cfg.catalog.clone(),
        ..Report::default()
    };
    build(&catalog, &source, other.as_ref(), opts.region, &mut report).await?;
    // Busy (and left to the drop below) if the catalog's checkpoint thread is running one:
    // the last connection to close, the thread's, checkpoints what is left and syncs it.
    catalog
        .run(|c| {
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok(())
        })
        .await?;
    drop(catalog);
    if cfg.catalog.exists() {
        let mut aside = cfg.catalog.as_os_str().to_owned();
        aside.push(format!(".replaced-{}", now_unix_ms()));
        let aside = PathBuf::from(aside);
        move_catalog(&cfg.catalog, &aside)?;
        tracing::warn!(catalog = %cfg.catalog.display(), moved_to = %aside.display(), "previous catalog moved aside");
        report.moved_aside = Some(aside);
    }
    move_catalog(&building, &cfg.catalog)?;
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        duration_ms = report.duration_ms,
        objects_listed = report.objects_listed,
        objects_read = report.objects_read,
        snapshots = report.snapshots,
        flagged = report.flagged_snapshots.len(),
        "catalog rebuilt"
    );
    Ok(report)
}

/// Every step, into an open (empty) catalog.
pub async fn build(
    catalog: &Catalog,
    source: &Store,
    other: Option<&Store>,
    region: Region,
    report: &mut Report,
) -> Result<(), RebuildError> {
    let mut step = Instant::now();
    listing::create_tables(catalog).await?;
    report.objects_listed = listing::list_into(catalog, source, listing::SOURCE).await?;
    if let Some(o) = other {
        match listing::list_into(catalog, o, listing::OTHER).await {
            Ok(n) => report.other_objects_listed = n,
            Err(e) => {
                tracing::warn!(store = %o.location(), error = %e, "cannot list the other region; every object is queued for it");
            }
        }
    }
    let mut done = |name: &'static str| {
        let ms = step.elapsed().as_millis() as u64;
        tracing::info!(step = name, ms, "rebuild step done");
        step = Instant::now();
    };
    done("list");
    snapshots::registry(catalog, source, report).await?;
    snapshots::escrow(catalog, source, report).await?;
    done("registry");
    packs::read_all(catalog, source, report).await?;
    done("packs");
    snapshots::read_all(catalog, source, report).await?;
    done("snapshots");
    chunks::derive_all(catalog, report).await?;
    done("chunks");
    requeue::queue_all(catalog, other.is_some(), region, report).await?;
    report.ignored_objects = listing::ignored(catalog).await?;
    done("queue");
    Ok(())
}

/// The human summary printed to stderr.
pub fn summary(r: &Report) -> String {
    let mut s = format!(
        "catalog rebuilt in {:.1} s from the {} store: {} objects listed, {} reads ({} bytes)\n  \
         {} packs, {} chunks, {} snapshots ({} flagged), {} agents ({} revoked), {} admins, {} grants\n  \
         replication: {} already in the other region, {} queued; {} invalid and {} ignored objects",
        r.duration_ms as f64 / 1000.0,
        match r.region {
            Some(Region::Secondary) => "secondary",
            _ => "primary",
        },
        r.objects_listed,
        r.objects_read,
        r.bytes_read,
        r.packs,
        r.chunks,
        r.snapshots,
        r.flagged_snapshots.len(),
        r.agents,
        r.revoked_agents,
        r.admins,
        r.grants,
        r.already_replicated,
        r.requeued,
        r.invalid_objects,
        r.ignored_objects,
    );
    for id in &r.flagged_snapshots {
        s.push_str(&format!(
            "\n  flagged: snapshot {id} references chunks no pack holds; it is not restorable"
        ));
    }
    for a in &r.placeholder_agents {
        s.push_str(&format!(
            "\n  agent {a} has snapshots but no registry objects: recreated revoked; re-enroll it with `lifeboatctl token create --agent {a}`"
        ));
    }
    if let Some(p) = &r.moved_aside {
        s.push_str(&format!("\n  previous catalog kept as {}", p.display()));
    }
    s
}

#[cfg(test)]
mod tests;
