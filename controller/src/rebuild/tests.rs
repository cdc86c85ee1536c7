//! In-process rebuilds of small buckets written in the real formats (memory stores).

use bytes::Bytes;
use lifeboat_common::ids::ChunkId;

use super::*;
use crate::pack::PackBuilder;
use crate::record::{RECORD_FORMAT, SnapshotRecord, record_key};
use crate::refset;
use crate::registry::{Change, Pending};

fn cid(n: u8) -> ChunkId {
    ChunkId(*blake3::hash(&[n]).as_bytes())
}

async fn put(store: &Store, key: &str, bytes: impl Into<Bytes>) {
    store.put_new(key, bytes.into()).await.expect("put");
}

async fn agent(store: &Store, name: &str, group: &str) {
    let p = Pending::agent(
        name,
        1,
        Change::Added {
            group: group.into(),
            cert_sha256: format!("fp-{name}"),
            not_after_unix_ms: 9,
        },
    );
    put(store, &p.key, p.bytes).await;
}

/// A pack holding `ids` (blob bytes tagged with `tag`); returns its key.
async fn pack(store: &Store, ids: &[ChunkId], tag: u8) -> String {
    let mut b = PackBuilder::new();
    for id in ids {
        b.push(*id, &[tag; 16]);
    }
    let p = b.finish();
    put(store, &p.key, p.bytes).await;
    p.key
}

/// A snapshot of `agent` referencing `ids`; returns its id.
async fn snapshot(store: &Store, agent: &str, n: u8, ids: &[ChunkId]) -> String {
    let mut sorted = ids.to_vec();
    sorted.sort();
    let segs = refset::segments(&sorted);
    for s in &segs {
        put(store, &s.key, s.bytes.clone()).await;
    }
    let id = format!("{:020x}", u64::from(n) + 0x1000);
    let rec = SnapshotRecord {
        format: RECORD_FORMAT,
        id: id.clone(),
        agent: agent.into(),
        source: "web".into(),
        started_at_unix_ms: 1,
        finished_at_unix_ms: 2,
        committed_at_unix_ms: i64::from(n),
        stats: Default::default(),
        stored_bytes: 0,
        manifest_ids: vec![],
        ref_segments: segs.iter().map(|s| s.key.clone()).collect(),
        reference_count: sorted.len() as u64,
    };
    put(store, &record_key(agent, &id), rec.to_bytes()).await;
    id
}

fn pack_of(cat: &Catalog, group: &str, id: ChunkId) -> Option<String> {
    cat.run_blocking(|c| Ok(crate::catalog::chunks::location(c, group, &id)?.map(|l| l.pack_key)))
        .expect("location")
}

#[tokio::test]
async fn chunks_go_to_their_groups_pack_and_gaps_are_flagged() {
    let store = Store::memory();
    agent(&store, "a-01", "a").await;
    agent(&store, "b-01", "b").await;
    // Group a's pack holds x and y; an agent of group b uploaded its own blob under x.
    let (x, y, z) = (cid(1), cid(2), cid(3));
    let pa = pack(&store, &[x, y], 0xaa).await;
    let pb = pack(&store, &[x], 0xbb).await;
    snapshot(&store, "a-01", 1, &[x, y]).await;
    snapshot(&store, "b-01", 2, &[x]).await;
    // A snapshot referencing z, which no pack holds.
    let gap = snapshot(&store, "a-01", 3, &[x, z]).await;
    put(&store, "snapshots/a-01/garbage", Bytes::from_static(b"{")).await;
    let other = Store::memory();
    put(&other, &pa, store.get(&pa).await.expect("get")).await;

    let cat = Catalog::open_in_memory().expect("catalog");
    let mut report = Report::default();
    build(&cat, &store, Some(&other), Region::Primary, &mut report)
        .await
        .expect("rebuild");
    assert_eq!(
        pack_of(&cat, "a", x),
        Some(pa.clone()),
        "a's own blob for x"
    );
    assert_eq!(pack_of(&cat, "b", x), Some(pb), "b's own blob for x");
    assert_eq!(pack_of(&cat, "a", z), None);
    assert_eq!(report.flagged_snapshots, vec![gap.clone()]);
    assert_eq!(report.snapshots, 3);
    assert_eq!(report.invalid_objects, 1, "the garbage record");
    assert_eq!(report.agents, 2);
    assert_eq!(report.already_replicated, 1, "pa is in the other store");
    let listed = cat
        .run_blocking(|c| crate::catalog::snapshots::list(c, Some("a-01"), None))
        .expect("list");
    assert_eq!(listed.len(), 1, "the flagged snapshot is not listed");
    let pa_done = cat
        .run_blocking(|c| crate::replication::queue::record_replicated(c, &pa))
        .expect("queue");
    assert!(pa_done, "a pack the other region holds is done");
}

#[tokio::test]
async fn refuses_an_existing_catalog_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_text = "[tls]\nca_cert = \"ca.pem\"\nca_key = \"ca.key\"\ncert = \"s.pem\"\nkey = \"s.key\"\n\
        [catalog]\npath = \"catalog.db\"\n[store]\nkind = \"local\"\npath = \"objects\"\n";
    let cfg_path = dir.path().join("controller.toml");
    std::fs::write(&cfg_path, cfg_text).expect("write");
    let cfg = ControllerConfig::load(&cfg_path).expect("config");
    std::fs::write(&cfg.catalog, b"old").expect("write");
    let opts = Options {
        region: Region::Primary,
        force: false,
    };
    let e = run(&cfg, &opts).await.expect_err("refused");
    assert!(matches!(e, RebuildError::CatalogExists(_)), "{e}");
    let e = run(
        &cfg,
        &Options {
            region: Region::Secondary,
            force: true,
        },
    )
    .await
    .expect_err("no secondary");
    assert!(matches!(e, RebuildError::NoSecondary), "{e}");
    let r = run(
        &cfg,
        &Options {
            region: Region::Primary,
            force: true,
        },
    )
    .await
    .expect("forced");
    let aside = r.moved_aside.expect("moved aside");
    assert_eq!(std::fs::read(aside).expect("kept"), b"old");
    assert!(
        Catalog::open(&cfg.catalog).is_ok(),
        "a fresh catalog in place"
    );
}
