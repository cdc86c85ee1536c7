//! Scrub: read back a random sample of replicated objects from the secondary and check each
//! against the size and BLAKE3 its queue row recorded (copies only check what the store reports,
//! so that replication does not double cross-region traffic; the scrub is the sampled read-back).
//!
//! A missing or damaged object is logged at warn with its key, counted
//! (`lifeboat_replication_scrub_damaged_total`; every object read is counted in
//! `lifeboat_replication_scrub_checked_total`) and its copy row re-armed
//! ([`queue::requeue_copy`]): the worker copies the primary's verified bytes over it. Keys with a
//! delete row ([`super::deletes`]) are never sampled, so a scrub cannot undo a delete.
//!
//! A secondary that cannot be read at all (unreachable, refused) is an error of the scrub, not
//! damage: nothing is re-queued for it. Runs periodically in the worker (`scrub_interval`,
//! `scrub_sample`) and on demand (`AdminService.ScrubSecondary`, `lifeboatctl replication scrub`).

use std::sync::atomic::{AtomicU64, Ordering};

use lifeboat_common::clock::now_unix_ms;
use rusqlite::{Connection, params};
use thiserror::Error;
use tracing::{info, warn};

use super::queue;
use super::worker::content_hash;
use crate::catalog::{Catalog, CatalogError, to_i64, to_u64};
use crate::config::MAX_SCRUB_SAMPLE;
use crate::store::{Store, StoreError};

#[derive(Debug, Error)]
pub enum ScrubError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(
        "scrub stopped: the secondary store could not be read ({0}); check that it is reachable and its credentials allow reads"
    )]
    Unreadable(StoreError),
}

/// Totals since the controller started, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct ScrubCounters {
    pub checked: AtomicU64,
    pub damaged: AtomicU64,
}

impl ScrubCounters {
    /// The Prometheus counters (text exposition format).
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        for (name, help, v) in [
            (
                "lifeboat_replication_scrub_checked_total",
                "Objects read back from the secondary by scrubs since the controller started.",
                self.checked.load(Ordering::Relaxed),
            ),
            (
                "lifeboat_replication_scrub_damaged_total",
                "Objects a scrub found missing or damaged in the secondary (each re-queued).",
                self.damaged.load(Ordering::Relaxed),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        }
        out
    }
}

/// A replicated object to read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampled {
    pub key: String,
    pub size: Option<u64>,
    pub blake3: Option<[u8; 32]>,
}

/// The outcome of one scrub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub checked: u64,
    pub checked_bytes: u64,
    /// Missing or damaged keys, each re-queued for copying.
    pub damaged: Vec<String>,
}

/// Up to `n` done copy rows chosen at random (none with a delete row).
pub fn sample(conn: &Connection, n: u32) -> Result<Vec<Sampled>, CatalogError> {
    let mut st = conn.prepare_cached(
        "SELECT q.key, q.size, q.blake3 FROM replication_queue q
         WHERE q.op = 'copy' AND q.done_at IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM replication_queue d WHERE d.key = q.key AND d.op = 'delete')
         ORDER BY RANDOM() LIMIT ?1",
    )?;
    let rows = st.query_map(params![to_i64(u64::from(n))], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<i64>>(1)?,
            r.get::<_, Option<Vec<u8>>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (key, size, hash) = row?;
        let blake3 = match hash {
            Some(h) => Some(<[u8; 32]>::try_from(h.as_slice()).map_err(|_| {
                CatalogError::Corrupt(format!("replication row of {key}: hash is not 32 bytes"))
            })?),
            None => content_hash(&key),
        };
        out.push(Sampled {
            key,
            size: size.map(to_u64),
            blake3,
        });
    }
    Ok(out)
}

/// Why the secondary's copy is bad, or `None` when it matches the row.
fn check(s: &Sampled, bytes: &[u8]) -> Option<String> {
    let len = bytes.len() as u64;
    if let Some(size) = s.size
        && size != len
    {
        return Some(format!("size {len} instead of {size}"));
    }
    match s.blake3 {
        Some(h) if blake3::hash(bytes).as_bytes() != &h => {
            Some("BLAKE3 differs from the recorded one".to_owned())
        }
        _ => None,
    }
}

/// Reads back up to `n` random replicated objects from `secondary`; re-queues the bad ones.
pub async fn scrub(
    catalog: &Catalog,
    secondary: &Store,
    n: u32,
    counters: &ScrubCounters,
) -> Result<ScrubReport, ScrubError> {
    let picked = catalog.run(move |c| sample(c, n)).await?;
    let mut report = ScrubReport::default();
    for s in picked {
        let problem = match secondary.get(&s.key).await {
            Ok(bytes) => {
                report.checked_bytes += bytes.len() as u64;
                check(&s, &bytes)
            }
            Err(StoreError::NotFound { .. }) => Some("missing".to_owned()),
            Err(e) => return Err(ScrubError::Unreadable(e)),
        };
        report.checked += 1;
        counters.checked.fetch_add(1, Ordering::Relaxed);
        let Some(reason) = problem else { continue };
        counters.damaged.fetch_add(1, Ordering::Relaxed);
        warn!(key = %s.key, reason = %reason, "scrub: secondary object damaged; re-queued for copying from the primary");
        let (key, note) = (s.key.clone(), format!("scrub: secondary copy {reason}"));
        catalog
            .run(move |c| queue::requeue_copy(c, &key, &note, now_unix_ms()))
            .await?;
        report.damaged.push(s.key);
    }
    info!(
        checked = report.checked,
        bytes = report.checked_bytes,
        damaged = report.damaged.len(),
        "scrub finished"
    );
    Ok(report)
}

/// `AdminService.ScrubSecondary`: `configured = false` without a secondary; `sample = 0` means
/// the configured `scrub_sample`; larger than [`MAX_SCRUB_SAMPLE`] is clamped.
pub async fn answer(
    state: &crate::service::State,
    req: &lifeboat_proto::v1::ScrubSecondaryRequest,
) -> Result<lifeboat_proto::v1::ScrubSecondaryResponse, crate::error::ServiceError> {
    use crate::error::ServiceError;
    let Some(secondary) = &state.secondary else {
        return Ok(Default::default());
    };
    let n = match req.sample {
        0 => state.replication.settings.scrub_sample,
        n => n.min(MAX_SCRUB_SAMPLE),
    };
    let r = scrub(&state.catalog, secondary, n, &state.replication.scrub)
        .await
        .map_err(|e| match e {
            ScrubError::Catalog(c) => ServiceError::Catalog(c),
            e @ ScrubError::Unreadable(_) => ServiceError::Unavailable(e.to_string()),
        })?;
    Ok(lifeboat_proto::v1::ScrubSecondaryResponse {
        configured: true,
        checked: r.checked,
        checked_bytes: r.checked_bytes,
        damaged_keys: r.damaged,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::replication::queue::{Kind, NewObject};

    async fn replicated(catalog: &Catalog, secondary: &Store, key: &str, bytes: &'static [u8]) {
        secondary
            .put_new(key, Bytes::from_static(bytes))
            .await
            .expect("put");
        let obj = NewObject {
            key: key.to_owned(),
            kind: Kind::Record,
            size: bytes.len() as u64,
            blake3: *blake3::hash(bytes).as_bytes(),
        };
        catalog
            .run(move |c| {
                queue::enqueue(c, &obj, 1)?;
                c.execute(
                    "UPDATE replication_queue SET done_at = 2 WHERE key = ?1",
                    [&obj.key],
                )?;
                Ok(())
            })
            .await
            .expect("queue");
    }

    #[tokio::test]
    async fn finds_missing_and_damaged_copies_and_requeues_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let secondary = Store::local(tmp.path()).expect("store");
        let catalog = Catalog::open_in_memory().expect("catalog");
        replicated(&catalog, &secondary, "snapshots/a/good", b"good record").await;
        replicated(&catalog, &secondary, "snapshots/a/bad", b"bad record").await;
        replicated(&catalog, &secondary, "snapshots/a/gone", b"gone record").await;
        replicated(&catalog, &secondary, "snapshots/a/deleted", b"deleted").await;
        catalog
            .run(|c| {
                super::super::deletes::enqueue(
                    c,
                    "snapshots/a/deleted",
                    3,
                    std::time::Duration::ZERO,
                )
            })
            .await
            .expect("delete row");
        std::fs::write(tmp.path().join("snapshots/a/bad"), b"bad recorD").expect("damage");
        std::fs::remove_file(tmp.path().join("snapshots/a/gone")).expect("remove");
        std::fs::remove_file(tmp.path().join("snapshots/a/deleted")).expect("remove");

        let counters = ScrubCounters::default();
        let r = scrub(&catalog, &secondary, 100, &counters)
            .await
            .expect("scrub");
        assert_eq!(r.checked, 3, "the deleted key is not sampled: {r:?}");
        let mut damaged = r.damaged.clone();
        damaged.sort();
        assert_eq!(damaged, ["snapshots/a/bad", "snapshots/a/gone"]);
        assert_eq!(counters.damaged.load(Ordering::Relaxed), 2);
        assert_eq!(counters.checked.load(Ordering::Relaxed), 3);
        let text = counters.prometheus_text();
        assert!(
            text.contains("lifeboat_replication_scrub_damaged_total 2\n"),
            "{text}"
        );
        let s = catalog.run(|c| queue::summary(c)).await.expect("summary");
        assert_eq!(s.pending_objects, 2, "both re-queued: {s:?}");
        let still = catalog
            .run(|c| queue::record_replicated(c, "snapshots/a/bad"))
            .await
            .expect("replicated?");
        assert!(!still, "a damaged record no longer counts as replicated");

        // A sample of 1 reads one object.
        let r = scrub(&catalog, &secondary, 1, &counters)
            .await
            .expect("scrub");
        assert!(r.checked <= 1, "{r:?}");
    }
}
