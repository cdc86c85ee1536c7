//! Listing a store into SQLite temporary tables (connection-scoped, never in the final catalog),
//! streamed in batches so memory does not grow with the bucket.
//!
//! `rb_objects(region, key, size, modified, kind, blake3)`: one row per listed object; `kind` and
//! `blake3` are set once the object is recognized (from its key for content-addressed packs and
//! segments, after reading it for records and registry objects); rows left without a kind are
//! ignored or invalid.

use object_store::path::Path as ObjectPath;
use rusqlite::{OptionalExtension, params};
use tokio_stream::StreamExt;

use super::RebuildError;
use crate::catalog::{Catalog, CatalogError, to_i64, to_u64};
use crate::store::{Store, StoreError};

/// `rb_objects.region` of the store being rebuilt from.
pub const SOURCE: i64 = 0;
/// `rb_objects.region` of the other region's store.
pub const OTHER: i64 = 1;

/// Creates the temporary tables.
pub async fn create_tables(catalog: &Catalog) -> Result<(), CatalogError> {
    catalog
        .run(|c| {
            // The catalog being built is not live: a crash means starting over (the half-built
            // file is removed), so commits need not wait for the disk; the file is
            // checkpointed and synced before it is renamed into place.
            c.pragma_update(None, "synchronous", "OFF")?;
            c.pragma_update(None, "cache_size", -65_536)?;
            c.execute_batch(
                "CREATE TEMP TABLE rb_objects (
                    region   INTEGER NOT NULL,
                    key      TEXT NOT NULL,
                    size     INTEGER NOT NULL,
                    modified INTEGER NOT NULL,
                    kind     TEXT,
                    blake3   BLOB,
                    PRIMARY KEY (region, key)
                 ) WITHOUT ROWID;
                 CREATE TEMP TABLE rb_entries (
                    chunk_id BLOB NOT NULL,
                    pack_id  BLOB NOT NULL,
                    offset   INTEGER NOT NULL,
                    length   INTEGER NOT NULL,
                    hash     BLOB NOT NULL,
                    PRIMARY KEY (chunk_id, pack_id)
                 ) WITHOUT ROWID;
                 CREATE TEMP TABLE rb_segments (
                    key      TEXT NOT NULL,
                    chunk_id BLOB NOT NULL,
                    PRIMARY KEY (key, chunk_id)
                 ) WITHOUT ROWID;",
            )?;
            Ok(())
        })
        .await
}

/// The content hash a `packs/` or `refs/` key names, if it is well formed
/// (`<prefix>/<2 hex>/<64 hex>`, the two agreeing).
pub fn content_name(key: &str) -> Option<(&'static str, [u8; 32])> {
    let (kind, rest) = if let Some(r) = key.strip_prefix("packs/") {
        ("pack", r)
    } else if let Some(r) = key.strip_prefix("refs/") {
        ("refs", r)
    } else {
        return None;
    };
    let (dir, name) = rest.split_once('/')?;
    if name.len() != 64 || dir.len() != 2 || !name.starts_with(dir) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(name, &mut out).ok()?;
    Some((kind, out))
}

type Listed = (String, u64, i64);

fn insert_batch(
    catalog: &Catalog,
    region: i64,
    batch: Vec<Listed>,
) -> impl std::future::Future<Output = Result<(), CatalogError>> + '_ {
    catalog.run(move |c| {
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO rb_objects (region, key, size, modified, kind, blake3)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (key, size, modified) in &batch {
                let named = content_name(key);
                st.execute(params![
                    region,
                    key,
                    to_i64(*size),
                    modified,
                    named.map(|n| n.0),
                    named.map(|n| n.1.to_vec())
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    })
}

/// Lists every object of `store` into `rb_objects` under `region`; returns how many.
pub async fn list_into(catalog: &Catalog, store: &Store, region: i64) -> Result<u64, RebuildError> {
    let mut stream = store.object_store().list(None::<&ObjectPath>);
    let mut batch: Vec<Listed> = Vec::with_capacity(super::BATCH * 4);
    let mut n = 0u64;
    while let Some(m) = stream.next().await {
        let m = m.map_err(|source| StoreError::Backend {
            op: "list",
            key: String::new(),
            source,
        })?;
        batch.push((
            m.location.to_string(),
            m.size,
            m.last_modified.timestamp_millis(),
        ));
        n += 1;
        if batch.len() >= super::BATCH * 4 {
            insert_batch(catalog, region, std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        insert_batch(catalog, region, batch).await?;
    }
    tracing::info!(store = %store.location(), objects = n, "store listed");
    Ok(n)
}

/// One page of the source listing under `prefix`, after `after`: (key, size, modified ms).
pub async fn page(
    catalog: &Catalog,
    prefix: &'static str,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<(String, u64, i64)>, CatalogError> {
    catalog
        .run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT key, size, modified FROM rb_objects
                 WHERE region = 0 AND key > ?1 AND substr(key, 1, length(?2)) = ?2
                 ORDER BY key LIMIT ?3",
            )?;
            let after = after.unwrap_or_default();
            let rows = st.query_map(params![after, prefix, to_i64(limit as u64)], |r| {
                Ok((r.get(0)?, to_u64(r.get(1)?), r.get(2)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
}

/// Records that a source object was recognized, with the BLAKE3 of its bytes.
pub fn mark(
    conn: &rusqlite::Connection,
    key: &str,
    kind: &str,
    blake3: &[u8; 32],
) -> Result<(), CatalogError> {
    conn.prepare_cached(
        "UPDATE rb_objects SET kind = ?2, blake3 = ?3 WHERE region = 0 AND key = ?1",
    )?
    .execute(params![key, kind, &blake3[..]])?;
    Ok(())
}

/// Marks a source object invalid (skipped: not queued, counted).
pub fn mark_invalid(conn: &rusqlite::Connection, key: &str) -> Result<(), CatalogError> {
    conn.prepare_cached(
        "UPDATE rb_objects SET kind = 'invalid', blake3 = NULL WHERE region = 0 AND key = ?1",
    )?
    .execute([key])?;
    Ok(())
}

/// The size of `key` in the source listing, if listed.
pub fn source_size(conn: &rusqlite::Connection, key: &str) -> Result<Option<u64>, CatalogError> {
    Ok(conn
        .prepare_cached("SELECT size FROM rb_objects WHERE region = 0 AND key = ?1")?
        .query_row([key], |r| r.get::<_, i64>(0))
        .optional()?
        .map(to_u64))
}

/// Source objects no step recognized.
pub async fn ignored(catalog: &Catalog) -> Result<u64, CatalogError> {
    catalog
        .run(|c| {
            Ok(to_u64(c.query_row(
                "SELECT COUNT(*) FROM rb_objects WHERE region = 0 AND kind IS NULL",
                [],
                |r| r.get(0),
            )?))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_names_are_checked() {
        let name = "ab".repeat(32);
        let key = format!("packs/ab/{name}");
        assert_eq!(content_name(&key).map(|n| n.0), Some("pack"));
        assert_eq!(
            content_name(&format!("refs/ab/{name}")).map(|n| n.0),
            Some("refs")
        );
        assert_eq!(
            content_name(&format!("packs/cd/{name}")),
            None,
            "dir mismatch"
        );
        assert_eq!(content_name("packs/ab/short"), None);
        assert_eq!(content_name("snapshots/a/b"), None);
    }
}
