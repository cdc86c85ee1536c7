//! The controller-visible snapshot record, stored as `snapshots/<agent>/<snapshot id>`.
//!
//! JSON, `"format": 1` (do not change the meaning of a shipped field; add fields, never rename).
//! It holds only what the controller may know: agent, source, times, counts and sizes, the
//! manifest's chunk ids (hex) and the keys of the reference-set segments ([`crate::refset`]).
//! A catalog can be rebuilt from these records and the segments they name.

use serde::{Deserialize, Serialize};

/// Current snapshot record format. Do not modify the meaning of a shipped version.
pub const RECORD_FORMAT: u32 = 1;

/// Counts and sizes the agent reports for a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub logical_bytes: u64,
    pub new_logical_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub unreadable: u64,
    pub files_read: u64,
}

/// The snapshot record object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub format: u32,
    pub id: String,
    pub agent: String,
    pub source: String,
    pub started_at_unix_ms: i64,
    pub finished_at_unix_ms: i64,
    pub committed_at_unix_ms: i64,
    pub stats: SnapshotStats,
    pub stored_bytes: u64,
    /// The encrypted manifest's chunk ids, hex, in order.
    pub manifest_ids: Vec<String>,
    /// Keys of the reference-set segments, in order.
    pub ref_segments: Vec<String>,
    pub reference_count: u64,
}

/// The object key of a snapshot record.
pub fn record_key(agent: &str, snapshot: &str) -> String {
    format!("snapshots/{agent}/{snapshot}")
}

impl SnapshotRecord {
    /// Pretty JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses a record object.
    pub fn from_bytes(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_with_format_field() {
        let r = SnapshotRecord {
            format: RECORD_FORMAT,
            id: "0123456789abcdef0123".into(),
            agent: "web-01".into(),
            source: "web".into(),
            started_at_unix_ms: 1,
            finished_at_unix_ms: 2,
            committed_at_unix_ms: 3,
            stats: SnapshotStats {
                files: 4,
                ..Default::default()
            },
            stored_bytes: 5,
            manifest_ids: vec!["aa".into()],
            ref_segments: vec!["refs/aa/bb".into()],
            reference_count: 1,
        };
        let b = r.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["format"], 1);
        assert_eq!(SnapshotRecord::from_bytes(&b).expect("parse"), r);
        assert_eq!(
            record_key("web-01", &r.id),
            "snapshots/web-01/0123456789abcdef0123"
        );
    }
}
