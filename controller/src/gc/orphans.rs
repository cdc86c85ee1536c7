//! Orphans: objects under `packs/`, `refs/` and `snapshots/` that the catalog does not know
//! (left by a crash between a put and the catalog transaction that would have recorded it), and
//! older than the grace period, are tombstoned and then deleted by the same path as swept
//! objects ([`super::sweep::finish`]), which re-checks the catalog under the key's delete guard.
//!
//! The store is listed *before* the catalog is read, so an object recorded in between is known.
//! An object still being written holds its writer guard ([`super::guard`]) until it is
//! recorded, and is younger than the grace period anyway.

use std::collections::HashSet;

use object_store::path::Path as ObjectPath;
use tokio_stream::StreamExt;

use super::sweep;
use crate::catalog::{Catalog, CatalogError, inventory};
use crate::store::{Store, StoreError};

/// The prefixes scanned for orphans.
pub const PREFIXES: [&str; 3] = ["packs", "refs", "snapshots"];

/// What an orphan scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub scanned: u64,
    /// Unknown and older than the cutoff: tombstoned (deleted by `finish`).
    pub orphans: u64,
    pub bytes: u64,
    /// Unknown but younger than the grace period: left alone this run.
    pub young: u64,
}

fn kind_of(key: &str) -> &'static str {
    if key.starts_with("packs/") {
        "pack"
    } else if key.starts_with("refs/") {
        "refs"
    } else {
        "record"
    }
}

/// Lists the store, then tombstones every object the catalog does not know that was last
/// modified before `older_than` (unix ms). With `dry_run` only counts.
pub async fn scan(
    catalog: &Catalog,
    store: &Store,
    older_than: i64,
    now: i64,
    dry_run: bool,
) -> Result<Found, OrphanScanError> {
    let mut listed = Vec::new();
    for prefix in PREFIXES {
        let p = ObjectPath::from(prefix);
        let mut s = store.object_store().list(Some(&p));
        while let Some(m) = s.next().await {
            let m = m.map_err(|e| OrphanScanError::List {
                prefix,
                message: e.to_string(),
            })?;
            let modified = m.last_modified.timestamp_millis();
            listed.push((m.location.to_string(), m.size, modified));
        }
    }
    let (known, seen, tombstoned) = catalog
        .run(|c| {
            let known = inventory::known_keys(c)?;
            let seen = sweep::snapshots_seen(c)?;
            let t: HashSet<String> = sweep::tombstones(c)?.into_iter().map(|t| t.key).collect();
            Ok((known, seen, t))
        })
        .await?;
    let mut found = Found {
        scanned: listed.len() as u64,
        ..Default::default()
    };
    let mut doomed = Vec::new();
    for (key, size, modified) in listed {
        if known.contains(&key) || tombstoned.contains(&key) {
            continue;
        }
        if modified >= older_than {
            found.young += 1;
            continue;
        }
        found.orphans += 1;
        found.bytes += size;
        doomed.push((key, size));
    }
    if !dry_run && !doomed.is_empty() {
        catalog
            .run(move |c| {
                let tx = c.transaction()?;
                {
                    let mut st = tx.prepare(
                        "INSERT OR IGNORE INTO gc_tombstones (key, kind, size, created_at, snapshots_seen)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?;
                    for (key, size) in &doomed {
                        st.execute(rusqlite::params![
                            key,
                            kind_of(key),
                            crate::catalog::to_i64(*size),
                            now,
                            seen
                        ])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
    }
    Ok(found)
}

/// Errors of [`scan`].
#[derive(Debug, thiserror::Error)]
pub enum OrphanScanError {
    #[error("cannot list {prefix}/ in the store: {message}")]
    List {
        prefix: &'static str,
        message: String,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
