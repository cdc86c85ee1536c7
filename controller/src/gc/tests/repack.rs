//! Repack against an in-memory catalog and store: mostly-dead packs are rewritten, reads of
//! the old location still succeed, the budget defers work, and empty packs go.

use super::*;
use crate::catalog::chunks::ChunkLocation;
use crate::gc::repack::{RepackSettings, Repacked};
use crate::service::reads;

fn location(w: &World, n: u8) -> ChunkLocation {
    w.cat
        .run_blocking(move |c| chunks::location(c, "g", &id(n)))
        .expect("query")
        .expect("chunk row")
}

fn pack_count(w: &World) -> i64 {
    w.cat
        .run_blocking(|c| Ok(c.query_row("SELECT COUNT(*) FROM packs", [], |r| r.get(0))?))
        .expect("count")
}

async fn gc_with(w: &World, at: i64, repack: RepackSettings) -> Report {
    let s = GcSettings {
        repack,
        ..settings()
    };
    run_at(
        &w.cat,
        &w.store,
        &s,
        Some(Duration::from_secs(60)),
        false,
        at,
    )
    .await
    .expect("gc")
}

/// Ten chunks, two still referenced: the first run condemns eight, the second sweeps their rows
/// and then rewrites the pack (20 % live < 50 %): the old pack is deleted, the two live chunks
/// are read back from the new one, and a restore plan made before the repack still reads.
#[tokio::test]
async fn a_mostly_dead_pack_is_rewritten_and_old_plans_still_read() {
    let w = World::new();
    let old = w.pack(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 1000).await;
    w.snapshot("keep", &[2, 7]).await;
    let r1 = w.gc(10_000).await;
    assert_eq!(r1.condemned, 8);
    assert_eq!(
        r1.repacked.candidates, 0,
        "condemned rows still fill the pack"
    );
    let plan = location(&w, 7);
    assert_eq!(plan.pack_key, old);

    let r2 = w.gc(20_000).await;
    assert_eq!(r2.swept.chunks, 8);
    assert_eq!(r2.repacked.candidates, 1, "{r2:?}");
    assert_eq!(r2.repacked.packs, 1);
    assert_eq!(r2.repacked.chunks_moved, 2);
    assert_eq!(
        r2.repacked.bytes_read, 600,
        "blobs 2..=7 in one coalesced range"
    );
    assert!(r2.repacked.bytes_freed > 0, "{r2:?}");
    assert!(!w.exists(&old).await, "old pack deleted");
    let now = location(&w, 7);
    assert_ne!(now.pack_key, old);
    assert!(w.exists(&now.pack_key).await);
    assert_eq!(pack_count(&w), 1);
    let queued = {
        let k = old.clone();
        w.cat
            .run_blocking(move |c| crate::replication::deletes::is_queued(c, &k))
            .expect("queued")
    };
    assert!(
        queued,
        "the secondary's copy of the old pack goes after the delay"
    );

    // A reader holding the old location: the plain read fails, the restore path re-locates.
    let stale = reads::read_located(&w.cat, &w.store, "g", &id(7), &plan)
        .await
        .expect("read after repack");
    assert_eq!(&stale[..], &[7u8; 100][..]);
    for n in [2, 7] {
        let loc = location(&w, n);
        let data = w
            .store
            .get_range(
                &loc.pack_key,
                loc.offset..loc.offset + u64::from(loc.length),
            )
            .await
            .expect("read");
        assert_eq!(&data[..], &[n; 100][..]);
    }
    // The new pack's footer describes exactly the moved chunks (a rebuild can use it).
    let bytes = w.store.get(&now.pack_key).await.expect("get");
    let entries = crate::pack::parse_footer(&bytes).expect("footer");
    assert_eq!(entries.len(), 2);

    let r3 = w.gc(30_000).await;
    assert_eq!(r3.repacked.candidates, 0, "nothing left to repack: {r3:?}");
}

#[tokio::test]
async fn the_budget_defers_candidates_to_the_next_run() {
    let w = World::new();
    w.pack(&[1, 2, 3, 4], 1000).await;
    w.pack(&[5, 6, 7, 8], 1000).await;
    w.snapshot("keep", &[1, 5]).await;
    let small = RepackSettings {
        min_live_percent: 50,
        budget: 1,
    };
    gc_with(&w, 10_000, small).await;
    let r = gc_with(&w, 20_000, small).await;
    assert_eq!(
        (r.repacked.candidates, r.repacked.packs, r.repacked.deferred),
        (2, 1, 1),
        "one pack per run at least, the other waits: {r:?}"
    );
    let r = gc_with(&w, 30_000, small).await;
    assert_eq!((r.repacked.candidates, r.repacked.packs), (1, 1), "{r:?}");
    let r = gc_with(&w, 40_000, small).await;
    assert_eq!(r.repacked.candidates, 0, "{r:?}");
    assert_eq!(pack_count(&w), 2, "two one-chunk packs remain");
}

#[tokio::test]
async fn a_pack_above_the_threshold_or_with_repack_off_is_left_alone() {
    let w = World::new();
    let p = w.pack(&[1, 2, 3], 1000).await;
    w.snapshot("keep", &[1, 2]).await;
    w.gc(10_000).await;
    let r = w.gc(20_000).await;
    assert_eq!(r.repacked.candidates, 0, "2 of 3 live is above 50 %: {r:?}");
    let off = RepackSettings {
        min_live_percent: 0,
        ..Default::default()
    };
    let r = gc_with(&w, 30_000, off).await;
    assert_eq!(r.repacked, Repacked::default());
    let r = gc_with(
        &w,
        40_000,
        RepackSettings {
            min_live_percent: 90,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.repacked.packs, 1, "2 of 3 is below 90 %: {r:?}");
    assert!(!w.exists(&p).await);
}

/// A pack with no chunk row at all (another copy of its chunks won, e.g. in a rebuilt catalog)
/// is dropped once older than the cutoff.
#[tokio::test]
async fn an_empty_pack_is_dropped() {
    let w = World::new();
    let p = w.pack(&[1], 1000).await;
    w.cat
        .run_blocking(|c| Ok(c.execute("DELETE FROM chunks", [])?))
        .expect("delete rows");
    let r = w.gc(500).await;
    assert_eq!(r.repacked.empty_packs, 0, "younger than the cutoff");
    let r = w.gc(10_000).await;
    assert_eq!(r.repacked.empty_packs, 1, "{r:?}");
    assert!(!w.exists(&p).await);
    assert_eq!(pack_count(&w), 0);
}

/// A damaged old pack is skipped, nothing about it changes.
#[tokio::test]
async fn a_pack_that_fails_its_hash_check_is_skipped() {
    let w = World::new();
    let p = w.pack(&[1, 2, 3, 4], 1000).await;
    w.snapshot("keep", &[1]).await;
    w.gc(10_000).await;
    let mut bytes = w.store.get(&p).await.expect("get").to_vec();
    bytes[10] ^= 0xff;
    w.store.delete(&p).await.expect("delete");
    w.store
        .put_new(&p, bytes::Bytes::from(bytes))
        .await
        .expect("put");
    let r = w.gc(20_000).await;
    assert_eq!((r.repacked.skipped, r.repacked.packs), (1, 0), "{r:?}");
    assert!(w.exists(&p).await);
    assert_eq!(location(&w, 1).pack_key, p);
}

/// Commits snapshot `name` of agent `a` (source `web`) referencing `refs` the way CommitSnapshot
/// does (record queued, replication dependencies added); returns its record key.
fn commit(w: &World, name: &str, refs: &[u8], at: i64) -> String {
    use crate::replication::queue::{self, Kind, NewObject};
    let mut all: Vec<ChunkId> = refs.iter().map(|n| id(*n)).collect();
    all.sort();
    all.dedup();
    let key = format!("snapshots/a/{name}");
    let row = SnapshotRow {
        session_id: "s0".into(),
        reference_count: all.len() as u64,
        record_key: key.clone(),
        ..SnapshotRow::sample(name, "a", "web", at)
    };
    let record = NewObject {
        key: key.clone(),
        kind: Kind::Record,
        size: 2,
        blake3: [0; 32],
    };
    w.cat
        .run_blocking(move |c| {
            let tx = c.transaction()?;
            queue::insert_snapshot_in(&tx, &row, &all, "g", &[record], at)?;
            tx.commit()?;
            Ok(())
        })
        .expect("commit");
    key
}

/// The packs the record at `key` waits for, read in `c`.
fn deps(c: &rusqlite::Connection, key: &str) -> rusqlite::Result<Vec<String>> {
    column(
        c,
        "SELECT dep_key FROM replication_deps WHERE record_key = ?1 ORDER BY dep_key",
        key,
    )
}

/// The packs the record at `key` waits for.
fn waits_for(w: &World, key: &str) -> Vec<String> {
    let key = key.to_owned();
    w.cat
        .run_blocking(move |c| Ok(deps(c, &key)?))
        .expect("deps")
}

/// The packs of snapshot `name`'s chunks now, by a lookup per reference.
fn packs_of(w: &World, name: &str) -> Vec<String> {
    let name = name.to_owned();
    w.cat
        .run_blocking(move |c| {
            let probe = format!("probe/{name}");
            crate::replication::queue::add_record_deps(c, &probe, &[], &name, "g")?;
            let out = deps(c, &probe)?;
            c.execute(
                "DELETE FROM replication_deps WHERE record_key = ?1",
                params![probe],
            )?;
            Ok(out)
        })
        .expect("packs")
}

/// Asserts that the record at `key` waits for every pack holding a chunk of snapshot `name`;
/// returns those packs and what the record waits for.
fn waits_for_its_packs(w: &World, key: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let want = packs_of(w, name);
    let got = waits_for(w, key);
    for pack in &want {
        assert!(got.contains(pack), "{key} must wait for {pack}: {got:?}");
    }
    (want, got)
}

/// A commit's record waits for every pack holding one of its chunks, whether they are its
/// parent's (taken from the parent's dependencies, even in a new set), new (looked up, also
/// for a chunk stored before the parent that it did not reference), hold a chunk uploaded
/// again after the parent's commit (a pack queued since), or a chunk a repack moved: checked
/// against a lookup per reference after each commit.
#[tokio::test]
async fn a_commit_waits_for_every_pack_of_its_chunks_through_its_parent_and_a_repack() {
    let w = World::new();
    let first = w.pack(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 1000).await;
    let kept = w.pack(&[20, 21], 1000).await;
    let older = w.pack(&[40], 1000).await;
    let p = commit(&w, "p", &[2, 7, 20], 2000);
    let mut both = vec![first.clone(), kept.clone()];
    both.sort();
    assert_eq!(waits_for(&w, &p), both);
    // Nothing changed: the parent's packs, no lookup per reference needed.
    let same = commit(&w, "same", &[2, 7, 20], 3000);
    assert_eq!(waits_for(&w, &same), packs_of(&w, "same"));
    // A new chunk in a new pack: its set is new, looked up.
    let new = w.pack(&[30], 3500).await;
    let grown = commit(&w, "grown", &[2, 7, 20, 30], 4000);
    let want = packs_of(&w, "grown");
    assert!(want.contains(&new), "{want:?}");
    assert_eq!(waits_for(&w, &grown), want);
    // A chunk stored before the parent, which the parent did not reference: its set is new.
    let wider = commit(&w, "wider", &[2, 7, 20, 30, 40], 4200);
    let want = packs_of(&w, "wider");
    assert!(want.contains(&older), "{want:?}");
    assert_eq!(waits_for(&w, &wider), want);
    // A catalog that lost chunk 20's row (damaged by hand): the agent uploads it again, into a
    // pack of its own. Same sets as the parent, so only "queued since" names that pack.
    w.cat
        .run_blocking(|c| {
            c.execute(
                "DELETE FROM chunks WHERE dedup_group = 'g' AND id = ?1",
                params![&id(20).0[..]],
            )?;
            Ok(())
        })
        .expect("damage");
    let again = w.pack(&[20], 4500).await;
    let healed = commit(&w, "healed", &[2, 7, 20, 30, 40], 5000);
    let (want, _) = waits_for_its_packs(&w, &healed, "healed");
    assert!(want.contains(&again), "{want:?}");
    // The first pack is mostly dead: GC condemns, sweeps, then rewrites 2 and 7 elsewhere.
    w.gc(10_000).await;
    let r = w.gc(20_000).await;
    assert_eq!(r.repacked.packs, 1, "{r:?}");
    let moved = location(&w, 7).pack_key;
    assert_ne!(moved, first);
    let after = commit(&w, "after", &[2, 7, 20, 30, 40], 30_000);
    let (want, got) = waits_for_its_packs(&w, &after, "after");
    assert!(want.contains(&moved), "{want:?}");
    assert!(!got.contains(&first), "the drained pack is gone: {got:?}");
}
