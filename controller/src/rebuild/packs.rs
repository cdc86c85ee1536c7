//! Pack index footers, read with ranged reads (format in [`crate::pack`]).
//!
//! One read of the pack's tail ([`TAIL_READ`] bytes) holds the trailer and, for packs of up to
//! ~860 chunks, the whole index; a larger index costs exactly one more ranged read. The index is
//! validated like [`crate::pack::parse_footer`] (count, bounds, order) before it is used; a pack
//! that fails is skipped and counted invalid, so its chunks are missing and the snapshots that
//! need them are flagged.

use std::sync::Arc;

use lifeboat_common::ids::ChunkId;
use rusqlite::params;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::listing::{self, content_name};
use super::{BATCH, READS_IN_FLIGHT, RebuildError, Report};
use crate::catalog::{Catalog, to_i64};
use crate::pack::{ENTRY_LEN, PACK_MAGIC, PACK_VERSION, PackEntry, PackError, TRAILER_LEN};
use crate::store::Store;

/// Bytes read from the end of a pack first.
pub const TAIL_READ: u64 = 64 << 10;

/// Parses the index entries `index` of a pack whose blob area is `data_end` bytes long.
pub fn parse_index(index: &[u8], data_end: u64) -> Result<Vec<PackEntry>, PackError> {
    let mut entries = Vec::with_capacity(index.len() / ENTRY_LEN);
    let mut next_free = 0u64;
    for (i, e) in index.chunks_exact(ENTRY_LEN).enumerate() {
        let field = |r: std::ops::Range<usize>| &e[r];
        let entry = PackEntry {
            id: ChunkId(field(0..32).try_into().unwrap_or_default()),
            offset: u64::from_le_bytes(field(32..40).try_into().unwrap_or_default()),
            length: u32::from_le_bytes(field(40..44).try_into().unwrap_or_default()),
            hash: field(44..76).try_into().unwrap_or_default(),
        };
        let end = entry.offset.checked_add(u64::from(entry.length));
        if entry.offset < next_free || end.is_none_or(|end| end > data_end) {
            return Err(PackError::BadEntry { index: i });
        }
        next_free = end.unwrap_or(data_end);
        entries.push(entry);
    }
    Ok(entries)
}

/// The entry count and index start of a pack of `size` bytes, from its trailer.
fn trailer(t: &[u8], size: u64) -> Result<(u64, u64), PackError> {
    let n = t.len();
    if n < TRAILER_LEN {
        return Err(PackError::Truncated(n));
    }
    let t = &t[n - TRAILER_LEN..];
    if t[4..8] != PACK_MAGIC {
        return Err(PackError::BadMagic);
    }
    if t[8] != PACK_VERSION {
        return Err(PackError::UnsupportedVersion(t[8]));
    }
    let count = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let len = usize::try_from(size).unwrap_or(usize::MAX);
    let index_len = (count as u64)
        .checked_mul(ENTRY_LEN as u64)
        .filter(|n| n + TRAILER_LEN as u64 <= size)
        .ok_or(PackError::BadCount { count, len })?;
    Ok((index_len, size - TRAILER_LEN as u64 - index_len))
}

/// Reads one pack's index: (entries, reads, bytes read). `Ok(Err)` is an invalid pack.
async fn footer(
    store: &Store,
    key: &str,
    size: u64,
) -> Result<(Result<Vec<PackEntry>, String>, u64, u64), RebuildError> {
    let tail_len = size.min(TAIL_READ);
    let tail = store.get_range(key, size - tail_len..size).await?;
    let (mut reads, mut bytes) = (1u64, tail.len() as u64);
    if tail.len() as u64 != tail_len {
        return Ok((Err("short read".into()), reads, bytes));
    }
    let (index_len, data_end) = match trailer(&tail, size) {
        Ok(v) => v,
        Err(e) => return Ok((Err(e.to_string()), reads, bytes)),
    };
    let need = index_len + TRAILER_LEN as u64;
    let index = if need <= tail_len {
        let start = usize::try_from(tail_len - need).unwrap_or(0);
        tail.slice(start..tail.len() - TRAILER_LEN)
    } else {
        let b = store.get_range(key, data_end..data_end + index_len).await?;
        reads += 1;
        bytes += b.len() as u64;
        if b.len() as u64 != index_len {
            return Ok((Err("short read".into()), reads, bytes));
        }
        b
    };
    Ok((
        parse_index(&index, data_end).map_err(|e| e.to_string()),
        reads,
        bytes,
    ))
}

type Footer = (String, u64, i64, Result<Vec<PackEntry>, String>);

/// Reads every listed pack's footer into `packs` and `rb_entries`.
pub async fn read_all(
    catalog: &Catalog,
    store: &Store,
    report: &mut Report,
) -> Result<(), RebuildError> {
    let limit = Arc::new(Semaphore::new(READS_IN_FLIGHT));
    let mut after = None;
    loop {
        let page = listing::page(catalog, "packs/", after.clone(), BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        let mut set = JoinSet::new();
        for (key, size, modified) in page {
            let (store, limit) = (store.clone(), limit.clone());
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let r = footer(&store, &key, size).await;
                (key, size, modified, r)
            });
        }
        let mut done: Vec<Footer> = Vec::new();
        while let Some(j) = set.join_next().await {
            let (key, size, modified, r) = j.map_err(|e| RebuildError::Task(e.to_string()))?;
            let (entries, reads, bytes) = match r {
                Ok(v) => v,
                Err(e) => (Err(e.to_string()), 0, 0),
            };
            report.objects_read += reads;
            report.bytes_read += bytes;
            done.push((key, size, modified, entries));
        }
        let (packs, invalid) = catalog.run(move |c| record(c, &done)).await?;
        report.packs += packs;
        report.invalid_objects += invalid;
    }
    Ok(())
}

fn record(
    c: &mut rusqlite::Connection,
    done: &[Footer],
) -> Result<(u64, u64), crate::catalog::CatalogError> {
    let tx = c.transaction()?;
    let (mut packs, mut invalid) = (0u64, 0u64);
    for (key, size, modified, entries) in done {
        let (Some((_, name)), Ok(entries)) = (content_name(key), entries) else {
            if let Err(e) = entries {
                tracing::warn!(key = %key, error = %e, "pack skipped: its index cannot be read");
            }
            listing::mark_invalid(&tx, key)?;
            invalid += 1;
            continue;
        };
        tx.prepare_cached(
            "INSERT OR IGNORE INTO packs (id, key, size, entries, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            &name[..],
            key,
            to_i64(*size),
            to_i64(entries.len() as u64),
            modified
        ])?;
        let mut st = tx.prepare_cached(
            "INSERT OR IGNORE INTO rb_entries (chunk_id, pack_id, offset, length, hash)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for e in entries {
            st.execute(params![
                &e.id.0[..],
                &name[..],
                to_i64(e.offset),
                i64::from(e.length),
                &e.hash[..]
            ])?;
        }
        packs += 1;
    }
    tx.commit()?;
    Ok((packs, invalid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{PackBuilder, parse_footer};

    #[tokio::test]
    async fn footer_matches_parse_footer_with_one_or_two_reads() {
        let store = Store::memory();
        for (n, blob) in [(3usize, 10usize), (2000, 40)] {
            let mut b = PackBuilder::new();
            for i in 0..n {
                let id = ChunkId(*blake3::hash(&(i as u64).to_le_bytes()).as_bytes());
                assert!(b.push(id, &vec![i as u8; blob]));
            }
            let p = b.finish();
            store.put_new(&p.key, p.bytes.clone()).await.expect("put");
            let (entries, reads, _) = footer(&store, &p.key, p.bytes.len() as u64)
                .await
                .expect("read");
            assert_eq!(
                entries.expect("valid"),
                parse_footer(&p.bytes).expect("parse")
            );
            assert_eq!(
                reads,
                if n * ENTRY_LEN > TAIL_READ as usize {
                    2
                } else {
                    1
                }
            );
        }
        store
            .put_new(
                "packs/xx/bad",
                bytes::Bytes::from_static(b"not a pack at all"),
            )
            .await
            .expect("put");
        let (entries, _, _) = footer(&store, "packs/xx/bad", 17).await.expect("read");
        assert!(entries.is_err());
    }
}
