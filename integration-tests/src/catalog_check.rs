//! The crash invariant, checked from the outside: reads a controller's catalog (SQLite, directly)
//! and its local object store directory, and lists every violation of "acknowledged means
//! durable" and "visible means complete":
//! - every pack row names an object that exists with the recorded size;
//! - every chunk row lies inside its pack, and the bytes there hash (BLAKE3) to its recorded hash;
//! - every snapshot row has its record object (parsable, naming the same id) and every
//!   reference-set segment the record lists;
//! - every chunk a snapshot references is stored for the snapshot's agent's dedup group.
//!
//! Run it while the controller is stopped (after a crash, before restart) or idle; it only reads.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// What the catalog held when checked.
#[derive(Debug, Clone, Default)]
pub struct CatalogState {
    /// Committed snapshot ids, oldest first.
    pub snapshots: Vec<String>,
    /// Chunk rows (acknowledged blobs) and the sum of their lengths.
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub packs: u64,
}

struct PackRow {
    key: String,
    size: u64,
}

fn open(dir: &Path) -> Connection {
    let path = dir.join("catalog.db");
    Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .unwrap_or_else(|e| panic!("open catalog {}: {e}", path.display()))
}

fn packs(c: &Connection, objects: &Path, bad: &mut Vec<String>) -> HashMap<Vec<u8>, PackRow> {
    let mut st = c
        .prepare("SELECT id, key, size FROM packs")
        .expect("query packs");
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .expect("packs");
    let mut out = HashMap::new();
    for row in rows {
        let (id, key, size) = row.expect("pack row");
        let size = u64::try_from(size).unwrap_or(0);
        match fs::metadata(objects.join(&key)) {
            Ok(m) if m.len() == size => {}
            Ok(m) => bad.push(format!(
                "pack {key}: recorded {size} bytes, object has {}",
                m.len()
            )),
            Err(e) => bad.push(format!("pack {key} is in the catalog but not stored: {e}")),
        }
        out.insert(id, PackRow { key, size });
    }
    out
}

fn chunks(
    c: &Connection,
    objects: &Path,
    packs: &HashMap<Vec<u8>, PackRow>,
    bad: &mut Vec<String>,
) -> (u64, u64) {
    let mut st = c
        .prepare("SELECT id, pack_id, offset, length, blob_hash FROM chunks ORDER BY pack_id")
        .expect("query chunks");
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })
        .expect("chunks");
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut cached: Option<(Vec<u8>, Vec<u8>)> = None;
    for row in rows {
        let (id, pack_id, offset, length, hash) = row.expect("chunk row");
        n += 1;
        bytes += u64::try_from(length).unwrap_or(0);
        let Some(pack) = packs.get(&pack_id) else {
            bad.push(format!("chunk {} names an unknown pack", hex(&id)));
            continue;
        };
        let (off, len) = (offset as usize, length as usize);
        if (off + len) as u64 > pack.size {
            bad.push(format!("chunk {} lies outside pack {}", hex(&id), pack.key));
            continue;
        }
        if cached.as_ref().is_none_or(|(p, _)| *p != pack_id) {
            let data = fs::read(objects.join(&pack.key)).unwrap_or_default();
            cached = Some((pack_id.clone(), data));
        }
        let data = cached.as_ref().map(|(_, d)| d.as_slice()).unwrap_or(&[]);
        let ok = data
            .get(off..off + len)
            .is_some_and(|b| blake3::hash(b).as_bytes().as_slice() == hash.as_slice());
        if !ok {
            bad.push(format!(
                "chunk {} in pack {} does not match its recorded hash",
                hex(&id),
                pack.key
            ));
        }
    }
    (n, bytes)
}

fn snapshots(c: &Connection, objects: &Path, bad: &mut Vec<String>) -> Vec<String> {
    let mut st = c
        .prepare("SELECT id, record_key FROM snapshots ORDER BY committed_at, id")
        .expect("query snapshots");
    let rows: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("snapshots")
        .map(|r| r.expect("snapshot row"))
        .collect();
    for (id, key) in &rows {
        let Ok(bytes) = fs::read(objects.join(key)) else {
            bad.push(format!("snapshot {id}: record object {key} missing"));
            continue;
        };
        let rec: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                bad.push(format!("snapshot {id}: record {key} unreadable: {e}"));
                continue;
            }
        };
        if rec["id"].as_str() != Some(id) {
            bad.push(format!("snapshot {id}: record {key} names {}", rec["id"]));
        }
        for seg in rec["ref_segments"].as_array().into_iter().flatten() {
            let seg = seg.as_str().unwrap_or("");
            if !objects.join(seg).is_file() {
                bad.push(format!("snapshot {id}: reference segment {seg} missing"));
            }
        }
    }
    let mut st = c
        .prepare(
            "SELECT r.snapshot_id, r.chunk_id FROM snapshot_refs r \
             JOIN snapshots s ON s.id = r.snapshot_id JOIN agents a ON a.id = s.agent \
             LEFT JOIN chunks c ON c.dedup_group = a.dedup_group AND c.id = r.chunk_id \
             WHERE c.id IS NULL",
        )
        .expect("query dangling refs");
    let dangling = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .expect("dangling refs");
    for d in dangling {
        let (snap, chunk) = d.expect("row");
        bad.push(format!(
            "snapshot {snap} references chunk {} that is not stored",
            hex(&chunk)
        ));
    }
    rows.into_iter().map(|(id, _)| id).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks the invariant for the controller in `dir` (objects under `dir/objects`); panics with
/// every violation found, otherwise returns what the catalog holds.
pub fn check(dir: &Path) -> CatalogState {
    let mut conn = open(dir);
    // One read transaction, so the queries below see one state of the catalog: a controller
    // may still be recording the pack of an upload whose agent died after sending it (the
    // agent crash tests), and a pack recorded between the packs query and the chunks query
    // would look like chunks naming an unknown pack.
    let c = conn.transaction().expect("read transaction");
    let objects = dir.join("objects");
    let mut bad = Vec::new();
    let packs = packs(&c, &objects, &mut bad);
    let (chunks, chunk_bytes) = chunks(&c, &objects, &packs, &mut bad);
    let snapshots = snapshots(&c, &objects, &mut bad);
    assert!(
        bad.is_empty(),
        "catalog/store invariant broken in {}:\n{}",
        dir.display(),
        bad.join("\n")
    );
    CatalogState {
        snapshots,
        chunks,
        chunk_bytes,
        packs: packs.len() as u64,
    }
}

/// Deletes the catalog rows of the largest pack (its chunks, then the pack), leaving the object:
/// a catalog restored from an older copy. Returns the number of chunk rows removed.
pub fn forget_largest_pack(dir: &Path) -> usize {
    let c = open(dir);
    let id: Vec<u8> = c
        .query_row("SELECT id FROM packs ORDER BY size DESC LIMIT 1", [], |r| {
            r.get(0)
        })
        .expect("largest pack");
    let n = c
        .execute("DELETE FROM chunks WHERE pack_id = ?1", [&id])
        .expect("delete chunks");
    c.execute("DELETE FROM packs WHERE id = ?1", [&id])
        .expect("delete pack");
    n
}
