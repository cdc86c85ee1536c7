//! Delayed deletes on real local stores with explicit times.

use bytes::Bytes;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);
const T0: i64 = 1_700_000_000_000;

struct Stores {
    _tmp: tempfile::TempDir,
    catalog: Catalog,
    primary: Store,
    secondary: Store,
}

async fn stores() -> Stores {
    let tmp = tempfile::tempdir().expect("tempdir");
    let primary = Store::local(&tmp.path().join("primary")).expect("primary");
    let secondary = Store::local(&tmp.path().join("secondary")).expect("secondary");
    Stores {
        catalog: Catalog::open_in_memory().expect("catalog"),
        _tmp: tmp,
        primary,
        secondary,
    }
}

fn pack_key(n: u8) -> String {
    format!("packs/{n:02x}/{}", hex::encode([n; 32]))
}

async fn queue_delete(s: &Stores, key: &str, now: i64, delay: Duration) {
    let k = key.to_owned();
    s.catalog
        .run(move |c| enqueue(c, &k, now, delay))
        .await
        .expect("enqueue");
}

async fn exists(store: &Store, key: &str) -> bool {
    match store.head(key).await {
        Ok(_) => true,
        Err(StoreError::NotFound { .. }) => false,
        Err(e) => panic!("head {key}: {e}"),
    }
}

#[tokio::test]
async fn delete_waits_for_its_delay_then_runs_once() {
    let s = stores().await;
    let key = pack_key(1);
    s.secondary
        .put_new(&key, Bytes::from_static(b"old pack"))
        .await
        .expect("put");
    queue_delete(&s, &key, T0, 7 * DAY).await;
    let listed = s.catalog.run(|c| list(c)).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
    assert_eq!(listed[0].not_before, T0 + 7 * 86_400_000);

    // One millisecond before the delay is over: nothing happens.
    let early = T0 + 7 * 86_400_000 - 1;
    let r = run_due(&s.catalog, &s.primary, &s.secondary, true, early)
        .await
        .expect("round");
    assert_eq!(r, Round::default());
    assert!(exists(&s.secondary, &key).await, "deleted before the delay");

    let due_at = T0 + 7 * 86_400_000;
    let r = run_due(&s.catalog, &s.primary, &s.secondary, true, due_at)
        .await
        .expect("round");
    assert_eq!(r.deleted, 1, "{r:?}");
    assert!(!exists(&s.secondary, &key).await, "not deleted when due");
    assert!(s.catalog.run(|c| list(c)).await.expect("list").is_empty());
    // Done rows are not run again.
    let r = run_due(&s.catalog, &s.primary, &s.secondary, true, due_at + 1)
        .await
        .expect("round");
    assert_eq!(r, Round::default());
}

#[tokio::test]
async fn never_deletes_with_deletes_off_but_lists() {
    let s = stores().await;
    let key = pack_key(2);
    s.secondary
        .put_new(&key, Bytes::from_static(b"kept"))
        .await
        .expect("put");
    queue_delete(&s, &key, T0, DAY).await;
    let far = T0 + 365 * 86_400_000;
    let r = run_due(&s.catalog, &s.primary, &s.secondary, false, far)
        .await
        .expect("round");
    assert_eq!(r, Round::default());
    assert!(
        exists(&s.secondary, &key).await,
        "deleted with deletes = false"
    );
    let listed = s.catalog.run(|c| list(c)).await.expect("list");
    assert_eq!(listed.len(), 1, "still listed for an operator: {listed:?}");
}

#[tokio::test]
async fn missing_object_is_fine_and_live_primary_object_is_kept() {
    let s = stores().await;
    let (gone, live) = (pack_key(3), pack_key(4));
    // `gone` was never in the secondary: deleting it is a no-op that succeeds.
    queue_delete(&s, &gone, T0, Duration::ZERO).await;
    // `live` was re-uploaded to the primary since the delete was queued.
    for store in [&s.primary, &s.secondary] {
        store
            .put_new(&live, Bytes::from_static(b"live again"))
            .await
            .expect("put");
    }
    queue_delete(&s, &live, T0, Duration::ZERO).await;
    let r = run_due(&s.catalog, &s.primary, &s.secondary, true, T0)
        .await
        .expect("round");
    assert_eq!(
        r,
        Round {
            deleted: 1,
            cancelled: 1,
            failed: 0
        }
    );
    assert!(
        exists(&s.secondary, &live).await,
        "a live object was deleted"
    );
    assert!(s.catalog.run(|c| list(c)).await.expect("list").is_empty());
}

#[tokio::test]
async fn queuing_again_rearms_with_the_later_time() {
    let s = stores().await;
    let key = pack_key(5);
    queue_delete(&s, &key, T0, DAY).await;
    queue_delete(&s, &key, T0 + 1000, DAY).await;
    let listed = s.catalog.run(|c| list(c)).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].not_before, T0 + 1000 + 86_400_000);
    let pending = s
        .catalog
        .run(|c| crate::replication::queue::summary(c))
        .await
        .expect("summary");
    assert_eq!(
        pending.pending_objects, 0,
        "deletes are not replication lag"
    );
}

/// A delete never runs ahead of a copy queued before it (a repack's new pack).
#[tokio::test]
async fn a_delete_waits_for_copies_queued_before_it() {
    let s = stores().await;
    let (new, old) = (pack_key(2), pack_key(3));
    let n = new.clone();
    s.catalog
        .run(move |c| {
            crate::replication::queue::enqueue(
                c,
                &crate::replication::queue::NewObject {
                    key: n,
                    kind: crate::replication::queue::Kind::Pack,
                    size: 1,
                    blake3: [2; 32],
                },
                T0,
            )
        })
        .await
        .expect("copy");
    queue_delete(&s, &old, T0 + 1, Duration::ZERO).await;
    let due_now = s
        .catalog
        .run(|c| due(c, T0 + DAY.as_millis() as i64, 10))
        .await
        .expect("due");
    assert!(due_now.is_empty(), "waits for the copy: {due_now:?}");
    s.catalog
        .run(|c| {
            Ok(c.execute(
                "UPDATE replication_queue SET done_at = 1 WHERE op = 'copy'",
                [],
            )?)
        })
        .await
        .expect("done");
    let due_now = s
        .catalog
        .run(|c| due(c, T0 + DAY.as_millis() as i64, 10))
        .await
        .expect("due");
    assert_eq!(due_now.len(), 1);
    assert_eq!(due_now[0].1, old);
}
