//! An in-memory controller for tests: stores blobs and snapshots, checks commits like the real
//! one (every referenced id must be stored), and can be told to forget chunks or fail reads.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lifeboat_common::ids::ChunkId;
use lifeboat_proto::v1::SnapshotStats;

use super::{
    BlobCheck, CommitOutcome, CommitRequest, FailureReport, Remote, RemoteError, Session,
    SnapshotInfo, UploadReceipt,
};

#[derive(Default)]
pub struct MemoryRemote {
    pub blobs: Mutex<HashMap<ChunkId, Vec<u8>>>,
    pub snapshots: Mutex<Vec<SnapshotInfo>>,
    /// Ids whose stored copy is damaged and have no sound copy: served damaged when the agent
    /// checks ([`BlobCheck::Agent`]), refused with DataLoss when the controller checks.
    pub damaged: Mutex<HashSet<ChunkId>>,
    /// Ids whose primary copy is damaged but whose secondary copy is sound: served damaged when
    /// the agent checks, sound (from the "secondary") when the controller checks.
    pub damaged_primary: Mutex<HashSet<ChunkId>>,
    /// The ids of every read the controller checked ([`BlobCheck::Controller`]), in order.
    pub checked_reads: Mutex<Vec<ChunkId>>,
    pub uploads: AtomicU64,
    pub uploaded_ids: Mutex<Vec<ChunkId>>,
    pub failures: Mutex<Vec<FailureReport>>,
    /// How many ids each HaveChunks call asked about, in call order.
    pub have_calls: Mutex<Vec<usize>>,
    /// Every id HaveChunks was asked about.
    pub asked: Mutex<HashSet<ChunkId>>,
    /// HaveChunks calls in progress (each yields once before answering), and the most seen.
    have_running: AtomicU64,
    pub have_most_at_once: AtomicU64,
    next: AtomicU64,
}

impl MemoryRemote {
    pub fn forget_all_blobs(&self) {
        self.blobs.lock().expect("lock").clear();
    }
}

impl Remote for MemoryRemote {
    async fn begin_session(&self, _source: &str) -> Result<Session, RemoteError> {
        Ok(Session {
            id: format!("s{}", self.next.fetch_add(1, Ordering::SeqCst)),
            max_ids: 16,
            max_message_bytes: 4 << 20,
        })
    }

    async fn have_chunks(
        &self,
        _session: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, RemoteError> {
        self.have_calls.lock().expect("lock").push(ids.len());
        self.asked.lock().expect("lock").extend(ids);
        let running = self.have_running.fetch_add(1, Ordering::SeqCst) + 1;
        self.have_most_at_once.fetch_max(running, Ordering::SeqCst);
        // A real call is in the air for a while: let other flights start theirs.
        tokio::task::yield_now().await;
        self.have_running.fetch_sub(1, Ordering::SeqCst);
        let blobs = self.blobs.lock().expect("lock");
        Ok(ids
            .iter()
            .filter(|i| !blobs.contains_key(i))
            .copied()
            .collect())
    }

    async fn upload(
        &self,
        _session: &str,
        blobs: Vec<(ChunkId, Vec<u8>)>,
    ) -> Result<UploadReceipt, RemoteError> {
        self.uploads.fetch_add(1, Ordering::SeqCst);
        let mut store = self.blobs.lock().expect("lock");
        let mut ids = self.uploaded_ids.lock().expect("lock");
        for (id, b) in blobs {
            ids.push(id);
            store.insert(id, b);
        }
        Ok(UploadReceipt::default())
    }

    async fn commit(&self, req: CommitRequest) -> Result<CommitOutcome, RemoteError> {
        let mut references = Vec::new();
        let mut rx = req.references.batches;
        while let Some(batch) = rx.recv().await {
            references.extend(batch);
        }
        // As the controller does: the header announces the distinct ids the stream carries.
        references.sort_unstable();
        references.dedup();
        if references.len() as u64 != req.references.count {
            return Err(RemoteError::Status {
                op: "CommitSnapshot",
                status: tonic::Status::invalid_argument(format!(
                    "the commit carries {} distinct ids but its header announced reference_count = {}",
                    references.len(),
                    req.references.count
                )),
            });
        }
        let missing: Vec<ChunkId> = {
            let blobs = self.blobs.lock().expect("lock");
            references
                .iter()
                .filter(|i| !blobs.contains_key(i))
                .copied()
                .collect()
        };
        if !missing.is_empty() {
            return Ok(CommitOutcome::Missing(missing));
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let id = format!("{:020x}", 0x1000 + n);
        self.snapshots.lock().expect("lock").push(SnapshotInfo {
            id: id.clone(),
            source: String::new(),
            started_at_unix_ms: req.started_at_unix_ms,
            finished_at_unix_ms: req.finished_at_unix_ms,
            committed_at_unix_ms: req.finished_at_unix_ms,
            stats: SnapshotStats { ..req.stats },
            stored_bytes: 0,
            manifest_ids: req.manifest_ids,
            reference_count: references.len() as u64,
        });
        Ok(CommitOutcome::Committed { snapshot_id: id })
    }

    async fn list_snapshots(&self, _source: &str) -> Result<Vec<SnapshotInfo>, RemoteError> {
        Ok(self.snapshots.lock().expect("lock").clone())
    }

    async fn get_snapshot(&self, id: &str, _source: &str) -> Result<SnapshotInfo, RemoteError> {
        let snaps = self.snapshots.lock().expect("lock");
        let found = if id == "latest" {
            snaps.last()
        } else {
            snaps.iter().find(|s| s.id.starts_with(id))
        };
        found.cloned().ok_or_else(|| RemoteError::Status {
            op: "GetSnapshot",
            status: tonic::Status::not_found("no such snapshot"),
        })
    }

    async fn report_failure(&self, report: FailureReport) -> Result<String, RemoteError> {
        let mut f = self.failures.lock().expect("lock");
        f.push(report);
        Ok(format!("f{}", f.len()))
    }

    async fn read_chunks(
        &self,
        ids: &[ChunkId],
        check: BlobCheck,
    ) -> Result<Vec<(ChunkId, bytes::Bytes)>, RemoteError> {
        let blobs = self.blobs.lock().expect("lock");
        let damaged = self.damaged.lock().expect("lock");
        let damaged_primary = self.damaged_primary.lock().expect("lock");
        if check == BlobCheck::Controller {
            self.checked_reads.lock().expect("lock").extend(ids);
        }
        ids.iter()
            .map(|id| {
                let bad = damaged.contains(id) || damaged_primary.contains(id);
                match (blobs.get(id), check) {
                    (Some(b), BlobCheck::Agent) if bad => {
                        let mut b = b.clone();
                        if let Some(last) = b.last_mut() {
                            *last ^= 1;
                        }
                        Ok((*id, b.into()))
                    }
                    (Some(b), _) if !damaged.contains(id) => Ok((*id, b.clone().into())),
                    _ => Err(RemoteError::Status {
                        op: "ReadChunks",
                        status: tonic::Status::data_loss(format!(
                            "chunk {} is damaged",
                            id.short()
                        )),
                    }),
                }
            })
            .collect()
    }
}
