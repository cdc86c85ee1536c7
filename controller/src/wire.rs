//! Validation at the edge: protobuf messages → domain types, and domain rows → protobuf.
//!
//! Every request is converted here before any inner code sees it. Bad ids, lengths, counts or
//! names become `InvalidArgument` with a message naming the field.

use bytes::Bytes;
use lifeboat_common::blob::check_framing;
use lifeboat_common::ids::{ChunkId, SNAPSHOT_ID_LEN, validate_source_name};
use lifeboat_proto::v1 as pb;

use crate::catalog::agents::AgentRow;
use crate::catalog::snapshots::{Selector, SnapshotRow};
use crate::error::ServiceError;
use crate::record::SnapshotStats;
use crate::{MAX_IDS, MAX_REFERENCE_COUNT};

/// An upload session id: 32 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    pub fn generate() -> Self {
        let mut b = [0u8; 16];
        lifeboat_common::keys::fill_random(&mut b);
        SessionId(hex::encode(b))
    }

    pub fn parse(s: &str) -> Result<Self, ServiceError> {
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(SessionId(s.to_owned()))
        } else {
            Err(ServiceError::invalid(format!(
                "invalid session id {s:?}: call BeginSession first"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Converts raw ids, enforcing [`MAX_IDS`] and the id length.
pub fn ids(raw: &[Bytes], field: &str) -> Result<Vec<ChunkId>, ServiceError> {
    if raw.len() > MAX_IDS {
        return Err(ServiceError::invalid(format!(
            "{field}: {} ids in one message, the limit is {MAX_IDS}; split the request",
            raw.len()
        )));
    }
    raw.iter()
        .enumerate()
        .map(|(i, b)| {
            ChunkId::try_from(b.as_ref())
                .map_err(|e| ServiceError::invalid(format!("{field}[{i}]: {e}")))
        })
        .collect()
}

/// A validated source name.
pub fn source(s: &str) -> Result<String, ServiceError> {
    validate_source_name(s).map_err(|e| ServiceError::invalid(e.to_string()))?;
    Ok(s.to_owned())
}

/// A HaveChunks request.
#[derive(Debug)]
pub struct HaveChunks {
    pub session: SessionId,
    pub ids: Vec<ChunkId>,
}

impl TryFrom<pb::HaveChunksRequest> for HaveChunks {
    type Error = ServiceError;
    fn try_from(r: pb::HaveChunksRequest) -> Result<Self, ServiceError> {
        Ok(HaveChunks {
            session: SessionId::parse(&r.session_id)?,
            ids: ids(&r.ids, "ids")?,
        })
    }
}

/// One message of an upload stream: framing-checked blobs.
#[derive(Debug)]
pub struct UploadBatch {
    pub session: SessionId,
    pub blobs: Vec<(ChunkId, Bytes)>,
}

impl TryFrom<pb::UploadChunksRequest> for UploadBatch {
    type Error = ServiceError;
    fn try_from(r: pb::UploadChunksRequest) -> Result<Self, ServiceError> {
        let session = SessionId::parse(&r.session_id)?;
        if r.blobs.len() > MAX_IDS {
            return Err(ServiceError::invalid(format!(
                "{} blobs in one message, the limit is {MAX_IDS}",
                r.blobs.len()
            )));
        }
        let blobs = r
            .blobs
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let id = ChunkId::try_from(b.id.as_ref())
                    .map_err(|e| ServiceError::invalid(format!("blobs[{i}].id: {e}")))?;
                check_framing(&b.data)
                    .map_err(|e| ServiceError::invalid(format!("blobs[{i}] (chunk {id}): {e}")))?;
                Ok((id, b.data))
            })
            .collect::<Result<_, ServiceError>>()?;
        Ok(UploadBatch { session, blobs })
    }
}

/// A validated commit header.
#[derive(Debug, Clone)]
pub struct CommitHeader {
    pub session: SessionId,
    pub started_at: i64,
    pub finished_at: i64,
    pub stats: SnapshotStats,
    pub manifest_ids: Vec<ChunkId>,
    pub reference_count: u64,
}

impl TryFrom<pb::CommitHeader> for CommitHeader {
    type Error = ServiceError;
    fn try_from(h: pb::CommitHeader) -> Result<Self, ServiceError> {
        if h.reference_count > MAX_REFERENCE_COUNT {
            return Err(ServiceError::invalid(format!(
                "reference_count {} exceeds the limit of {MAX_REFERENCE_COUNT}",
                h.reference_count
            )));
        }
        if h.finished_at_unix_ms < h.started_at_unix_ms {
            return Err(ServiceError::invalid("finished_at is before started_at"));
        }
        Ok(CommitHeader {
            session: SessionId::parse(&h.session_id)?,
            started_at: h.started_at_unix_ms,
            finished_at: h.finished_at_unix_ms,
            stats: h.stats.map(stats_from_pb).unwrap_or_default(),
            manifest_ids: ids(&h.manifest_ids, "manifest_ids")?,
            reference_count: h.reference_count,
        })
    }
}

pub fn stats_from_pb(s: pb::SnapshotStats) -> SnapshotStats {
    SnapshotStats {
        files: s.files,
        dirs: s.dirs,
        symlinks: s.symlinks,
        logical_bytes: s.logical_bytes,
        new_logical_bytes: s.new_logical_bytes,
        chunks: s.chunks,
        new_chunks: s.new_chunks,
        unreadable: s.unreadable,
        files_read: s.files_read,
    }
}

pub fn stats_to_pb(s: &SnapshotStats) -> pb::SnapshotStats {
    pb::SnapshotStats {
        files: s.files,
        dirs: s.dirs,
        symlinks: s.symlinks,
        logical_bytes: s.logical_bytes,
        new_logical_bytes: s.new_logical_bytes,
        chunks: s.chunks,
        new_chunks: s.new_chunks,
        unreadable: s.unreadable,
        files_read: s.files_read,
    }
}

/// Parses a snapshot selector: "latest" (needs a source), or a full id / unique hex prefix.
pub fn selector(id: &str, source_name: &str) -> Result<Selector, ServiceError> {
    if id == "latest" {
        if source_name.is_empty() {
            return Err(ServiceError::invalid(
                "\"latest\" needs a source name: which source's latest snapshot?",
            ));
        }
        return Ok(Selector::Latest {
            source: source(source_name)?,
        });
    }
    let ok = !id.is_empty()
        && id.len() <= SNAPSHOT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(ServiceError::invalid(format!(
            "invalid snapshot id {id:?}: expected up to {SNAPSHOT_ID_LEN} lowercase hex characters or \"latest\""
        )));
    }
    Ok(Selector::IdOrPrefix(id.to_owned()))
}

pub fn snapshot_to_pb(s: &SnapshotRow) -> pb::Snapshot {
    pb::Snapshot {
        id: s.id.clone(),
        agent_id: s.agent.clone(),
        source: s.source.clone(),
        started_at_unix_ms: s.started_at,
        finished_at_unix_ms: s.finished_at,
        committed_at_unix_ms: s.committed_at,
        stats: Some(stats_to_pb(&s.stats)),
        stored_bytes: s.stored_bytes,
        manifest_ids: s
            .manifest_ids
            .iter()
            .map(|i| Bytes::copy_from_slice(i.as_bytes()))
            .collect(),
        reference_count: s.reference_count,
        // Filled by the admin listing ([`crate::replication::queue::record_replicated`]).
        replicated: false,
    }
}

pub fn agent_to_pb(a: &AgentRow) -> pb::Agent {
    pb::Agent {
        id: a.id.clone(),
        dedup_group: a.dedup_group.clone(),
        created_at_unix_ms: a.created_at,
        certificate_sha256: a.cert_sha256.clone(),
        not_after_unix_ms: a.not_after,
        last_seen_unix_ms: a.last_seen,
        snapshots: a.snapshots,
        // Set by the caller from `credentials::revoked_agents` (AgentRow does not carry it).
        revoked_at_unix_ms: 0,
        // Set by the caller from the live control streams (not in the catalog).
        connected: false,
        version: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_sized() {
        let ok = vec![Bytes::from(vec![1u8; 32]); 3];
        assert_eq!(ids(&ok, "ids").expect("ok").len(), 3);
        let e = ids(&[Bytes::from(vec![1u8; 31])], "ids").expect_err("short");
        assert!(e.to_string().contains("ids[0]"), "{e}");
        let many = vec![Bytes::from(vec![1u8; 32]); MAX_IDS + 1];
        assert!(ids(&many, "ids").is_err());
    }

    #[test]
    fn selectors() {
        assert_eq!(
            selector("latest", "web").expect("latest"),
            Selector::Latest {
                source: "web".into()
            }
        );
        assert!(selector("latest", "").is_err());
        assert!(selector("ABC", "").is_err());
        assert!(selector("abc%", "").is_err());
        assert!(selector("", "").is_err());
        assert_eq!(
            selector("abc", "").expect("prefix"),
            Selector::IdOrPrefix("abc".into())
        );
        assert!(SessionId::parse(SessionId::generate().as_str()).is_ok());
        assert!(SessionId::parse("nope").is_err());
    }
}
