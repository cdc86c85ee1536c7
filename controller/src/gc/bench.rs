//! GC at scale: a synthetic catalog of 10 million references over 1 million chunks, filled
//! directly in SQLite, then two GC runs timed, with the process's peak resident memory.
//!
//! ```text
//! LIFEBOAT_GC_BENCH_DIR=/dev/shm \
//!   cargo test -p lifeboat-controller --release --lib gc::bench -- --ignored --nocapture
//! ```
//!
//! Layout: 1,000,000 chunks in packs of 16; 100 snapshots, snapshot k referencing the 100,000
//! chunks from 10,000·k (wrapping), so each chunk is referenced ~10 times; snapshots 0–49 are
//! forgotten, which leaves chunks 90,000–499,999 (410,000) unreferenced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use lifeboat_common::ids::ChunkId;
use rusqlite::params;

use super::*;
use crate::catalog::agents;

const CHUNKS: u32 = 1_000_000;
const SNAPSHOTS: u32 = 100;
const PER_SNAPSHOT: u32 = 100_000;
const STEP: u32 = 10_000;
const PACK: u32 = 16;

fn cid(i: u32) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn reset_peak() {
    // Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn fill(c: &mut rusqlite::Connection) -> Result<(), CatalogError> {
    agents::insert(
        c,
        &agents::AgentRow {
            id: "a".into(),
            dedup_group: "g".into(),
            cert_sha256: "fa".into(),
            not_after: 0,
            created_at: 0,
            last_seen: 0,
            snapshots: 0,
        },
    )?;
    let tx = c.transaction()?;
    {
        let mut pk = tx.prepare(
            "INSERT INTO packs (id, key, size, entries, created_at) VALUES (?1, ?2, ?3, ?4, 1)",
        )?;
        let mut ch = tx.prepare(
            "INSERT INTO chunks (dedup_group, id, pack_id, offset, length, blob_hash, created_at)
             VALUES ('g', ?1, ?2, ?3, 1000, ?4, 1)",
        )?;
        for p in 0..CHUNKS.div_ceil(PACK) {
            let name = *blake3::hash(&[b"pack".as_slice(), &p.to_le_bytes()].concat()).as_bytes();
            pk.execute(params![
                &name[..],
                crate::pack::object_key("packs", &name),
                PACK * 1000,
                PACK
            ])?;
            for j in 0..PACK {
                let i = p * PACK + j;
                if i < CHUNKS {
                    ch.execute(params![&cid(i)[..], &name[..], j * 1000, &cid(i)[..]])?;
                }
            }
        }
        let mut sn = tx.prepare(
            "INSERT INTO snapshots (id, agent, source, session_id, started_at, finished_at,
             committed_at, files, dirs, symlinks, logical_bytes, new_logical_bytes, chunks,
             new_chunks, unreadable, files_read, stored_bytes, manifest_ids, reference_count,
             record_key, forgotten_at)
             VALUES (?1, 'a', 'web', 's', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, x'', ?2, ?3, ?4)",
        )?;
        for k in 0..SNAPSHOTS {
            let id = format!("snap{k:04}");
            let forgotten = (k < SNAPSHOTS / 2).then_some(2i64);
            sn.execute(params![
                id,
                PER_SNAPSHOT,
                format!("snapshots/a/{id}"),
                forgotten
            ])?;
            let mut refs: Vec<ChunkId> = (0..PER_SNAPSHOT)
                .map(|r| ChunkId(cid((k * STEP + r) % CHUNKS)))
                .collect();
            refs.sort_unstable();
            crate::catalog::refsets::insert(&tx, &id, "g", &refs)?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes: 10M references; run with --release --ignored --nocapture"]
async fn ten_million_references_over_a_million_chunks() {
    // LIFEBOAT_GC_BENCH_DIR: where the ~2 GB catalog (and its WAL) goes, e.g. /dev/shm.
    let dir = match std::env::var_os("LIFEBOAT_GC_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    };
    let cat = Catalog::open(&dir.path().join("catalog.db")).expect("open");
    let t = Instant::now();
    cat.run_blocking(fill).expect("fill");
    println!("fill: {:.1?}", t.elapsed());
    let store = Store::memory();
    let settings = GcSettings {
        grace: Duration::ZERO,
        margin: Duration::ZERO,
        ..GcSettings::default()
    };
    let base = peak_rss_kib();
    reset_peak();
    let r1 = run_at(&cat, &store, &settings, None, false, 10_000)
        .await
        .expect("gc 1");
    let peak1 = peak_rss_kib();
    reset_peak();
    let r2 = run_at(&cat, &store, &settings, None, false, 20_000)
        .await
        .expect("gc 2");
    let peak2 = peak_rss_kib();
    println!(
        "run 1 (sweep 50 forgotten snapshots, condemn): {} ms, peak RSS {} MiB; condemned {}",
        r1.duration_ms,
        peak1 / 1024,
        r1.condemned
    );
    println!(
        "run 2 (sweep condemned chunks and packs): {} ms, peak RSS {} MiB; swept {} chunks, {} packs",
        r2.duration_ms,
        peak2 / 1024,
        r2.swept.chunks,
        r2.swept.packs
    );
    println!("RSS before GC (after fill): {} MiB", base / 1024);
    println!(
        "phases [sweep, repack, condemn, orphans] ms: run 1 {:?}, run 2 {:?}",
        r1.phase_ms, r2.phase_ms
    );
    assert_eq!(r1.swept.snapshots, u64::from(SNAPSHOTS / 2));
    assert_eq!(r1.condemned, 410_000);
    assert_eq!(r2.swept.chunks, 410_000);
    let left: i64 = cat
        .run_blocking(|c| Ok(c.query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))?))
        .expect("count");
    assert_eq!(left, i64::from(CHUNKS - 410_000));
}
