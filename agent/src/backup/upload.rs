//! Batched deduplication and upload of chunks for one session.
//!
//! Chunks are collected into a batch of at most `max_ids` ids and [`BATCH_BYTES`] of plaintext.
//! A full batch is flushed: `HaveChunks` for its ids, then only the missing ones are sealed (on
//! blocking threads, two halves in parallel) and uploaded in one `UploadChunks` call, whose
//! answer means they are durable. Ids known durable in this session are remembered, so no id is
//! asked about or uploaded twice.
//!
//! Ids from the file cache carry no plaintext. If the controller reports one of them missing,
//! the cache lied (for example the controller lost data): the files that referenced it are
//! listed in [`Uploader::reread`] so the backup reads them again.

use std::collections::{BTreeSet, HashMap, HashSet};

use lifeboat_common::blob;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::DataKeys;

use crate::error::AgentError;
use crate::remote::{Remote, Session};

/// Most plaintext bytes held in one batch.
pub const BATCH_BYTES: usize = 8 << 20;

/// Totals of what was uploaded.
#[derive(Clone, Copy, Debug, Default)]
pub struct UploadStats {
    pub new_chunks: u64,
    pub new_logical_bytes: u64,
    pub uploaded_bytes: u64,
}

pub struct Uploader<'a, R: Remote> {
    remote: &'a R,
    session: Session,
    keys: DataKeys,
    zstd_level: i32,
    batch: Vec<(ChunkId, Option<Vec<u8>>)>,
    in_batch: HashMap<ChunkId, usize>,
    batch_bytes: usize,
    batch_cached: Vec<(usize, Vec<ChunkId>)>,
    durable: HashSet<ChunkId>,
    pub stats: UploadStats,
    /// Files whose cached ids turned out to be missing: read them again.
    pub reread: BTreeSet<usize>,
}

impl<'a, R: Remote> Uploader<'a, R> {
    pub fn new(remote: &'a R, session: Session, keys: DataKeys, zstd_level: i32) -> Self {
        Uploader {
            remote,
            session,
            keys,
            zstd_level,
            batch: Vec::new(),
            in_batch: HashMap::new(),
            batch_bytes: 0,
            batch_cached: Vec::new(),
            durable: HashSet::new(),
            stats: UploadStats::default(),
            reread: BTreeSet::new(),
        }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Adds a chunk read from a file or the manifest.
    pub async fn add(&mut self, id: ChunkId, data: Vec<u8>) -> Result<(), AgentError> {
        if self.durable.contains(&id) {
            return Ok(());
        }
        match self.in_batch.get(&id) {
            Some(&i) => {
                if self.batch[i].1.is_none() {
                    self.batch_bytes += data.len();
                    self.batch[i].1 = Some(data);
                }
            }
            None => {
                self.in_batch.insert(id, self.batch.len());
                self.batch_bytes += data.len();
                self.batch.push((id, Some(data)));
            }
        }
        self.maybe_flush().await
    }

    /// Adds the ids of a file answered from the cache (no plaintext).
    pub async fn add_cached(&mut self, file: usize, ids: &[ChunkId]) -> Result<(), AgentError> {
        let mut any = false;
        for id in ids {
            if self.durable.contains(id) {
                continue;
            }
            any = true;
            if !self.in_batch.contains_key(id) {
                self.in_batch.insert(*id, self.batch.len());
                self.batch.push((*id, None));
            }
        }
        if any {
            self.batch_cached.push((file, ids.to_vec()));
        }
        self.maybe_flush().await
    }

    async fn maybe_flush(&mut self) -> Result<(), AgentError> {
        if self.batch.len() >= self.session.max_ids || self.batch_bytes >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Asks which ids are missing, seals and uploads those. Call once more at the end.
    pub async fn flush(&mut self) -> Result<(), AgentError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.in_batch.clear();
        self.batch_bytes = 0;
        let cached_files = std::mem::take(&mut self.batch_cached);
        let ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
        // A cached file's ids are added at once, so a batch can exceed max_ids: ask in slices.
        let mut missing: HashSet<ChunkId> = HashSet::new();
        for part in ids.chunks(self.session.max_ids.max(1)) {
            missing.extend(self.remote.have_chunks(&self.session.id, part).await?);
        }
        let mut to_seal = Vec::new();
        let mut lost = HashSet::new();
        for (id, data) in batch {
            if !missing.contains(&id) {
                self.durable.insert(id);
            } else if let Some(data) = data {
                to_seal.push((id, data));
            } else {
                lost.insert(id);
            }
        }
        for (file, ids) in cached_files {
            if ids.iter().any(|id| lost.contains(id)) {
                self.reread.insert(file);
            }
        }
        if to_seal.is_empty() {
            return Ok(());
        }
        let plain: u64 = to_seal.iter().map(|(_, d)| d.len() as u64).sum();
        let count = to_seal.len() as u64;
        let blobs = seal_all(&self.keys, self.zstd_level, to_seal).await?;
        let sealed: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum();
        let uploaded: Vec<ChunkId> = blobs.iter().map(|(id, _)| *id).collect();
        self.remote.upload(&self.session.id, blobs).await?;
        lifeboat_common::failpoint::hit("agent.after_upload_batch");
        self.durable.extend(uploaded);
        self.stats.new_chunks += count;
        self.stats.new_logical_bytes += plain;
        self.stats.uploaded_bytes += sealed;
        Ok(())
    }
}

/// Seals chunks on two blocking threads, preserving order.
async fn seal_all(
    keys: &DataKeys,
    level: i32,
    mut chunks: Vec<(ChunkId, Vec<u8>)>,
) -> Result<Vec<(ChunkId, Vec<u8>)>, AgentError> {
    let second = chunks.split_off(chunks.len() / 2);
    let seal = |part: Vec<(ChunkId, Vec<u8>)>| {
        let keys = keys.clone();
        tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|(id, data)| {
                    blob::seal(&keys, &id, &data, level)
                        .map(|b| (id, b))
                        .map_err(|source| AgentError::Blob {
                            what: "a backup".into(),
                            id,
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        })
    };
    let (a, b) = tokio::join!(seal(chunks), seal(second));
    let join = |e: tokio::task::JoinError| AgentError::Worker(e.to_string());
    let mut out = a.map_err(join)??;
    out.extend(b.map_err(join)??);
    Ok(out)
}
