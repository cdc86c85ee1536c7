//! Orphans: objects under `packs/`, `refs/`, `snapshots/` and `probe/` that the catalog does
//! not know. A crash between an object's put and the catalog transaction that records it leaves
//! one (acknowledged data is never an orphan: acks follow the catalog commit). They are
//! harmless: nothing references them. This module only lists them; GC removes them.
//!
//! Order matters: the store is listed *before* the catalog is read, so an object whose catalog
//! row commits in between is still recognised. An upload or commit in flight during the scan
//! can show its not-yet-recorded objects as orphans; run it again to tell them apart.

use thiserror::Error;

use super::{Store, StoreError};
use crate::catalog::{Catalog, CatalogError, inventory};

/// The prefixes scanned.
pub const SCANNED_PREFIXES: [&str; 4] = ["packs", "refs", "snapshots", super::probe::PROBE_PREFIX];
/// The default and maximum number of orphans listed.
pub const DEFAULT_LIMIT: usize = 10_000;

#[derive(Debug, Error)]
pub enum OrphansError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// The result of one scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrphanReport {
    /// Key and size of the first `limit` orphans, by key.
    pub orphans: Vec<(String, u64)>,
    pub count: u64,
    pub bytes: u64,
    pub scanned: u64,
    pub truncated: bool,
}

/// Lists the orphans of `store` according to `catalog`, at most `limit` of them.
pub async fn find(
    catalog: &Catalog,
    store: &Store,
    limit: usize,
) -> Result<OrphanReport, OrphansError> {
    let mut listed = Vec::new();
    for prefix in SCANNED_PREFIXES {
        listed.extend(store.list(prefix).await?);
    }
    let known = catalog.run(|c| inventory::known_keys(c)).await?;
    let mut report = OrphanReport {
        scanned: listed.len() as u64,
        ..Default::default()
    };
    for (key, size) in listed {
        if known.contains(&key) {
            continue;
        }
        report.count += 1;
        report.bytes += size;
        if report.orphans.len() < limit {
            report.orphans.push((key, size));
        } else {
            report.truncated = true;
        }
    }
    report.orphans.sort();
    Ok(report)
}
