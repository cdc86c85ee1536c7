//! Schema migrations, keyed by `PRAGMA user_version`. A migration is never edited once shipped;
//! a change is a new entry appended to [`MIGRATIONS`].

use rusqlite::Connection;

use super::CatalogError;

/// Each entry moves the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    dedup_group TEXT NOT NULL,
    cert_sha256 TEXT NOT NULL UNIQUE,
    not_after   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE admins (
    cert_sha256 TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
CREATE TABLE packs (
    id         BLOB PRIMARY KEY,
    key        TEXT NOT NULL,
    size       INTEGER NOT NULL,
    entries    INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE chunks (
    dedup_group TEXT NOT NULL,
    id          BLOB NOT NULL,
    pack_id     BLOB NOT NULL REFERENCES packs(id),
    offset      INTEGER NOT NULL,
    length      INTEGER NOT NULL,
    blob_hash   BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (dedup_group, id)
) WITHOUT ROWID;
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    agent         TEXT NOT NULL REFERENCES agents(id),
    source        TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    stored_bytes  INTEGER NOT NULL DEFAULT 0,
    stored_chunks INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE snapshots (
    id                TEXT PRIMARY KEY,
    agent             TEXT NOT NULL REFERENCES agents(id),
    source            TEXT NOT NULL,
    session_id        TEXT NOT NULL,
    started_at        INTEGER NOT NULL,
    finished_at       INTEGER NOT NULL,
    committed_at      INTEGER NOT NULL,
    files             INTEGER NOT NULL,
    dirs              INTEGER NOT NULL,
    symlinks          INTEGER NOT NULL,
    logical_bytes     INTEGER NOT NULL,
    new_logical_bytes INTEGER NOT NULL,
    chunks            INTEGER NOT NULL,
    new_chunks        INTEGER NOT NULL,
    unreadable        INTEGER NOT NULL,
    files_read        INTEGER NOT NULL,
    stored_bytes      INTEGER NOT NULL,
    manifest_ids      BLOB NOT NULL,
    reference_count   INTEGER NOT NULL,
    record_key        TEXT NOT NULL
);
CREATE INDEX snapshots_by_agent ON snapshots(agent, source, committed_at);
CREATE TABLE snapshot_refs (
    snapshot_id TEXT NOT NULL REFERENCES snapshots(id),
    chunk_id    BLOB NOT NULL,
    PRIMARY KEY (snapshot_id, chunk_id)
) WITHOUT ROWID;
CREATE INDEX snapshot_refs_by_chunk ON snapshot_refs(chunk_id);
"#,
    // v2: failed backups (reported by agents, shown by `snapshots list`) and restore grants
    // (`lifeboatctl agent allow-restore NEW --from OLD`).
    r#"
CREATE TABLE backup_failures (
    id          TEXT PRIMARY KEY,
    agent       TEXT NOT NULL REFERENCES agents(id),
    source      TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    reported_at INTEGER NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX backup_failures_by_agent ON backup_failures(agent, source, reported_at);
CREATE TABLE restore_grants (
    agent      TEXT NOT NULL REFERENCES agents(id),
    from_agent TEXT NOT NULL REFERENCES agents(id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (agent, from_agent)
) WITHOUT ROWID;
"#,
    // v3: the replication queue (every object written to the primary, copied to the secondary
    // by `crate::replication`), the objects a snapshot record must wait for, and the packs that
    // existed before this version (so records never wait on a pack that was never queued).
    r#"
CREATE TABLE replication_queue (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    key             TEXT NOT NULL,
    op              TEXT NOT NULL,
    kind            TEXT NOT NULL,
    size            INTEGER,
    blake3          BLOB,
    enqueued_at     INTEGER NOT NULL,
    not_before      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    last_error_at   INTEGER,
    done_at         INTEGER,
    UNIQUE (key, op)
);
CREATE INDEX replication_queue_pending ON replication_queue(done_at, next_attempt_at);
CREATE TABLE replication_deps (
    record_key TEXT NOT NULL,
    dep_key    TEXT NOT NULL,
    PRIMARY KEY (record_key, dep_key)
) WITHOUT ROWID;
INSERT OR IGNORE INTO replication_queue (key, op, kind, size, blake3, enqueued_at)
    SELECT key, 'copy', 'pack', size, id, created_at FROM packs;
"#,
    // v4: enrollment with join tokens (only SHA-256 of the secret is stored; every use is
    // recorded), revocation (checked on every call) and renewal (the previous certificate stays
    // valid until the new one is used or `prev_valid_until` passes).
    r#"
CREATE TABLE join_tokens (
    secret_sha256 TEXT PRIMARY KEY,
    agent         TEXT,
    name_prefix   TEXT NOT NULL DEFAULT '',
    dedup_group   TEXT,
    uses_left     INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE TABLE join_token_uses (
    secret_sha256 TEXT NOT NULL,
    agent         TEXT NOT NULL,
    peer          TEXT NOT NULL,
    used_at       INTEGER NOT NULL
);
CREATE TABLE revoked_certs (
    cert_sha256 TEXT PRIMARY KEY,
    agent       TEXT NOT NULL,
    revoked_at  INTEGER NOT NULL
);
ALTER TABLE agents ADD COLUMN revoked_at INTEGER;
ALTER TABLE agents ADD COLUMN prev_cert_sha256 TEXT;
ALTER TABLE agents ADD COLUMN prev_valid_until INTEGER NOT NULL DEFAULT 0;
"#,
    // v5: catalog rebuild (rebuild-catalog): a snapshot whose reference set names chunks that no
    // pack holds is kept but flagged, never listed as restorable.
    r#"
ALTER TABLE snapshots ADD COLUMN missing_refs INTEGER NOT NULL DEFAULT 0;
"#,
    // v6: retention (forget): a forgotten snapshot is hidden at once; GC removes its objects.
    r#"
ALTER TABLE snapshots ADD COLUMN forgotten_at INTEGER;
"#,
    // v7: fleet operations: policies per scope, the last alerted state of each condition,
    // and what agents said about themselves on their control stream.
    r#"
CREATE TABLE policies (
    scope      TEXT NOT NULL,
    source     TEXT NOT NULL DEFAULT '',
    schedule   TEXT,
    rpo_ms     INTEGER,
    bandwidth  INTEGER,
    nice       INTEGER,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope, source)
) WITHOUT ROWID;
CREATE TABLE alert_state (
    agent      TEXT NOT NULL,
    source     TEXT NOT NULL,
    condition  TEXT NOT NULL,
    firing     INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    PRIMARY KEY (agent, source, condition)
) WITHOUT ROWID;
ALTER TABLE agents ADD COLUMN version TEXT NOT NULL DEFAULT '';
"#,
    // v8: garbage collection: pins of upload sessions (with leases), condemned chunks, and the
    // objects GC has removed from the catalog but not yet from the store (`gc_tombstones`).
    r#"
ALTER TABLE sessions ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
CREATE TABLE session_pins (
    session_id  TEXT NOT NULL,
    dedup_group TEXT NOT NULL,
    chunk_id    BLOB NOT NULL,
    PRIMARY KEY (session_id, dedup_group, chunk_id)
) WITHOUT ROWID;
ALTER TABLE chunks ADD COLUMN condemned_at INTEGER;
CREATE INDEX session_pins_by_chunk ON session_pins(dedup_group, chunk_id);
CREATE INDEX chunks_by_pack ON chunks(pack_id);
CREATE INDEX chunks_condemned ON chunks(condemned_at) WHERE condemned_at IS NOT NULL;
CREATE INDEX sessions_by_lease ON sessions(lease_until);
CREATE TABLE gc_tombstones (
    key            TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    size           INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    snapshots_seen INTEGER NOT NULL
);
"#,
    // v9: reference sets shared between snapshots (`super::refsets`, ADR 0010). A snapshot's
    // references become the union of its sets; `snapshot_refs` becomes a view with the same
    // columns. Each existing snapshot gets one set of its own, named 'v8 ' || its id (never a
    // 32-byte content name, so never shared); snapshots committed from now on share sets.
    r#"
CREATE TABLE ref_sets (
    id          INTEGER PRIMARY KEY,
    dedup_group TEXT NOT NULL,
    name        BLOB NOT NULL,
    refs        INTEGER NOT NULL,
    UNIQUE (dedup_group, name)
);
CREATE TABLE ref_set_chunks (
    set_id   INTEGER NOT NULL,
    chunk_id BLOB NOT NULL,
    PRIMARY KEY (set_id, chunk_id)
) WITHOUT ROWID;
CREATE INDEX ref_set_chunks_by_chunk ON ref_set_chunks(chunk_id);
CREATE TABLE snapshot_sets (
    snapshot_id TEXT NOT NULL,
    set_id      INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, set_id)
) WITHOUT ROWID;
CREATE INDEX snapshot_sets_by_set ON snapshot_sets(set_id);
CREATE TEMP TABLE v9_sets AS
    SELECT v.snapshot_id, v.refs, COALESCE(a.dedup_group, '') AS grp
    FROM (SELECT snapshot_id, COUNT(*) AS refs FROM snapshot_refs GROUP BY snapshot_id) v
    LEFT JOIN snapshots s ON s.id = v.snapshot_id LEFT JOIN agents a ON a.id = s.agent;
INSERT INTO ref_sets (dedup_group, name, refs)
    SELECT grp, CAST('v8 ' || snapshot_id AS BLOB), refs FROM v9_sets ORDER BY snapshot_id;
INSERT INTO snapshot_sets (snapshot_id, set_id)
    SELECT v.snapshot_id, r.id FROM v9_sets v
    JOIN ref_sets r ON r.dedup_group = v.grp AND r.name = CAST('v8 ' || v.snapshot_id AS BLOB);
INSERT INTO ref_set_chunks (set_id, chunk_id)
    SELECT ss.set_id, r.chunk_id FROM snapshot_refs r
    JOIN snapshot_sets ss ON ss.snapshot_id = r.snapshot_id;
DROP TABLE v9_sets;
DROP INDEX snapshot_refs_by_chunk;
DROP TABLE snapshot_refs;
CREATE VIEW snapshot_refs (snapshot_id, chunk_id) AS
    SELECT ss.snapshot_id, rc.chunk_id FROM snapshot_sets ss
    JOIN ref_set_chunks rc ON rc.set_id = ss.set_id;
"#,
];

/// Brings the schema up to date; refuses a catalog newer than this binary.
pub fn migrate(conn: &mut Connection) -> Result<(), CatalogError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(CatalogError::TooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "catalog schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let cat = crate::catalog::Catalog::open(&path).expect("open");
        let v: i64 = cat
            .run_blocking(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .expect("version");
        assert_eq!(v, MIGRATIONS.len() as i64);
        drop(cat);
        // Reopening is a no-op.
        let cat = crate::catalog::Catalog::open(&path).expect("reopen");
        cat.run_blocking(|c| Ok(c.pragma_update(None, "user_version", 99)?))
            .expect("bump");
        drop(cat);
        let e = crate::catalog::Catalog::open(&path).expect_err("too new");
        assert!(matches!(e, CatalogError::TooNew { found: 99, .. }), "{e}");
    }
}
