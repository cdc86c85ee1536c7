//! GC phases against an in-memory catalog and store (times driven explicitly).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use lifeboat_common::ids::ChunkId;
use rusqlite::params;

use super::*;
use crate::catalog::agents;
use crate::catalog::chunks::{self, SessionRow};
use crate::catalog::snapshots::{self, SnapshotRow};
use crate::pack::PackBuilder;
use crate::refset;

/// The first column of the rows `sql` selects with one text parameter bound (`?1`).
pub fn column<T: rusqlite::types::FromSql>(
    c: &rusqlite::Connection,
    sql: &str,
    param: &str,
) -> rusqlite::Result<Vec<T>> {
    let mut st = c.prepare(sql)?;
    let rows = st.query_map(params![param], |r| r.get::<_, T>(0))?;
    rows.collect()
}

pub(crate) fn id(n: u8) -> ChunkId {
    ChunkId(*blake3::hash(&[n]).as_bytes())
}

pub(crate) struct World {
    pub cat: Catalog,
    pub store: Store,
}

impl World {
    pub fn new() -> World {
        World::with_catalog(Catalog::open_in_memory().expect("catalog"))
    }

    /// A world whose catalog is `cat` (a file-backed one has read-only connections).
    pub fn with_catalog(cat: Catalog) -> World {
        let w = World {
            cat,
            store: Store::memory(),
        };
        w.cat
            .run_blocking(|c| {
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
                chunks::create_session(
                    c,
                    &SessionRow {
                        id: "s0".into(),
                        agent: "a".into(),
                        source: "web".into(),
                        started_at: 0,
                        stored_bytes: 0,
                        stored_chunks: 0,
                    },
                )
            })
            .expect("setup");
        w
    }

    /// Puts a pack of `ids` (created at `at`) and records it; returns its key.
    pub async fn pack(&self, ids: &[u8], at: i64) -> String {
        let mut b = PackBuilder::new();
        for n in ids {
            b.push(id(*n), &[*n; 100]);
        }
        let p = b.finish();
        self.store
            .put_new(&p.key, p.bytes.clone())
            .await
            .expect("put");
        let key = p.key.clone();
        self.cat
            .run_blocking(move |c| chunks::record_pack(c, "g", "s0", &p, at))
            .expect("record");
        key
    }

    /// Writes a snapshot's segments and record, then inserts it; returns its record key.
    pub async fn snapshot(&self, name: &str, refs: &[u8]) -> String {
        let mut all: Vec<ChunkId> = refs.iter().map(|n| id(*n)).collect();
        all.sort();
        all.dedup();
        for s in refset::segments(&all) {
            self.store
                .put_new(&s.key, Bytes::from(s.bytes))
                .await
                .expect("put seg");
        }
        let key = format!("snapshots/a/{name}");
        self.store
            .put_new(&key, Bytes::from_static(b"{}"))
            .await
            .expect("put record");
        let row = SnapshotRow {
            session_id: "s0".into(),
            reference_count: all.len() as u64,
            record_key: key.clone(),
            ..SnapshotRow::sample(name, "a", "web", 1)
        };
        self.cat
            .run_blocking(move |c| snapshots::insert(c, &row, &all))
            .expect("insert");
        key
    }

    pub fn forget(&self, name: &str) {
        let ids = vec![name.to_owned()];
        self.cat
            .run_blocking(move |c| snapshots::forget(c, &ids, 5))
            .expect("forget");
    }

    pub fn chunk_state(&self, n: u8) -> Option<Option<i64>> {
        self.cat
            .run_blocking(move |c| {
                use rusqlite::OptionalExtension;
                Ok(c.query_row(
                    "SELECT condemned_at FROM chunks WHERE dedup_group = 'g' AND id = ?1",
                    params![&id(n).0[..]],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()?)
            })
            .expect("query")
    }

    /// UploadChunks' skip of already-stored blobs ([`pins::pin_present`]) for chunks `ids` of
    /// group `g`, at `now` with `lease`; returns the ids found stored.
    pub fn pin_present(
        &self,
        session: &str,
        ids: &[u8],
        now: i64,
        lease: Duration,
    ) -> std::collections::HashSet<ChunkId> {
        let covers = self.cat.covers();
        let (session, ids) = (
            session.to_owned(),
            ids.iter().map(|&n| id(n)).collect::<Vec<_>>(),
        );
        self.cat
            .run_blocking(move |c| pins::pin_present(c, &covers, &session, "g", &ids, now, lease))
            .expect("pin_present")
    }

    /// The chunks pinned to `session`, in id order.
    pub fn pinned(&self, session: &str) -> Vec<ChunkId> {
        let session = session.to_owned();
        self.cat
            .run_blocking(move |c| {
                let ids: Vec<Vec<u8>> = column(
                    c,
                    "SELECT chunk_id FROM session_pins WHERE session_id = ?1 ORDER BY chunk_id",
                    &session,
                )?;
                Ok(ids
                    .iter()
                    .map(|b| ChunkId::try_from(&b[..]).expect("a 32-byte chunk id"))
                    .collect())
            })
            .expect("pins")
    }

    /// The session's `lease_until`.
    pub fn lease_of(&self, session: &str) -> i64 {
        let id = session.to_owned();
        self.cat
            .run_blocking(move |c| {
                Ok(c.query_row(
                    "SELECT lease_until FROM sessions WHERE id = ?1",
                    [&id],
                    |r| r.get::<_, i64>(0),
                )?)
            })
            .expect("lease")
    }

    /// Opens upload session `id` of agent `a` started at `started_at`, its lease renewed at
    /// `renewed` for `lease`.
    pub fn open_session(&self, id: &str, started_at: i64, renewed: i64, lease: Duration) {
        let id = id.to_owned();
        self.cat
            .run_blocking(move |c| {
                chunks::create_session(
                    c,
                    &SessionRow {
                        id: id.clone(),
                        agent: "a".into(),
                        source: "web".into(),
                        started_at,
                        stored_bytes: 0,
                        stored_chunks: 0,
                    },
                )?;
                pins::renew(c, &id, renewed, lease)
            })
            .expect("session");
    }

    pub async fn exists(&self, key: &str) -> bool {
        self.store.head(key).await.is_ok()
    }

    pub async fn gc(&self, at: i64) -> Report {
        run_at(
            &self.cat,
            &self.store,
            &settings(),
            Some(Duration::from_secs(60)),
            false,
            at,
        )
        .await
        .expect("gc")
    }
}

pub(crate) fn settings() -> GcSettings {
    GcSettings {
        grace: Duration::ZERO,
        margin: Duration::ZERO,
        ..GcSettings::default()
    }
}

#[tokio::test]
async fn condemn_then_sweep_frees_dead_packs_and_forgotten_snapshots() {
    let w = World::new();
    let p1 = w.pack(&[1, 2], 1000).await;
    let p2 = w.pack(&[3], 1000).await;
    let keep = w.snapshot("s-keep", &[1]).await;
    let gone = w.snapshot("s-gone", &[1, 3]).await;
    w.forget("s-gone");

    let dry = run_at(&w.cat, &w.store, &settings(), None, true, 10_000)
        .await
        .expect("dry run");
    assert_eq!(
        dry.swept.snapshots, 1,
        "would remove the forgotten snapshot"
    );
    assert_eq!(w.chunk_state(3), Some(None), "dry run changes nothing");
    assert!(w.exists(&gone).await);

    let r1 = w.gc(10_000).await;
    assert_eq!(r1.swept.snapshots, 1);
    assert!(!w.exists(&gone).await, "forgotten record deleted");
    assert!(w.exists(&keep).await);
    assert_eq!(r1.condemned, 2, "chunks 2 and 3: {r1:?}");
    assert_eq!(
        w.chunk_state(1),
        Some(None),
        "referenced chunk never condemned"
    );
    assert_eq!(w.chunk_state(2), Some(Some(10_000)));
    assert!(
        w.exists(&p2).await,
        "condemned, not deleted, in the first run"
    );

    let r2 = w.gc(20_000).await;
    assert_eq!(r2.swept.chunks, 2);
    assert_eq!(r2.swept.packs, 1);
    assert_eq!(w.chunk_state(3), None);
    assert!(!w.exists(&p2).await, "dead pack deleted");
    assert!(w.exists(&p1).await, "pack with a live chunk kept");
    assert!(r2.finished.bytes > 0);
    let queued = w
        .cat
        .run_blocking(move |c| crate::replication::deletes::is_queued(c, &p2))
        .expect("queued");
    assert!(queued, "secondary delete queued with the delay");
    // The kept snapshot's segments are still there.
    for k in refset::segment_keys([id(1)]) {
        assert!(w.exists(&k).await, "live segment kept");
    }
}

#[tokio::test]
async fn pins_and_references_revive_condemned_chunks() {
    let w = World::new();
    w.pack(&[1, 2, 3], 1000).await;
    w.gc(10_000).await;
    assert_eq!(w.chunk_state(1), Some(Some(10_000)));
    // A dedup hit (HaveChunks) revives and pins chunk 1.
    let missing = pins::answer_have(
        &w.cat,
        &w.store,
        "s0",
        "g",
        vec![id(1), id(9)],
        DEFAULT_LEASE,
    )
    .await
    .expect("have");
    assert_eq!(missing, vec![id(9)]);
    assert_eq!(w.chunk_state(1), Some(None), "revived");
    // A snapshot referencing chunk 2 was committed meanwhile: the sweep revives it.
    w.snapshot("s1", &[2]).await;
    let r = w.gc(20_000).await;
    assert_eq!(r.swept.revived, 1, "{r:?}");
    assert_eq!(r.swept.chunks, 1, "only chunk 3 swept");
    assert_eq!(w.chunk_state(3), None);
    // Chunk 1 is pinned by a live lease: not condemned again.
    assert_eq!(w.chunk_state(1), Some(None));
    assert_eq!(w.chunk_state(2), Some(None));
    // The commit check reports swept chunks and revives condemned ones.
    let missing = w
        .cat
        .run_blocking(|c| pins::commit_check(c, "g", &[id(1), id(3)]))
        .expect("check");
    assert_eq!(missing, vec![id(3)]);
}

/// CommitSnapshot's re-validation trusts its first check (reviving what it saw condemned) only
/// while no chunk row was deleted or condemned since; a sweep in between makes it look every id
/// up again and report the swept ones.
#[tokio::test]
async fn the_commit_revalidation_trusts_its_first_check_only_while_no_chunk_went() {
    let w = World::new();
    w.pack(&[1, 2, 3], 1000).await;
    w.gc(10_000).await;
    assert_eq!(w.chunk_state(1), Some(Some(10_000)));
    let refs = [id(1), id(2), id(3)];
    let first = w
        .cat
        .run_blocking(|c| pins::Checked::new(c, "g", &[id(1), id(2)]))
        .expect("check");
    assert!(first.missing.is_empty());
    let missing = w
        .cat
        .run_blocking(|c| first.revalidate(c, "g", &[id(1), id(2)]))
        .expect("revalidate");
    assert!(missing.is_empty());
    assert_eq!(w.chunk_state(1), Some(None), "revived");
    assert_eq!(w.chunk_state(3), Some(Some(10_000)), "not referenced: left");

    let first = w
        .cat
        .run_blocking(move |c| pins::Checked::new(c, "g", &refs))
        .expect("check");
    assert!(first.missing.is_empty());
    w.gc(20_000).await;
    assert_eq!(w.chunk_state(3), None, "swept after the first check");
    let missing = w
        .cat
        .run_blocking(move |c| first.revalidate(c, "g", &refs))
        .expect("revalidate");
    assert_eq!(missing, vec![id(3)]);
}

/// The commit's first check looks up every id, even those of a set a live snapshot lists: a
/// catalog that lost a chunk row while the snapshot still references it refuses the commit
/// (agents presume their cached chunks stored and ask nothing), so the agent sends it again.
#[tokio::test]
async fn the_commit_check_finds_a_lost_row_in_a_set_a_live_snapshot_lists() {
    let w = World::new();
    w.pack(&[1, 2, 3], 1000).await;
    w.snapshot("s1", &[1, 2, 3]).await;
    w.cat
        .run_blocking(|c| {
            c.execute("DELETE FROM chunks WHERE id = ?1", params![&id(2).0[..]])?;
            Ok(())
        })
        .expect("lose a row");
    let refs = [id(1), id(2), id(3)];
    let checked = w
        .cat
        .run_blocking(move |c| pins::Checked::new(c, "g", &refs))
        .expect("check");
    assert_eq!(checked.missing, vec![id(2)]);
}

/// An upload that skips a blob as already stored (UploadChunks, `pin_present`, probe and writes
/// in one transaction) revives it if GC had condemned it, and pins it.
#[tokio::test]
async fn an_upload_skipping_a_condemned_blob_revives_and_pins_it() {
    let w = World::new();
    w.pack(&[61], 1000).await;
    w.gc(10_000).await;
    assert_eq!(w.chunk_state(61), Some(Some(10_000)));
    let have = w.pin_present("s0", &[61, 62], 20_000, DEFAULT_LEASE);
    assert_eq!(have.into_iter().collect::<Vec<_>>(), vec![id(61)]);
    assert_eq!(w.chunk_state(61), Some(None), "revived");
    assert_eq!(w.pinned("s0"), vec![id(61)], "pinned");
}

#[tokio::test]
async fn condemned_chunk_whose_pack_is_gone_is_answered_missing() {
    let w = World::new();
    let p = w.pack(&[1], 1000).await;
    w.gc(10_000).await;
    w.store.delete(&p).await.expect("lose the pack");
    let missing = pins::answer_have(&w.cat, &w.store, "s0", "g", vec![id(1)], DEFAULT_LEASE)
        .await
        .expect("have");
    assert_eq!(
        missing,
        vec![id(1)],
        "the agent is asked to upload it again"
    );
    assert_eq!(w.chunk_state(1), None);
}

#[tokio::test]
async fn a_reused_key_is_never_deleted() {
    let w = World::new();
    let p = w.pack(&[1], 1000).await;
    w.gc(10_000).await;
    // Sweep the catalog rows, but stop before the object delete (as a crash would).
    let swept = w
        .cat
        .run_blocking(|c| sweep::sweep(c, 20_000, (20_000, 20_000), false))
        .expect("sweep");
    assert_eq!(swept.packs, 1);
    // The same content is uploaded again before the delete runs: same key, recorded again.
    let again = w.pack(&[1], 30_000).await;
    assert_eq!(again, p);
    let f = sweep::finish(&w.cat, &w.store, None).await.expect("finish");
    assert_eq!((f.deleted, f.kept), (0, 1));
    assert!(w.exists(&p).await, "re-recorded pack kept");
    assert_eq!(w.chunk_state(1), Some(None));
}

#[tokio::test]
async fn a_writer_holding_the_key_defers_the_delete() {
    let w = World::new();
    let p = w.pack(&[77], 1000).await;
    w.gc(10_000).await;
    w.cat
        .run_blocking(|c| sweep::sweep(c, 20_000, (20_000, 20_000), false))
        .expect("sweep");
    let writer = guard::writing(vec![p.clone()]).await;
    let f = sweep::finish(&w.cat, &w.store, None).await.expect("finish");
    assert_eq!(f.deferred, 1);
    assert!(w.exists(&p).await);
    drop(writer);
    let f = sweep::finish(&w.cat, &w.store, None).await.expect("finish");
    assert_eq!(f.deleted, 1, "next run deletes it");
    assert!(!w.exists(&p).await);
}

#[tokio::test]
async fn orphans_older_than_the_grace_are_deleted() {
    let w = World::new();
    let known = w.pack(&[1], 1000).await;
    w.snapshot("s1", &[1]).await;
    w.store
        .put_new("packs/ab/orphan", Bytes::from_static(b"junk"))
        .await
        .expect("put");
    let now = lifeboat_common::clock::now_unix_ms();
    let young = orphans::scan(&w.cat, &w.store, now - 3_600_000, now, false)
        .await
        .expect("scan");
    assert_eq!((young.orphans, young.young), (0, 1));
    let found = orphans::scan(&w.cat, &w.store, now + 60_000, now, false)
        .await
        .expect("scan");
    assert_eq!((found.orphans, found.bytes), (1, 4));
    let f = sweep::finish(&w.cat, &w.store, None).await.expect("finish");
    assert_eq!(f.deleted, 1);
    assert!(!w.exists("packs/ab/orphan").await);
    assert!(w.exists(&known).await);
}

#[tokio::test]
async fn open_sessions_hold_the_cutoff_back() {
    let w = World::new();
    w.open_session("s1", 5_000, 9_000, Duration::from_secs(10));
    let cut = w
        .cat
        .run_blocking(|c| mark::cutoff(c, 10_000, 1_000, 100))
        .expect("cutoff");
    assert_eq!(cut, 4_900, "oldest open session start − margin");
    let cut = w
        .cat
        .run_blocking(|c| mark::cutoff(c, 100_000, 1_000, 100))
        .expect("cutoff");
    assert_eq!(cut, 98_900, "lease expired: grace decides");
}

#[tokio::test]
async fn a_failed_object_delete_is_retried_by_the_next_run() {
    use crate::fault_store::{Fault, FaultStore, Op};
    let faulty = FaultStore::new(Store::memory().object_store().clone());
    let mut w = World::new();
    w.store = Store::from_object_store(faulty.clone());
    let p = w.pack(&[41], 1000).await;
    w.gc(10_000).await;
    faulty.inject(Op::Delete, "", Fault::FailAll);
    let r = w.gc(20_000).await;
    assert_eq!(
        (r.swept.packs, r.finished.failed),
        (1, 1),
        "{r:?} deletes={}",
        faulty.calls(Op::Delete)
    );
    assert!(w.exists(&p).await, "still there after the failed delete");
    let left = w.cat.run_blocking(|c| sweep::tombstones(c)).expect("list");
    assert_eq!(left.len(), 1, "the tombstone stays for the next run");
    faulty.clear();
    let r = w.gc(30_000).await;
    assert_eq!(r.finished.deleted, 1);
    assert!(!w.exists(&p).await);
}

#[tokio::test]
async fn pins_of_an_expired_lease_stop_protecting() {
    let w = World::new();
    w.pack(&[51], 1000).await;
    // Pinned by s0 with a lease that ends at 1000 + 1 s.
    w.pin_present("s0", &[51], 1000, Duration::from_secs(1));
    let r = w.gc(1_500).await;
    assert_eq!(
        r.condemned, 0,
        "pinned while the lease runs (and the session holds the cutoff)"
    );
    let r = w.gc(10_000).await;
    assert_eq!(
        r.condemned, 1,
        "lease expired mid-upload: no longer protected"
    );
    assert_eq!(r.expired_pins, 1);
}

/// HaveChunks' lookups run on a read-only connection: with the writer's connection held by
/// someone else, ids the session's parent references are answered (nothing to write); an id it
/// does not reference is pinned once the writer is free; an id swept between the lookups and
/// that write is answered missing. A reader refuses writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn have_chunks_looks_up_beside_the_writer_and_writes_only_pins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::with_catalog(Catalog::open(&dir.path().join("c.db")).expect("catalog"));
    w.pack(&[1, 2, 3, 4], 1000).await;
    w.snapshot("p", &[1, 2]).await;
    let now = lifeboat_common::clock::now_unix_ms();
    w.open_session("s1", now - 1000, now, DEFAULT_LEASE);

    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (free_tx, free_rx) = std::sync::mpsc::channel::<()>();
    let cat = w.cat.clone();
    let holder = std::thread::spawn(move || {
        cat.run_blocking(|_| {
            held_tx.send(()).expect("tell");
            free_rx.recv().expect("wait");
            Ok(())
        })
    });
    held_rx.recv().expect("writer held");
    let ask = pins::answer_have(
        &w.cat,
        &w.store,
        "s1",
        "g",
        vec![id(1), id(9), id(2)],
        DEFAULT_LEASE,
    );
    // A guard against hanging if the lookups wait for the writer (the failure this catches).
    let missing = tokio::time::timeout(Duration::from_secs(30), ask)
        .await
        .expect("answered while the writer is held")
        .expect("have");
    assert_eq!(missing, vec![id(9)]);
    let write = w
        .cat
        .read(|c| Ok(c.execute("DELETE FROM session_pins", [])?))
        .await;
    assert!(write.is_err(), "a reader must refuse writes: {write:?}");
    free_tx.send(()).expect("free");
    holder.join().expect("holder").expect("holder ran");

    let missing = pins::answer_have(&w.cat, &w.store, "s1", "g", vec![id(3)], DEFAULT_LEASE)
        .await
        .expect("have");
    assert!(missing.is_empty());
    assert_eq!(w.pinned("s1"), vec![id(3)], "3 is not the parent's: pinned");

    let covers = w.cat.covers();
    let found = w
        .cat
        .read(move |c| {
            let tx = c.transaction()?;
            pins::probe(&tx, &covers, "s1", "g", &[id(4)], now, DEFAULT_LEASE)
        })
        .await
        .expect("probe");
    assert_eq!(found.settle, vec![id(4)]);
    w.cat
        .run_blocking(|c| {
            c.execute("DELETE FROM chunks WHERE id = ?1", params![&id(4).0[..]])?;
            Ok(())
        })
        .expect("sweep by hand");
    let have = w
        .cat
        .run_blocking(move |c| {
            pins::settle(
                c,
                ("s1", "g"),
                found,
                pins::Read::Earlier,
                now,
                DEFAULT_LEASE,
            )
        })
        .expect("settle");
    assert!(have.is_empty(), "gone since the lookup: missing");
    assert_eq!(w.pinned("s1").len(), 1, "nothing pinned for it");
}

mod repack;

#[tokio::test]
async fn a_fresh_lease_is_not_rewritten_on_every_call() {
    let w = World::new();
    let hour = Duration::from_secs(3600);
    w.cat
        .run_blocking(move |c| pins::renew(c, "s0", 1_000, hour))
        .expect("renew");
    assert_eq!(w.lease_of("s0"), 3_601_000);
    w.cat
        .run_blocking(move |c| pins::renew(c, "s0", 30_000, hour))
        .expect("renew");
    assert_eq!(
        w.lease_of("s0"),
        3_601_000,
        "within the one-minute slack: unchanged"
    );
    w.cat
        .run_blocking(move |c| pins::renew(c, "s0", 62_000, hour))
        .expect("renew");
    assert_eq!(
        w.lease_of("s0"),
        3_662_000,
        "renewed once the slack is used up"
    );
}

/// An agent that presumes chunks stored makes no HaveChunks calls while it reads them, and asks
/// about no ids from time to time to keep its session: that call renews a lease that is due.
#[tokio::test]
async fn asking_about_no_ids_renews_a_due_lease() {
    let w = World::new();
    let now = lifeboat_common::clock::now_unix_ms();
    let hour = Duration::from_secs(3600);
    w.open_session("s1", now - 600_000, now - 600_000, hour);
    let before = w.lease_of("s1");
    let missing = pins::answer_have(&w.cat, &w.store, "s1", "g", Vec::new(), hour)
        .await
        .expect("have");
    assert!(missing.is_empty());
    assert!(
        w.lease_of("s1") >= now + 3_600_000 && w.lease_of("s1") > before,
        "renewed"
    );
}

/// The chunks a session uploads carry no pin rows (the upload path records them with
/// `record_pack_in` and pins only rows another upload won): the open session's start bounds the
/// cutoff, so GC leaves them alone while its lease runs, and condemns them once it expired.
#[tokio::test]
async fn chunks_a_session_uploads_are_protected_by_its_lease_without_pins() {
    let w = World::new();
    w.open_session("s1", 5_000, 5_000, Duration::from_secs(60));
    let mut b = PackBuilder::new();
    b.push(id(61), &[61; 100]);
    let p = b.finish();
    w.store.put_new(&p.key, p.bytes.clone()).await.expect("put");
    let pinned = w
        .cat
        .run_blocking(move |c| {
            let tx = c.transaction()?;
            let (_, existing) = chunks::record_pack_in(&tx, "g", "s1", &p, 6_000)?;
            pins::pin(&tx, "s1", "g", &existing)?;
            tx.commit()?;
            Ok(c.query_row("SELECT COUNT(*) FROM session_pins", [], |r| {
                r.get::<_, i64>(0)
            })?)
        })
        .expect("record");
    assert_eq!(pinned, 0, "no pin row for an uploaded chunk");
    for at in [10_000, 30_000, 64_000] {
        let r = w.gc(at).await;
        assert_eq!(r.condemned, 0, "lease runs until 65,000; GC at {at}: {r:?}");
    }
    assert_eq!(w.chunk_state(61), Some(None));
    let r = w.gc(70_000).await;
    assert_eq!(r.condemned, 1, "lease expired, never committed: {r:?}");
}

/// HaveChunks pins only what no live snapshot references; a snapshot forgotten after an open
/// session started keeps its references (and counts as live) until that session ends, so the
/// chunks the session was told it has stay. One forgotten before the session started protects
/// nothing: its chunks were pinned.
#[tokio::test]
async fn present_chunks_are_protected_by_live_references_or_pins() {
    let w = World::new();
    w.pack(&[71, 72, 73], 1_000).await;
    w.snapshot("p", &[71]).await;
    w.snapshot("q", &[73]).await;
    let forget_at = |name: &str, at: i64| {
        let ids = vec![name.to_owned()];
        w.cat
            .run_blocking(move |c| snapshots::forget(c, &ids, at))
            .expect("forget");
    };
    forget_at("q", 4_000);
    w.open_session("s1", 5_000, 5_000, Duration::from_secs(60));
    let have = w.pin_present("s1", &[71, 72, 73], 6_000, Duration::from_secs(60));
    assert_eq!(have.len(), 3, "all three are stored");
    assert_eq!(
        w.pinned("s1"),
        vec![id(72), id(73)],
        "71 is referenced by live p: no pin"
    );
    forget_at("p", 7_000);
    let r = w.gc(10_000).await;
    assert_eq!(
        r.swept.snapshots, 1,
        "q, forgotten before s1 started: {r:?}"
    );
    assert_eq!(r.forgotten_waiting, 1, "p waits for s1: {r:?}");
    assert_eq!(
        r.condemned, 0,
        "71 by p's references, 72 and 73 by pins: {r:?}"
    );
    let r = w.gc(70_000).await;
    assert_eq!(
        r.swept.snapshots, 1,
        "s1's lease expired at 65,000: p goes: {r:?}"
    );
    assert_eq!(r.forgotten_waiting, 0);
    assert_eq!(r.condemned, 3, "{r:?}");
}
