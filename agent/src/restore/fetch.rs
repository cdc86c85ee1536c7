//! Fetching and verifying what a restore reads: the snapshot, its manifest, and chunk batches.
//!
//! Every blob is opened with [`lifeboat_common::blob::open`], which checks the AEAD tag (so the
//! controller cannot alter it) and that the plaintext hashes to the id (so it cannot swap one
//! chunk for another). Chunks are fetched in batches of at most [`BATCH_IDS`] distinct ids and
//! about [`BATCH_BYTES`] of plaintext, so memory is bounded whatever the file size.

use std::collections::HashMap;
use std::path::Path;

use lifeboat_common::blob::{self, BlobError};
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::DataKeys;
use lifeboat_common::manifest::{self, EncodedManifest};
use tracing::warn;

use crate::error::AgentError;
use crate::remote::{BlobCheck, Remote, SnapshotInfo};

/// Most distinct ids in one `ReadChunks` call.
pub const BATCH_IDS: usize = 64;
/// Plaintext bytes per batch (a batch always holds at least one chunk).
pub const BATCH_BYTES: u64 = 16 << 20;

/// Resolves `snapshot` (id, prefix or "latest") for `source`, fetches and validates its manifest
/// (its entries kept encoded, in a scratch file in `scratch` if given, decoded as they are used:
/// [`EncodedManifest`]).
pub async fn load_manifest<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    snapshot: &str,
    source: &str,
    scratch: Option<&Path>,
) -> Result<(SnapshotInfo, EncodedManifest), AgentError> {
    let info = remote.get_snapshot(snapshot, source).await?;
    if !info.source.is_empty() && info.source != source {
        return Err(AgentError::Invalid(format!(
            "snapshot {} belongs to source {:?}, not {source:?}; pass --source {}",
            info.id, info.source, info.source
        )));
    }
    let bad = |source| AgentError::Manifest {
        snapshot: info.id.clone(),
        source,
    };
    let what = format!("the manifest of snapshot {}", info.id);
    let mut decoder = match scratch {
        Some(dir) => manifest::Decoder::keeping_entries_in(
            crate::scratch::temp_file(dir).map_err(|e| crate::scratch::scratch_error(dir, e))?,
        ),
        None => manifest::Decoder::new(),
    };
    let (mut at, mut n) = (0, 1);
    while at < info.manifest_ids.len() {
        let batch = &info.manifest_ids[at..info.manifest_ids.len().min(at + n)];
        let plain = read_verified(remote, keys, batch, &what).await?;
        let mut bytes = 0;
        for id in batch {
            let chunk = plain.get(id).ok_or_else(|| {
                AgentError::Invalid(format!("chunk {} of {what} was not returned", id.short()))
            })?;
            decoder.feed(chunk).map_err(bad)?;
            bytes += chunk.len();
        }
        at += batch.len();
        n = manifest_batch(batch.len(), bytes);
    }
    let m = decoder.finish().map_err(bad)?;
    if m.header.source != source {
        return Err(AgentError::Invalid(format!(
            "snapshot {}'s manifest is for source {:?}, not {source:?}",
            info.id, m.header.source
        )));
    }
    Ok((info, m))
}

/// Plaintext bytes of manifest chunks fetched at once: each chunk is decoded as it arrives
/// ([`manifest::Decoder`]), so the manifest's encoded bytes are never held whole.
const MANIFEST_BATCH_BYTES: usize = 4 << 20;

/// How many manifest chunks to ask for next, from the last batch's size (~256 KiB chunks since
/// `ChunkerParams::MANIFEST`; an older snapshot's were cut with its source's parameters: ~1 MiB
/// for files, ~8 KiB for a database source).
fn manifest_batch(ids: usize, bytes: usize) -> usize {
    let avg = (bytes / ids.max(1)).max(1);
    (MANIFEST_BATCH_BYTES / avg).clamp(1, BATCH_IDS)
}

/// Reads `ids` (duplicates allowed) and returns each verified plaintext by id. `what` names the
/// file or manifest in errors.
///
/// The controller serves the blobs without checking them ([`BlobCheck::Agent`]): every blob is
/// opened here anyway, and the controller's own check cost it 15% of its restore CPU. A blob that
/// does not open (its stored copy was damaged) is asked for again with [`BlobCheck::Controller`],
/// which checks it and serves it from the secondary region if that copy is sound (queueing the
/// damaged copy's repair), or answers that the chunk is lost.
pub async fn read_verified<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    ids: &[ChunkId],
    what: &str,
) -> Result<HashMap<ChunkId, Vec<u8>>, AgentError> {
    let mut distinct = Vec::with_capacity(ids.len());
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if seen.insert(*id) {
            distinct.push(*id);
        }
    }
    let blobs = remote.read_chunks(&distinct, BlobCheck::Agent).await?;
    let mut plain = HashMap::with_capacity(blobs.len());
    let mut damaged = Vec::new();
    for (id, opened) in open_all(keys, blobs).await? {
        match opened {
            Ok(p) => {
                plain.insert(id, p);
            }
            Err(_) => damaged.push(id),
        }
    }
    if damaged.is_empty() {
        return Ok(plain);
    }
    warn!(
        chunks = damaged.len(),
        what, "blobs did not open; asking the controller again to check them and fail over"
    );
    let again = remote.read_chunks(&damaged, BlobCheck::Controller).await?;
    for (id, opened) in open_all(keys, again).await? {
        let p = opened.map_err(|source| AgentError::Blob {
            what: what.to_owned(),
            id,
            source,
        })?;
        plain.insert(id, p);
    }
    Ok(plain)
}

/// Opens each blob on a blocking thread.
async fn open_all(
    keys: &DataKeys,
    blobs: Vec<(ChunkId, bytes::Bytes)>,
) -> Result<Vec<(ChunkId, Result<Vec<u8>, BlobError>)>, AgentError> {
    let keys = keys.clone();
    tokio::task::spawn_blocking(move || {
        blobs
            .into_iter()
            .map(|(id, data)| (id, blob::open(&keys, &id, &data)))
            .collect()
    })
    .await
    .map_err(|e| AgentError::Worker(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_batches_follow_the_chunk_size() {
        assert_eq!(manifest_batch(1, 1 << 20), 4, "files: ~1 MiB chunks");
        assert_eq!(
            manifest_batch(4, 16 << 20),
            1,
            "4 MiB chunks, one at a time"
        );
        assert_eq!(manifest_batch(64, 64 << 13), BATCH_IDS, "8 KiB chunks");
        assert_eq!(manifest_batch(0, 0), BATCH_IDS, "nothing learnt");
    }
}
