//! The uploader against the in-memory remote.

use std::collections::HashMap;

use super::*;
use crate::remote::memory::MemoryRemote;
use lifeboat_common::keys::{MasterKey, fill_random};

fn keys() -> DataKeys {
    MasterKey::from_bytes([5; 32]).data_keys()
}

async fn uploader(remote: &MemoryRemote) -> Uploader<'_, MemoryRemote> {
    let session = remote.begin_session("t").await.expect("session");
    Uploader::new(remote, session, keys(), 3)
}

/// `len` random (incompressible, media-like) bytes.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    fill_random(&mut data);
    data
}

/// Whether the remote stores a blob for every chunk of `data`.
fn all_stored<'a>(remote: &MemoryRemote, data: impl IntoIterator<Item = &'a Vec<u8>>) -> bool {
    let k = keys();
    let blobs = remote.blobs.lock().expect("lock");
    data.into_iter().all(|d| blobs.contains_key(&k.chunk_id(d)))
}

fn chunk(i: usize, random: bool) -> Vec<u8> {
    if random {
        return random_bytes(100_000);
    }
    let line = format!("<p>chunk {i} of some very compressible html</p>\n");
    line.bytes().cycle().take(100_000).collect()
}

/// Many batches (max_ids 16), some ids repeated across batches: after `flush` every id is
/// stored, none was uploaded twice, and media-like chunks were stored raw.
#[tokio::test]
async fn pipelined_batches_upload_each_missing_chunk_once() {
    let remote = MemoryRemote::default();
    let mut up = uploader(&remote).await;
    let k = keys();
    // Even i: random (media-like), odd i: text; every chunk is offered three times.
    let expected: HashMap<usize, Vec<u8>> = (0..40).map(|i| (i, chunk(i, i % 2 == 0))).collect();
    for _round in 0..3 {
        for i in 0..40 {
            let data = expected[&i].clone();
            up.add(k.chunk_id(&data), data).await.expect("add");
            if i % 7 == 0 {
                up.land().await.expect("land");
            }
        }
    }
    up.flush().await.expect("flush");
    assert!(!up.is_flying());
    let blobs = remote.blobs.lock().expect("lock");
    let uploaded = remote.uploaded_ids.lock().expect("lock");
    assert_eq!(uploaded.len(), expected.len(), "an id was uploaded twice");
    assert_eq!(up.stats.new_chunks, expected.len() as u64);
    for (i, data) in &expected {
        let id = k.chunk_id(data);
        let blob = blobs.get(&id).expect("every chunk is stored after flush");
        assert_eq!(blob::open(&k, &id, blob).expect("open"), *data);
        if i % 2 == 0 {
            assert_eq!(blob.len(), data.len() + blob::OVERHEAD, "random: raw");
        } else {
            assert!(blob.len() < data.len() / 10, "text: compressed");
        }
    }
}

/// With the durable set starting over every few ids, repeated ids are asked about again
/// but still uploaded once, and the set stays within its cap plus one landing.
#[tokio::test]
async fn a_bounded_durable_set_still_uploads_each_chunk_once() {
    let remote = MemoryRemote::default();
    let mut up = uploader(&remote).await;
    up.durable_cap = 8;
    let k = keys();
    let expected: Vec<Vec<u8>> = (0..40).map(|i| chunk(i, i % 2 == 0)).collect();
    let mut peak = 0;
    for _round in 0..3 {
        for data in &expected {
            up.add(k.chunk_id(data), data.clone()).await.expect("add");
            up.land().await.expect("land");
            peak = peak.max(up.durable.len());
        }
    }
    up.flush().await.expect("flush");
    assert!(peak <= 8 + 16, "durable set grew to {peak}");
    let uploaded = remote.uploaded_ids.lock().expect("lock");
    assert_eq!(uploaded.len(), expected.len(), "an id was uploaded twice");
    assert!(all_stored(&remote, &expected));
}

/// Mostly-present batches hand their few missing chunks on instead of uploading them:
/// after `flush` every new chunk is stored exactly once, in far fewer uploads than batches.
#[tokio::test]
async fn few_missing_chunks_are_carried_to_the_next_upload() {
    let remote = MemoryRemote::default();
    let mut up = uploader(&remote).await;
    let k = keys();
    let old: Vec<Vec<u8>> = (0..64).map(|i| chunk(i, true)).collect();
    for data in &old {
        up.add(k.chunk_id(data), data.clone()).await.expect("add");
    }
    up.flush().await.expect("flush");
    let first = remote.uploads.load(Ordering::SeqCst);
    // 4 batches of 16 × 100 kB: each under CARRY_BELOW alone, so at most every other
    // batch uploads (its own chunks and the ones carried to it).
    assert!(first <= 3, "{first} uploads for 4 batches");
    // Then 8 batches of present chunks, one new chunk in each: one upload, at the flush.
    let new: Vec<Vec<u8>> = (100..108).map(|i| chunk(i, true)).collect();
    for (round, fresh) in new.iter().enumerate() {
        for data in old.iter().skip(round * 8).take(15) {
            up.add(k.chunk_id(data), data.clone()).await.expect("add");
        }
        up.add(k.chunk_id(fresh), fresh.clone()).await.expect("add");
        up.add(k.chunk_id(fresh), fresh.clone())
            .await
            .expect("add again");
        up.land().await.expect("land");
    }
    up.flush().await.expect("flush");
    assert_eq!(remote.uploads.load(Ordering::SeqCst) - first, 1);
    let uploaded = remote.uploaded_ids.lock().expect("lock");
    assert_eq!(
        uploaded.len(),
        old.len() + new.len(),
        "an id was uploaded twice"
    );
    assert!(all_stored(&remote, old.iter().chain(&new)));
    assert_eq!(up.stats.new_chunks, (old.len() + new.len()) as u64);
}

/// A chunk that would take a batch past [`BATCH_BYTES`] starts the next batch: three 3 MiB
/// chunks go up in three uploads (a batch held two of them, 6 MiB, before).
#[tokio::test]
async fn a_batch_never_grows_past_its_limit_by_a_large_chunk() {
    let remote = MemoryRemote::default();
    let mut up = uploader(&remote).await;
    let k = keys();
    let big: Vec<Vec<u8>> = (0..3).map(|_| random_bytes(3 << 20)).collect();
    for data in &big {
        up.add(k.chunk_id(data), data.clone()).await.expect("add");
    }
    up.flush().await.expect("flush");
    assert_eq!(remote.uploads.load(Ordering::SeqCst), 3);
    assert!(all_stored(&remote, &big));
}

/// Stores `n` small chunks through `up`, then forgets they are durable and clears the
/// remote's HaveChunks records, so the next backup asks about them again. Returns them.
async fn store_small(
    remote: &MemoryRemote,
    up: &mut Uploader<'_, MemoryRemote>,
    n: u32,
) -> Vec<Vec<u8>> {
    let k = keys();
    let small: Vec<Vec<u8>> = (0..n).map(|i| i.to_le_bytes().to_vec()).collect();
    for data in &small {
        up.add(k.chunk_id(data), data.clone()).await.expect("add");
    }
    up.flush().await.expect("flush");
    up.forget_durable();
    remote.have_calls.lock().expect("lock").clear();
    remote.have_most_at_once.store(0, Ordering::SeqCst);
    small
}

/// Flights that hold little once answered (every chunk already stored) go up to
/// MAX_FLIGHTS at once; flights that upload a batch each stay at FLIGHTS.
#[tokio::test]
async fn more_flights_fly_only_while_they_hold_little() {
    let remote = MemoryRemote::default();
    let mut up = uploader(&remote).await;
    let k = keys();
    let small = store_small(&remote, &mut up, 100).await;
    for data in &small {
        up.add(k.chunk_id(data), data.clone())
            .await
            .expect("add again");
    }
    up.flush().await.expect("flush");
    assert_eq!(
        remote.have_most_at_once.load(Ordering::SeqCst),
        MAX_FLIGHTS as u64,
        "present chunks: flights hold nothing once answered"
    );

    remote.have_most_at_once.store(0, Ordering::SeqCst);
    let big: Vec<Vec<u8>> = (0..60).map(|_| random_bytes(300_000)).collect();
    for data in &big {
        up.add(k.chunk_id(data), data.clone())
            .await
            .expect("add big");
    }
    up.flush().await.expect("flush");
    assert_eq!(remote.uploaded_ids.lock().expect("lock").len(), 160);
    assert_eq!(
        remote.have_most_at_once.load(Ordering::SeqCst),
        FLIGHTS as u64,
        "each flight uploads ~4 MB: no more than FLIGHTS at once"
    );
}

/// A stretch that launches no batch (chunks presumed stored, a slow read) makes no calls: once
/// the keep-alive interval has passed without one, the uploader asks about no ids (renewing the
/// session's lease), and not again before it passes anew.
#[tokio::test]
async fn a_session_without_calls_is_kept_alive() {
    let remote = MemoryRemote::default();
    let mut up = uploader(&remote).await;
    up.count_presumed(1 << 20);
    up.keep_alive().await.expect("keep alive");
    assert!(
        remote.have_calls.lock().expect("lock").is_empty(),
        "not due yet"
    );
    up.keep_alive_after = Duration::ZERO;
    up.keep_alive().await.expect("keep alive");
    assert_eq!(*remote.have_calls.lock().expect("lock"), [0]);
    up.keep_alive_after = Duration::from_secs(3600);
    up.keep_alive().await.expect("keep alive");
    assert_eq!(remote.have_calls.lock().expect("lock").len(), 1);
}
