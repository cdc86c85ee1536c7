//! The one test suite every store backend runs: local directory, in-memory and S3 (s3s-fs in
//! `integration-tests`), each with conditional puts on and off.
//!
//! Every run works under its own random prefix, so it can run repeatedly against one store.
//! Compiled for this crate's tests and, with the `testing` feature, for other crates.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use bytes::Bytes;

use super::{PutOutcome, Store, StoreError};

fn random_hex() -> String {
    let mut b = [0u8; 8];
    lifeboat_common::keys::fill_random(&mut b);
    hex::encode(b)
}

/// Runs the suite against `store`; panics with a message naming the failed step.
pub async fn run(store: &Store) {
    let base = format!("suite/{}", random_hex());
    let key = format!("{base}/packs/ab/abcdef");
    let body = Bytes::from_static(b"hello world");

    assert_eq!(
        store.put_new(&key, body.clone()).await.expect("put"),
        PutOutcome::Created,
        "first put creates"
    );
    assert_eq!(
        store.put_new(&key, body.clone()).await.expect("again"),
        PutOutcome::AlreadyPresent,
        "an identical retry is idempotent"
    );
    let e = store
        .put_new(&key, Bytes::from_static(b"HELLO WORLD"))
        .await
        .expect_err("same size, other bytes");
    assert!(
        matches!(e, StoreError::Conflict { existing: 11, .. }),
        "{e}"
    );
    let e = store
        .put_new(&key, Bytes::from_static(b"hello"))
        .await
        .expect_err("other size");
    assert!(
        matches!(e, StoreError::Conflict { existing: 11, .. }),
        "{e}"
    );
    // With the hash given (a pack's name): the same rules, checked against that hash.
    let e = store
        .put_new_hashed(
            &key,
            Bytes::from_static(b"HELLO WORLD"),
            blake3::hash(b"HELLO WORLD"),
        )
        .await
        .expect_err("same size, other bytes, hash given");
    assert!(
        matches!(e, StoreError::Conflict { existing: 11, .. }),
        "{e}"
    );
    assert_eq!(
        store
            .put_new_hashed(&key, body.clone(), blake3::hash(&body))
            .await
            .expect("again, hash given"),
        PutOutcome::AlreadyPresent,
        "an identical retry with its hash is idempotent"
    );
    assert_eq!(store.get(&key).await.expect("get"), body, "not overwritten");
    assert_eq!(
        store.get_range(&key, 6..11).await.expect("range"),
        Bytes::from_static(b"world")
    );
    assert_eq!(store.head(&key).await.expect("head"), 11);

    // A larger object, a second key, and listing under a prefix only.
    let big: Bytes = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let key2 = format!("{base}/refs/cd/cdef01");
    assert_eq!(
        store.put_new(&key2, big.clone()).await.expect("put big"),
        PutOutcome::Created
    );
    assert_eq!(store.get(&key2).await.expect("get big"), big);
    assert_eq!(
        store
            .get_range(&key2, 1_000_000..1_000_010)
            .await
            .expect("range big"),
        big.slice(1_000_000..1_000_010)
    );
    assert_eq!(
        store.list(&base).await.expect("list"),
        vec![(key.clone(), 11), (key2.clone(), big.len() as u64)]
    );
    assert_eq!(
        store.list(&format!("{base}/packs")).await.expect("list"),
        vec![(key.clone(), 11)]
    );

    let missing = format!("{base}/packs/zz/nothing");
    assert!(matches!(
        store.get(&missing).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.head(&missing).await,
        Err(StoreError::NotFound { .. })
    ));
    store.delete(&key2).await.expect("delete");
    store.delete(&key2).await.expect("delete twice is fine");
    assert!(matches!(
        store.head(&key2).await,
        Err(StoreError::NotFound { .. })
    ));
}
