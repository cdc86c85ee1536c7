//! Fuzz target bodies: one plain function per decoder of hostile input.
//!
//! Each function takes arbitrary bytes and must never panic, whatever they are. Where a decoder
//! accepts its input, the function also checks a property that a wrong decoder would break
//! (a re-encode gives the same bytes or the same value, accepted values are within their
//! limits), so that the fuzzer finds logic errors as well as crashes.
//!
//! This file is used twice: as the library behind the `cargo fuzz` targets in `fuzz_targets/`
//! (one-line wrappers), and, through `#[path]`, by `controller/tests/fuzz_corpus.rs`, which
//! replays every file of `fuzz/corpus/<target>/` through [`TARGETS`] on stable Rust in CI. It
//! may therefore use only crates that the controller depends on.

use lifeboat_common::blob::{self, BLOB_MAGIC, BLOB_VERSION, MAX_BLOB_LEN, OVERHEAD};
use lifeboat_common::ids::{AgentId, CHUNK_ID_LEN, ChunkId};
use lifeboat_common::keys::{DataKeys, MasterKey};
use lifeboat_common::manifest::{self, ManifestWriter};
use lifeboat_controller::record::SnapshotRecord;
use lifeboat_controller::{MAX_IDS, pack, refset, wire};
use lifeboat_proto::v1 as pb;
use prost::Message;

/// A target body: arbitrary bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/<name>.rs` and `corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("blob_open", blob_open),
    ("blob_framing", blob_framing),
    ("blob_seal_open", blob_seal_open),
    ("manifest_decode", manifest_decode),
    ("pack_footer", pack_footer),
    ("refset_decode", refset_decode),
    ("snapshot_record", snapshot_record),
    ("wire_requests", wire_requests),
];

/// The fixed key every blob target uses.
fn keys() -> DataKeys {
    MasterKey::from_bytes([7; 32]).data_keys()
}

/// `blob::open`: the first 32 bytes are the chunk id, the rest the blob.
pub fn blob_open(data: &[u8]) {
    if data.len() < CHUNK_ID_LEN {
        return;
    }
    let (id, blob) = data.split_at(CHUNK_ID_LEN);
    let id = ChunkId::try_from(id).expect("32 bytes are a chunk id");
    let k = keys();
    match blob::open(&k, &id, blob) {
        Ok(plain) => {
            assert!(
                blob::check_framing(blob).is_ok(),
                "opened a badly framed blob"
            );
            assert_eq!(
                k.chunk_id(&plain),
                id,
                "opened a blob whose content is not its id"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `blob::check_framing`, against its specification.
pub fn blob_framing(data: &[u8]) {
    let expected = (OVERHEAD..=MAX_BLOB_LEN).contains(&data.len())
        && data[..4] == BLOB_MAGIC
        && data[4] == BLOB_VERSION;
    let got = blob::check_framing(data);
    assert_eq!(got.is_ok(), expected, "check_framing disagrees: {got:?}");
}

/// `seal` then `open`: byte 0 picks the zstd level, byte 1 a position to damage, the rest is
/// the plaintext. The round trip must give the plaintext back; any damaged byte, or the wrong
/// id, must be refused.
pub fn blob_seal_open(data: &[u8]) {
    let [level, pos, plain @ ..] = data else {
        return;
    };
    let k = keys();
    let id = k.chunk_id(plain);
    let level = i32::from(level % 4);
    let mut sealed = blob::seal(&k, &id, plain, level).expect("seal a small chunk");
    assert_eq!(
        blob::open(&k, &id, &sealed).expect("open what was sealed"),
        plain
    );
    let other = k.chunk_id(&[plain, b"x"].concat());
    assert!(
        blob::open(&k, &other, &sealed).is_err(),
        "opened under the wrong id"
    );
    let i = usize::from(*pos) * sealed.len() / 256;
    sealed[i] ^= 0x01;
    assert!(
        blob::open(&k, &id, &sealed).is_err(),
        "damaged byte {i} not detected"
    );
}

/// `manifest::decode`: an accepted manifest re-encodes to one that decodes to the same value.
pub fn manifest_decode(data: &[u8]) {
    let m = match manifest::decode(data) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for (i, _) in m.header.roots.iter().enumerate() {
        let root = m.root_path(u32::try_from(i).expect("few roots"));
        assert!(root.is_absolute(), "root {root:?} is not absolute");
    }
    for e in &m.entries {
        e.validate(m.header.roots.len())
            .expect("decode validated it");
        assert!(
            !e.rel_path().is_absolute(),
            "entry path {:?} is absolute",
            e.rel_path()
        );
        let _ = m.root_path(e.root);
    }
    let mut w = ManifestWriter::new(&m.header);
    for e in &m.entries {
        w.push(e);
    }
    let again = manifest::decode(&w.finish()).expect("a re-encoded manifest decodes");
    assert_eq!(again, m, "manifest changed on re-encoding");
}

/// `pack::parse_footer`: accepted entries are ordered, disjoint and inside the data, and
/// re-encoding the footer gives the input back.
pub fn pack_footer(data: &[u8]) {
    let entries = match pack::parse_footer(data) {
        Ok(v) => v,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let data_end = data.len() - pack::TRAILER_LEN - entries.len() * pack::ENTRY_LEN;
    let mut next_free = 0u64;
    for e in &entries {
        assert!(e.offset >= next_free, "entries overlap or are out of order");
        next_free = e.offset + u64::from(e.length);
        assert!(next_free <= data_end as u64, "entry runs past the data");
    }
    let again = pack::encode(data[..data_end].to_vec(), &entries);
    assert_eq!(again, data, "footer changed on re-encoding");
}

/// `refset::decode`: accepted segments are the header followed by whole ids.
pub fn refset_decode(data: &[u8]) {
    let ids = match refset::decode(data) {
        Ok(v) => v,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(ids.len() * CHUNK_ID_LEN + 5, data.len());
    assert_eq!(&data[..4], &refset::REFS_MAGIC);
    for (id, raw) in ids.iter().zip(data[5..].chunks_exact(CHUNK_ID_LEN)) {
        assert_eq!(id.as_bytes(), raw);
    }
}

/// `SnapshotRecord::from_bytes`: an accepted record survives `to_bytes` unchanged.
pub fn snapshot_record(data: &[u8]) {
    let r = match SnapshotRecord::from_bytes(data) {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let again = SnapshotRecord::from_bytes(&r.to_bytes()).expect("a written record parses");
    assert_eq!(again, r, "record changed on re-encoding");
}

/// The proto-to-domain conversions of `wire`: byte 0 picks the request message, the rest is
/// decoded as it and converted as the service does.
pub fn wire_requests(data: &[u8]) {
    let [which, msg @ ..] = data else {
        return;
    };
    match which % 8 {
        0 => decode_then(msg, |r: pb::HaveChunksRequest| {
            let h = wire::HaveChunks::try_from(r).map_err(|e| e.to_string())?;
            assert!(h.ids.len() <= MAX_IDS);
            assert_eq!(h.session.as_str().len(), 32);
            Ok(())
        }),
        1 => decode_then(msg, |r: pb::UploadChunksRequest| {
            let b = wire::UploadBatch::try_from(r).map_err(|e| e.to_string())?;
            assert!(b.blobs.len() <= MAX_IDS);
            for (_, blob) in &b.blobs {
                assert!(
                    blob::check_framing(blob).is_ok(),
                    "accepted a badly framed blob"
                );
            }
            Ok(())
        }),
        2 => decode_then(msg, commit_part),
        3 => decode_then(msg, |r: pb::GetSnapshotRequest| {
            from_agent(&r.from_agent)?;
            wire::selector(&r.snapshot_id, &r.source).map_err(|e| e.to_string())?;
            Ok(())
        }),
        4 => decode_then(msg, |r: pb::BeginSessionRequest| source(&r.source)),
        5 => decode_then(msg, |r: pb::ReadChunksRequest| {
            from_agent(&r.from_agent)?;
            let ids = wire::ids(&r.ids, "ids").map_err(|e| e.to_string())?;
            assert!(ids.len() <= MAX_IDS);
            Ok(())
        }),
        6 => decode_then(msg, |r: pb::ListSnapshotsRequest| {
            from_agent(&r.from_agent)?;
            source(&r.source)
        }),
        _ => decode_then(msg, |r: pb::ReportFailureRequest| source(&r.source)),
    }
}

fn decode_then<M: Message + Default>(msg: &[u8], convert: impl FnOnce(M) -> Result<(), String>) {
    if let Ok(m) = M::decode(msg) {
        // Errors are fine; only their message is built, as the service would.
        let _ = convert(m);
    }
}

fn commit_part(r: pb::CommitSnapshotRequest) -> Result<(), String> {
    use pb::commit_snapshot_request::Part;
    match r.part {
        Some(Part::Header(h)) => {
            let c = wire::CommitHeader::try_from(h).map_err(|e| e.to_string())?;
            assert!(c.finished_at >= c.started_at);
            assert!(c.manifest_ids.len() <= MAX_IDS);
        }
        Some(Part::Refs(b)) => {
            wire::ids(&b.ids, "refs.ids").map_err(|e| e.to_string())?;
        }
        None => {}
    }
    Ok(())
}

fn source(s: &str) -> Result<(), String> {
    if !s.is_empty() {
        let v = wire::source(s).map_err(|e| e.to_string())?;
        assert_eq!(v, s);
    }
    Ok(())
}

fn from_agent(s: &str) -> Result<(), String> {
    if !s.is_empty() {
        AgentId::new(s).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Well-formed inputs for each target, built with the real encoders: the starting corpus
/// (written by `controller/tests/fuzz_corpus.rs` when `LIFEBOAT_FUZZ_WRITE_SEEDS=1`) and a
/// check in CI that the targets accept what the encoders produce.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let k = keys();
    let plain = b"server { listen 80; root /var/www; }\n".repeat(8);
    let id = k.chunk_id(&plain);
    for level in [0, 3] {
        let sealed = blob::seal(&k, &id, &plain, level).expect("seal");
        out.push(("blob_open", [id.as_bytes().as_slice(), &sealed].concat()));
        out.push(("blob_framing", sealed));
    }
    out.push(("blob_seal_open", [&[3u8, 200][..], &plain].concat()));
    out.push(("blob_seal_open", vec![0, 0]));
    out.push(("manifest_decode", sample_manifest()));
    let mut b = pack::PackBuilder::new();
    b.push(ChunkId([1; 32]), b"first blob");
    b.push(ChunkId([2; 32]), b"second");
    out.push(("pack_footer", b.finish().bytes.to_vec()));
    out.push(("pack_footer", pack::encode(Vec::new(), &[])));
    let ids: Vec<ChunkId> = (0u8..5).map(|i| ChunkId([i; 32])).collect();
    for s in refset::segments(&ids) {
        out.push(("refset_decode", s.bytes));
    }
    out.push(("snapshot_record", sample_record()));
    for (which, m) in sample_requests() {
        out.push(("wire_requests", [&[which][..], &m].concat()));
    }
    out
}

fn sample_manifest() -> Vec<u8> {
    let header = manifest::ManifestHeader {
        source: "web".into(),
        kind: "files".into(),
        roots: vec![b"/var/www".to_vec(), b"/etc/nginx".to_vec()],
        created_at_unix_ms: 1_795_590_289_000,
        hostname: "vm1".into(),
        agent_version: "0.1.0".into(),
        ..Default::default()
    };
    let mut w = ManifestWriter::new(&header);
    let dir = manifest::Entry {
        kind: manifest::EntryKind::Dir as i32,
        mode: 0o755,
        ..Default::default()
    };
    w.push(&dir);
    w.push(&manifest::Entry {
        path: b"index.html".to_vec(),
        kind: manifest::EntryKind::File as i32,
        mode: 0o644,
        size: 12,
        chunks: vec![ChunkId([9; 32]), ChunkId([8; 32])],
        chunk_sizes: vec![5, 7],
        mtime_sec: 1_795_590_289,
        ..Default::default()
    });
    w.push(&manifest::Entry {
        root: 1,
        path: b"sites/default".to_vec(),
        kind: manifest::EntryKind::Symlink as i32,
        mode: 0o777,
        symlink_target: b"../sites-available/default".to_vec(),
        ..Default::default()
    });
    w.finish()
}

/// A record as JSON text, not a struct literal: a field added later (with a serde default, as
/// the format requires) does not break this file.
fn sample_record() -> Vec<u8> {
    let json = format!(
        r#"{{"format": {}, "id": "0193a1b2c3d4e5f6a7b8c9d0e1f2a3b4", "agent": "web-1",
        "source": "web", "started_at_unix_ms": 1795590289000,
        "finished_at_unix_ms": 1795590290000, "committed_at_unix_ms": 1795590291000,
        "stats": {{"files": 3, "dirs": 1, "symlinks": 1, "logical_bytes": 12,
        "new_logical_bytes": 12, "chunks": 2, "new_chunks": 2, "unreadable": 0,
        "files_read": 1}}, "stored_bytes": 4096, "manifest_ids": ["{}"],
        "ref_segments": ["refs/ab/cd"], "reference_count": 2}}"#,
        lifeboat_controller::record::RECORD_FORMAT,
        ChunkId([3; 32]).to_hex()
    );
    let r = SnapshotRecord::from_bytes(json.as_bytes()).expect("sample record parses");
    r.to_bytes()
}

/// A message with only the given fields set: fields added to the proto later need no edit here.
fn build<M: Default>(set: impl FnOnce(&mut M)) -> M {
    let mut m = M::default();
    set(&mut m);
    m
}

fn msg<M: Message + Default>(set: impl FnOnce(&mut M)) -> Vec<u8> {
    build(set).encode_to_vec()
}

/// Encoded requests with their `wire_requests` selector.
fn sample_requests() -> Vec<(u8, Vec<u8>)> {
    use pb::commit_snapshot_request::Part;
    let session = "0123456789abcdef0123456789abcdef";
    let id = prost::bytes::Bytes::from(vec![5u8; 32]);
    let sealed = blob::seal(&keys(), &ChunkId([5; 32]), b"x", 0).expect("seal");
    let blob = build(|b: &mut pb::Blob| {
        b.id = id.clone();
        b.data = sealed.into();
    });
    let header = build(|h: &mut pb::CommitHeader| {
        h.session_id = session.into();
        h.started_at_unix_ms = 1;
        h.finished_at_unix_ms = 2;
        h.stats = Some(pb::SnapshotStats::default());
        h.manifest_ids = vec![id.clone()];
        h.reference_count = 1;
    });
    let refs = build(|r: &mut pb::RefBatch| r.ids = vec![id.clone()]);
    vec![
        (
            0,
            msg(|r: &mut pb::HaveChunksRequest| {
                r.session_id = session.into();
                r.ids = vec![id.clone()];
            }),
        ),
        (
            1,
            msg(|r: &mut pb::UploadChunksRequest| {
                r.session_id = session.into();
                r.blobs = vec![blob];
            }),
        ),
        (
            2,
            msg(|r: &mut pb::CommitSnapshotRequest| r.part = Some(Part::Header(header))),
        ),
        (
            2,
            msg(|r: &mut pb::CommitSnapshotRequest| r.part = Some(Part::Refs(refs))),
        ),
        (
            3,
            msg(|r: &mut pb::GetSnapshotRequest| {
                r.snapshot_id = "latest".into();
                r.source = "web".into();
                r.from_agent = "web-1".into();
            }),
        ),
        (
            4,
            msg(|r: &mut pb::BeginSessionRequest| r.source = "mysql".into()),
        ),
        (
            5,
            msg(|r: &mut pb::ReadChunksRequest| r.ids = vec![id.clone()]),
        ),
        (
            6,
            msg(|r: &mut pb::ListSnapshotsRequest| {
                r.source = "web".into();
                r.from_agent = "web-1".into();
            }),
        ),
        (
            7,
            msg(|r: &mut pb::ReportFailureRequest| {
                r.source = "web".into();
                r.reason = "disk full".into();
            }),
        ),
    ]
}
