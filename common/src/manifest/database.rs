//! Database metadata carried by the manifest of a `mysql` source (header field 8).
//!
//! Additive to manifest format version 1: older readers ignore the field (protobuf skips unknown
//! tags), so no version bump. Tags here are never reused. Everything is encrypted with the rest
//! of the manifest; the controller never sees table names or counts.
//!
//! Each dumped database is one manifest `Entry` (a file under root `/` at path
//! `databases/<name>.sql`), and [`DatabaseDump::path`] names that entry; the users-and-grants
//! dump is the entry named by [`DatabaseMeta::users_path`]. A restore looks the entries up by
//! path, so the dump bytes go through exactly the same chunk and verification path as files.

use prost::Message;

/// Server-wide facts captured at backup time.
#[derive(Clone, PartialEq, Message)]
pub struct DatabaseMeta {
    /// `SELECT VERSION()`, e.g. `10.11.6-MariaDB-0+deb12u1`.
    #[prost(string, tag = "1")]
    pub server_version: String,
    /// The dump tool used (`mariadb-dump` or `mysqldump`) and its `--version` line.
    #[prost(string, tag = "2")]
    pub dump_tool: String,
    /// Binary log coordinates from `--master-data=2` (empty when `@@log_bin` is off).
    #[prost(string, tag = "3")]
    pub binlog_file: String,
    #[prost(uint64, tag = "4")]
    pub binlog_position: u64,
    /// `@@gtid_binlog_pos` (MariaDB) or `@@gtid_executed` (MySQL), when non-empty.
    #[prost(string, tag = "5")]
    pub gtid: String,
    #[prost(message, repeated, tag = "6")]
    pub databases: Vec<DatabaseDump>,
    /// Path of the users-and-grants entry; empty when users were not backed up.
    #[prost(string, tag = "7")]
    pub users_path: String,
    /// Accounts in the users dump, as `'user'@'host'`.
    #[prost(string, repeated, tag = "8")]
    pub users: Vec<String>,
    /// "counts" or "checksums": what the tables carry.
    #[prost(string, tag = "9")]
    pub verify: String,
}

/// One database's dump.
#[derive(Clone, PartialEq, Message)]
pub struct DatabaseDump {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The manifest entry holding the dump stream (root 0, relative path).
    #[prost(string, tag = "2")]
    pub path: String,
    #[prost(string, tag = "3")]
    pub default_charset: String,
    #[prost(string, tag = "4")]
    pub default_collation: String,
    /// Base tables, in dump order, with row counts counted from the dump stream.
    #[prost(message, repeated, tag = "5")]
    pub tables: Vec<TableInfo>,
    /// Views, routines, triggers and events by name (checked to exist after a restore).
    #[prost(string, repeated, tag = "6")]
    pub views: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub routines: Vec<String>,
    #[prost(string, repeated, tag = "8")]
    pub triggers: Vec<String>,
    #[prost(string, repeated, tag = "9")]
    pub events: Vec<String>,
}

/// One base table.
#[derive(Clone, PartialEq, Message)]
pub struct TableInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    /// Rows in the table's INSERT statements in the dump stream.
    #[prost(uint64, tag = "2")]
    pub rows: u64,
    /// `CHECKSUM TABLE` right after the dump, when `verify = "checksums"`.
    #[prost(uint64, optional, tag = "3")]
    pub checksum: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ManifestHeader, ManifestWriter, decode};

    #[test]
    fn header_with_database_meta_round_trips_and_old_headers_decode() {
        let meta = DatabaseMeta {
            server_version: "10.11.6-MariaDB".into(),
            databases: vec![DatabaseDump {
                name: "poc_db".into(),
                path: "databases/poc_db.sql".into(),
                tables: vec![TableInfo {
                    name: "test_table".into(),
                    rows: 3,
                    checksum: Some(42),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let header = ManifestHeader {
            source: "db".into(),
            kind: "mysql".into(),
            roots: vec![b"/".to_vec()],
            database: Some(meta.clone()),
            ..Default::default()
        };
        let m = decode(&ManifestWriter::new(&header).finish()).expect("decode");
        assert_eq!(m.header.database, Some(meta));
        let old = ManifestHeader {
            database: None,
            ..header
        };
        assert_eq!(
            decode(&ManifestWriter::new(&old).finish())
                .expect("decode")
                .header
                .database,
            None
        );
    }
}
