//! What the agent needs from the controller, as a small trait over validated domain types.
//!
//! [`crate::client::GrpcRemote`] implements it over mTLS gRPC; tests use an in-memory fake, so
//! the backup and restore pipelines are exercised without a network. Every response is
//! validated here or in the client (ids of 32 bytes, limits within bounds) before inner code
//! sees it.

use std::future::Future;

use lifeboat_common::ids::ChunkId;
use lifeboat_proto::v1::SnapshotStats;
use thiserror::Error;

#[cfg(test)]
pub mod memory;

/// The smallest and largest `max_ids_per_request` the agent accepts from the controller.
pub const MIN_IDS_PER_REQUEST: u32 = 16;
pub const MAX_IDS_PER_REQUEST: u32 = 100_000;

/// A failed call to the controller.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// The transport could not be set up or failed (DNS, refused, TLS, timeout).
    #[error("{op}: {source}")]
    Transport {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The controller answered with an error status.
    #[error("{op}: controller answered {}: {}", .status.code(), .status.message())]
    Status {
        op: &'static str,
        #[source]
        status: tonic::Status,
    },
    /// The controller's answer breaks the protocol.
    #[error("{op}: invalid answer from the controller: {reason}")]
    Invalid { op: &'static str, reason: String },
}

impl RemoteError {
    /// The gRPC status code, when the controller answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            RemoteError::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// Who checks the blobs a `ReadChunks` call serves against the hashes the controller recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobCheck {
    /// The agent alone (it opens every blob with its key anyway): the controller serves blobs
    /// unchecked, so a damaged stored copy reaches the agent, fails to open, and is asked for
    /// again with [`BlobCheck::Controller`].
    Agent,
    /// The controller too: it checks each blob and serves a damaged one from the secondary
    /// region (queueing the damaged copy's repair), or says the chunk is lost.
    Controller,
}

/// An open upload session.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    /// Clamped to [`MIN_IDS_PER_REQUEST`]..=[`MAX_IDS_PER_REQUEST`].
    pub max_ids: usize,
    pub max_message_bytes: u64,
}

/// Totals from one `UploadChunks` call.
#[derive(Clone, Copy, Debug, Default)]
pub struct UploadReceipt {
    pub chunks_stored: u64,
    pub bytes_stored: u64,
    pub already_present: u64,
}

/// A commit: its header, and the references to stream after it.
#[derive(Debug)]
pub struct CommitRequest {
    pub session_id: String,
    pub started_at_unix_ms: i64,
    pub finished_at_unix_ms: i64,
    pub stats: SnapshotStats,
    pub manifest_ids: Vec<ChunkId>,
    /// Every distinct id the snapshot references (file and manifest chunks).
    pub references: RefStream,
}

/// A commit's references as they are read back: `count` distinct ids, in batches of at most
/// the session's `max_ids`. A stream that ends early carries fewer ids than the header
/// announces, and the controller refuses the commit (the producer reports why).
#[derive(Debug)]
pub struct RefStream {
    pub count: u64,
    pub batches: tokio::sync::mpsc::Receiver<Vec<ChunkId>>,
}

impl RefStream {
    /// Ids already in memory (distinct), in batches of `per`.
    #[cfg(test)]
    pub fn from_ids(ids: &[ChunkId], per: usize) -> Self {
        let batches: Vec<&[ChunkId]> = ids.chunks(per.max(1)).collect();
        let (tx, rx) = tokio::sync::mpsc::channel(batches.len().max(1));
        for b in batches {
            tx.try_send(b.to_vec()).expect("capacity for every batch");
        }
        RefStream {
            count: ids.len() as u64,
            batches: rx,
        }
    }
}

/// What a commit answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed { snapshot_id: String },
    Missing(Vec<ChunkId>),
}

/// A snapshot as the controller describes it.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    pub id: String,
    pub source: String,
    pub started_at_unix_ms: i64,
    pub finished_at_unix_ms: i64,
    pub committed_at_unix_ms: i64,
    pub stats: SnapshotStats,
    pub stored_bytes: u64,
    pub manifest_ids: Vec<ChunkId>,
    pub reference_count: u64,
}

/// A backup that failed (nothing committed), as reported to the controller.
#[derive(Clone, Debug)]
pub struct FailureReport {
    pub source: String,
    pub started_at_unix_ms: i64,
    pub finished_at_unix_ms: i64,
    pub reason: String,
}

/// The controller's agent-facing API.
pub trait Remote: Send + Sync {
    fn begin_session(
        &self,
        source: &str,
    ) -> impl Future<Output = Result<Session, RemoteError>> + Send;
    /// The subset of `ids` that must be uploaded.
    fn have_chunks(
        &self,
        session: &str,
        ids: &[ChunkId],
    ) -> impl Future<Output = Result<Vec<ChunkId>, RemoteError>> + Send;
    /// Uploads sealed blobs; returns once they are durable.
    fn upload(
        &self,
        session: &str,
        blobs: Vec<(ChunkId, Vec<u8>)>,
    ) -> impl Future<Output = Result<UploadReceipt, RemoteError>> + Send;
    fn commit(
        &self,
        req: CommitRequest,
    ) -> impl Future<Output = Result<CommitOutcome, RemoteError>> + Send;
    /// The caller's snapshots, oldest first; `source` empty means all.
    fn list_snapshots(
        &self,
        source: &str,
    ) -> impl Future<Output = Result<Vec<SnapshotInfo>, RemoteError>> + Send;
    /// One snapshot by id, unique prefix, or "latest" (with source).
    fn get_snapshot(
        &self,
        id: &str,
        source: &str,
    ) -> impl Future<Output = Result<SnapshotInfo, RemoteError>> + Send;
    /// Records a failed backup; returns the controller's id for it.
    fn report_failure(
        &self,
        report: FailureReport,
    ) -> impl Future<Output = Result<String, RemoteError>> + Send;
    /// The blobs of `ids` (distinct), in request order. The caller bounds the batch size.
    /// `Bytes`, not `Vec`: each blob is a slice of what the transport received (a copy into a
    /// `Vec` of its own cost a restore ~5% of its CPU, most of it in page faults).
    fn read_chunks(
        &self,
        ids: &[ChunkId],
        check: BlobCheck,
    ) -> impl Future<Output = Result<Vec<(ChunkId, bytes::Bytes)>, RemoteError>> + Send;
}

/// Converts a wire snapshot into [`SnapshotInfo`], validating its ids.
pub fn snapshot_from_wire(
    s: lifeboat_proto::v1::Snapshot,
    op: &'static str,
) -> Result<SnapshotInfo, RemoteError> {
    let manifest_ids =
        lifeboat_common::ids::chunk_ids_from_bytes(&s.manifest_ids).map_err(|e| {
            RemoteError::Invalid {
                op,
                reason: format!("snapshot {}: {e}", s.id),
            }
        })?;
    if s.id.is_empty() || manifest_ids.is_empty() {
        return Err(RemoteError::Invalid {
            op,
            reason: format!("snapshot {:?} has no id or no manifest", s.id),
        });
    }
    Ok(SnapshotInfo {
        id: s.id,
        source: s.source,
        started_at_unix_ms: s.started_at_unix_ms,
        finished_at_unix_ms: s.finished_at_unix_ms,
        committed_at_unix_ms: s.committed_at_unix_ms,
        stats: s.stats.unwrap_or_default(),
        stored_bytes: s.stored_bytes,
        manifest_ids,
        reference_count: s.reference_count,
    })
}
