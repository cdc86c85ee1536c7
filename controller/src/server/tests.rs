//! In-process server tests: real sockets on 127.0.0.1:0, real mTLS, tonic clients.

use bytes::Bytes;
use lifeboat_common::blob;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::{DataKeys, MasterKey};
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::agent_service_client::AgentServiceClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::testing::{TestController, agent_csr};

pub(super) type Agent = AgentServiceClient<Channel>;

async fn enroll(ctl: &TestController, name: &str, group: &str) -> Agent {
    AgentServiceClient::new(enroll_channel(ctl, name, group).await)
}

async fn enroll_channel(ctl: &TestController, name: &str, group: &str) -> Channel {
    let (csr, key) = agent_csr(name, vec!["lifeboat-controller".into(), "admin".into()]);
    let mut admin = AdminServiceClient::new(ctl.admin_channel().await);
    let r = admin
        .add_agent(pb::AddAgentRequest {
            agent_id: name.into(),
            csr_pem: csr,
            dedup_group: group.into(),
        })
        .await
        .expect("add agent")
        .into_inner();
    assert_eq!(r.agent_id, name);
    ctl.channel(r.certificate_pem.as_bytes(), key.as_bytes())
        .await
        .expect("agent channel")
}

pub(super) fn ids_bytes(ids: &[ChunkId]) -> Vec<Bytes> {
    ids.iter()
        .map(|i| Bytes::copy_from_slice(i.as_bytes()))
        .collect()
}

pub(super) async fn session(a: &mut Agent, source: &str) -> String {
    a.begin_session(pb::BeginSessionRequest {
        source: source.into(),
    })
    .await
    .expect("begin")
    .into_inner()
    .session_id
}

pub(super) async fn missing(a: &mut Agent, session: &str, ids: &[ChunkId]) -> Vec<Bytes> {
    a.have_chunks(pb::HaveChunksRequest {
        session_id: session.into(),
        ids: ids_bytes(ids),
    })
    .await
    .expect("have")
    .into_inner()
    .missing
}

pub(super) async fn upload(
    a: &mut Agent,
    session: &str,
    blobs: &[(ChunkId, Vec<u8>)],
) -> pb::UploadChunksResponse {
    let msg = pb::UploadChunksRequest {
        session_id: session.into(),
        blobs: blobs
            .iter()
            .map(|(id, b)| pb::Blob {
                id: Bytes::copy_from_slice(id.as_bytes()),
                data: Bytes::from(b.clone()),
            })
            .collect(),
    };
    a.upload_chunks(tokio_stream::iter(vec![msg]))
        .await
        .expect("upload")
        .into_inner()
}

pub(super) async fn commit(
    a: &mut Agent,
    session: &str,
    manifest: &[ChunkId],
    refs: &[ChunkId],
) -> Result<pb::CommitSnapshotResponse, tonic::Status> {
    let header = pb::CommitHeader {
        session_id: session.into(),
        started_at_unix_ms: 1_000,
        finished_at_unix_ms: 2_000,
        stats: Some(pb::SnapshotStats {
            files: 2,
            logical_bytes: 100,
            new_logical_bytes: 60,
            ..Default::default()
        }),
        manifest_ids: ids_bytes(manifest),
        reference_count: refs.len() as u64,
    };
    let msgs = vec![
        pb::CommitSnapshotRequest {
            part: Some(pb::commit_snapshot_request::Part::Header(header)),
        },
        pb::CommitSnapshotRequest {
            part: Some(pb::commit_snapshot_request::Part::Refs(pb::RefBatch {
                ids: ids_bytes(refs),
            })),
        },
    ];
    a.commit_snapshot(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

async fn read(a: &mut Agent, ids: &[ChunkId]) -> Result<Vec<pb::Blob>, tonic::Status> {
    let mut s = a
        .read_chunks(pb::ReadChunksRequest {
            ids: ids_bytes(ids),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.push(m.blob.expect("blob"));
    }
    Ok(out)
}

pub(super) fn chunk(keys: &DataKeys, text: &[u8]) -> (ChunkId, Vec<u8>) {
    let id = keys.chunk_id(text);
    (id, blob::seal(keys, &id, text, 3).expect("seal"))
}

#[tokio::test]
async fn backup_commit_list_read_and_isolation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = TestController::start(&tmp.path().join("ctl")).await;
    let keys = MasterKey::generate().data_keys();
    let mut a = enroll(&ctl, "web-01", "").await;
    let mut b = enroll(&ctl, "web-02", "").await;

    let who = a
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner();
    assert_eq!(
        (who.agent_id.as_str(), who.dedup_group.as_str()),
        ("web-01", "web-01")
    );

    let c1 = chunk(&keys, b"hello, chunk one");
    let c2 = chunk(&keys, b"manifest chunk");
    let sa = session(&mut a, "web").await;
    assert_eq!(missing(&mut a, &sa, &[c1.0, c2.0]).await.len(), 2);
    let up = upload(&mut a, &sa, &[c1.clone(), c2.clone()]).await;
    assert_eq!(up.chunks_stored, 2);
    assert_eq!(up.bytes_stored, (c1.1.len() + c2.1.len()) as u64);
    assert!(missing(&mut a, &sa, &[c1.0, c2.0]).await.is_empty());
    let again = upload(&mut a, &sa, std::slice::from_ref(&c1)).await;
    assert_eq!((again.chunks_stored, again.chunks_already_present), (0, 1));

    // Dedup never crosses groups: agent B does not "have" agent A's chunk.
    let sb = session(&mut b, "web").await;
    assert_eq!(missing(&mut b, &sb, &[c1.0]).await, ids_bytes(&[c1.0]));
    // Nor can it upload into A's session.
    let e = b
        .upload_chunks(tokio_stream::iter(vec![pb::UploadChunksRequest {
            session_id: sa.clone(),
            blobs: vec![],
        }]))
        .await
        .expect_err("foreign session");
    assert_eq!(e.code(), Code::NotFound);

    // Commit referencing an unknown id → missing, no snapshot.
    let unknown = ChunkId([9; 32]);
    let r = commit(&mut a, &sa, &[c2.0], &[c1.0, unknown])
        .await
        .expect("commit");
    assert!(r.snapshot_id.is_empty());
    assert_eq!(r.missing, ids_bytes(&[unknown]));

    let r = commit(&mut a, &sa, &[c2.0], &[c1.0, c2.0])
        .await
        .expect("commit");
    assert!(r.missing.is_empty());
    let snap = r.snapshot_id;
    assert_eq!(snap.len(), 20);
    assert!(
        ctl.dir
            .join("objects/snapshots/web-01")
            .join(&snap)
            .is_file()
    );

    let list = a
        .list_snapshots(pb::ListSnapshotsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .snapshots;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].stored_bytes, up.bytes_stored);
    assert_eq!(list[0].manifest_ids, ids_bytes(&[c2.0]));
    let latest = a
        .get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: "latest".into(),
            source: "web".into(),
            ..Default::default()
        })
        .await
        .expect("latest")
        .into_inner();
    assert_eq!(latest.id, snap);
    let by_prefix = a
        .get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: snap[..8].into(),
            source: String::new(),
            ..Default::default()
        })
        .await
        .expect("prefix")
        .into_inner();
    assert_eq!(by_prefix.id, snap);
    let none = a
        .get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: "latest".into(),
            source: "db".into(),
            ..Default::default()
        })
        .await
        .expect_err("no db snapshot");
    assert_eq!(none.code(), Code::NotFound);
    assert!(none.message().contains("db"), "{}", none.message());

    let blobs = read(&mut a, &[c2.0, c1.0]).await.expect("read");
    assert_eq!(blobs.len(), 2);
    assert_eq!(blobs[0].id, Bytes::copy_from_slice(c2.0.as_bytes()));
    assert_eq!(
        blob::open(&keys, &c1.0, &blobs[1].data).expect("open"),
        b"hello, chunk one"
    );

    // Agent B cannot see or read A's snapshot.
    let e = b
        .get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: snap.clone(),
            source: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("foreign snapshot");
    assert_eq!(e.code(), Code::NotFound);
    let e = read(&mut b, &[c1.0]).await.expect_err("foreign chunk");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains(&c1.0.to_hex()), "{}", e.message());

    // Roles: an agent on the admin service, the admin on the agent service.
    let mut as_admin = AdminServiceClient::new(enroll_channel(&ctl, "web-03", "").await);
    let e = as_admin
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect_err("agent as admin");
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut admin_as_agent = AgentServiceClient::new(ctl.admin_channel().await);
    let e = admin_as_agent
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("admin as agent");
    assert_eq!(e.code(), Code::PermissionDenied);

    // The admin sees everything.
    let mut admin = AdminServiceClient::new(ctl.admin_channel().await);
    let agents = admin
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("agents")
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 3);
    assert_eq!(agents[0].snapshots, 1);
    assert!(agents[0].last_seen_unix_ms > 0);
    let shown = admin
        .get_snapshot(pb::AdminGetSnapshotRequest {
            snapshot_id: snap[..10].into(),
        })
        .await
        .expect("admin get")
        .into_inner();
    assert_eq!(shown.agent_id, "web-01");

    // A damaged pack is reported as data loss naming the chunk.
    let packs = ctl.dir.join("objects/packs");
    let sub = std::fs::read_dir(&packs)
        .expect("packs")
        .next()
        .expect("dir")
        .expect("entry");
    let file = std::fs::read_dir(sub.path())
        .expect("pack dir")
        .next()
        .expect("f")
        .expect("e");
    let mut bytes = std::fs::read(file.path()).expect("read pack");
    bytes[10] ^= 0xff;
    std::fs::write(file.path(), bytes).expect("write pack");
    let e = read(&mut a, &[c1.0]).await.expect_err("damaged");
    assert_eq!(e.code(), Code::DataLoss);
    assert!(e.message().contains(&c1.0.to_hex()), "{}", e.message());

    ctl.shutdown.cancel();
    ctl.handle.await.expect("join").expect("clean shutdown");
}

/// A restore read over the controller's read budget waits (it is not refused), shows in the
/// counts `/metrics` reports, and completes once the budget frees.
#[tokio::test]
async fn restore_reads_over_the_budget_wait_for_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reads = std::sync::Arc::new(crate::read_limit::ReadLimiter::new(0));
    let ctl = TestController::start_with(&tmp.path().join("ctl"), |s| {
        s.reads = reads.clone();
    })
    .await;
    let keys = MasterKey::generate().data_keys();
    let mut a = enroll(&ctl, "web-01", "").await;
    let (c1, c2) = (chunk(&keys, b"data"), chunk(&keys, b"manifest"));
    let s = session(&mut a, "web").await;
    upload(&mut a, &s, &[c1.clone(), c2.clone()]).await;
    let r = commit(&mut a, &s, &[c2.0], &[c1.0, c2.0])
        .await
        .expect("commit");
    assert!(r.missing.is_empty());

    let held = reads.admit(u64::MAX).await; // the whole budget
    let limit = std::time::Duration::from_secs(30);
    let want = c1.0;
    // A client that gives up while waiting leaves the queue.
    let mut quitter = a.clone();
    let gone = tokio::spawn(async move { read(&mut quitter, &[want]).await });
    tokio::time::timeout(limit, reads.wait_until(|c| c.waiting == 1))
        .await
        .expect("the read waits for the budget");
    gone.abort();
    tokio::time::timeout(limit, reads.wait_until(|c| c.waiting == 0))
        .await
        .expect("a read whose client left stops waiting");
    let mut reader = a.clone();
    let pending = tokio::spawn(async move { read(&mut reader, &[want]).await });
    tokio::time::timeout(limit, reads.wait_until(|c| c.waiting == 1))
        .await
        .expect("the read waits for the budget");
    assert!(
        !pending.is_finished(),
        "no blob is read while the budget is spent"
    );
    drop(held);
    let blobs = pending.await.expect("join").expect("read once admitted");
    assert_eq!(blobs.len(), 1);
    assert_eq!(
        blob::open(&keys, &c1.0, &blobs[0].data).expect("open"),
        b"data"
    );
    let idle = reads.wait_until(|c| *c == crate::read_limit::ReadCounts::default());
    tokio::time::timeout(limit, idle)
        .await
        .expect("the ended stream gives its budget back");

    ctl.shutdown.cancel();
    ctl.handle.await.expect("join").expect("clean shutdown");
}

/// A restore stream whose client stops taking blobs ends after the stall timeout and gives
/// its budget back; the client then finds fewer blobs than it asked for.
#[tokio::test]
async fn a_restore_stream_whose_client_stops_reading_ends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stall = std::time::Duration::from_millis(200);
    let reads = std::sync::Arc::new(crate::read_limit::ReadLimiter::new(0).with_stall(stall));
    let ctl = TestController::start_with(&tmp.path().join("ctl"), |s| {
        s.reads = reads.clone();
    })
    .await;
    let keys = MasterKey::generate().data_keys();
    let mut a = enroll(&ctl, "web-01", "").await;
    // 8 MiB of incompressible chunks: more than the client's HTTP/2 windows take unread.
    let blobs: Vec<(ChunkId, Vec<u8>)> = (0..8)
        .map(|_| {
            let mut d = vec![0u8; 1 << 20];
            lifeboat_common::keys::fill_random(&mut d);
            chunk(&keys, &d)
        })
        .collect();
    let manifest = chunk(&keys, b"manifest");
    let s = session(&mut a, "web").await;
    for pair in blobs.chunks(2) {
        upload(&mut a, &s, pair).await;
    }
    upload(&mut a, &s, std::slice::from_ref(&manifest)).await;
    let ids: Vec<ChunkId> = blobs.iter().map(|(id, _)| *id).collect();
    let mut refs = ids.clone();
    refs.push(manifest.0);
    refs.sort_unstable();
    let r = commit(&mut a, &s, &[manifest.0], &refs)
        .await
        .expect("commit");
    assert!(r.missing.is_empty());

    let mut stalled = a
        .read_chunks(pb::ReadChunksRequest {
            ids: ids_bytes(&ids),
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner();
    let limit = std::time::Duration::from_secs(30);
    tokio::time::timeout(limit, reads.wait_until(|c| c.active == 1))
        .await
        .expect("the stream is admitted");
    tokio::time::timeout(limit, reads.wait_until(|c| c.active == 0))
        .await
        .expect("a stream nobody reads ends and gives its budget back");
    let mut got = 0;
    while let Ok(Some(_)) = stalled.message().await {
        got += 1;
    }
    assert!(
        got < ids.len(),
        "{got} blobs of {} reached the client",
        ids.len()
    );

    ctl.shutdown.cancel();
    ctl.handle.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn same_group_shares_chunks_and_bad_requests_are_invalid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = TestController::start(&tmp.path().join("ctl")).await;
    let keys = MasterKey::generate().data_keys();
    let mut a = enroll(&ctl, "web-01", "web").await;
    let mut b = enroll(&ctl, "web-02", "web").await;
    let c = chunk(&keys, b"shared");
    let sa = session(&mut a, "web").await;
    upload(&mut a, &sa, std::slice::from_ref(&c)).await;
    let sb = session(&mut b, "web").await;
    assert!(
        missing(&mut b, &sb, &[c.0]).await.is_empty(),
        "same group shares"
    );

    let e = a
        .begin_session(pb::BeginSessionRequest {
            source: "../etc".into(),
        })
        .await
        .expect_err("bad source");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = a
        .have_chunks(pb::HaveChunksRequest {
            session_id: sa.clone(),
            ids: vec![Bytes::from_static(b"short")],
        })
        .await
        .expect_err("bad id");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = a
        .have_chunks(pb::HaveChunksRequest {
            session_id: sa.clone(),
            ids: vec![Bytes::from(vec![0u8; 32]); crate::MAX_IDS + 1],
        })
        .await
        .expect_err("too many ids");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = a
        .upload_chunks(tokio_stream::iter(vec![pb::UploadChunksRequest {
            session_id: sa.clone(),
            blobs: vec![pb::Blob {
                id: Bytes::copy_from_slice(c.0.as_bytes()),
                data: Bytes::from_static(b"not a blob at all, just text......................"),
            }],
        }]))
        .await
        .expect_err("bad framing");
    assert_eq!(e.code(), Code::InvalidArgument);
    // Reference count that does not match.
    let mut h = commit(&mut a, &sa, &[], &[c.0]).await.expect("ok commit");
    assert!(!h.snapshot_id.is_empty());
    h.snapshot_id.clear();
    let e = a
        .commit_snapshot(tokio_stream::iter(vec![pb::CommitSnapshotRequest {
            part: Some(pb::commit_snapshot_request::Part::Header(
                pb::CommitHeader {
                    session_id: sa.clone(),
                    reference_count: 5,
                    ..Default::default()
                },
            )),
        }]))
        .await
        .expect_err("count mismatch");
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut admin = AdminServiceClient::new(ctl.admin_channel().await);
    let (csr, _) = agent_csr("web-01", vec![]);
    let e = admin
        .add_agent(pb::AddAgentRequest {
            agent_id: "web-01".into(),
            csr_pem: csr,
            dedup_group: String::new(),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(e.code(), Code::AlreadyExists);
}

async fn call_without(ctl: &TestController, identity: Option<(String, String)>) -> tonic::Status {
    let ca = std::fs::read(ctl.dir.join("ca.pem")).expect("ca");
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("lifeboat-controller");
    if let Some((c, k)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(c, k));
    }
    let ch = Endpoint::from_shared(ctl.url())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect_lazy();
    AgentServiceClient::new(ch)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("must be refused")
}

#[tokio::test]
async fn handshake_refuses_missing_or_foreign_certificates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = TestController::start(&tmp.path().join("ctl")).await;
    let s = call_without(&ctl, None).await;
    assert_eq!(
        crate::client::classify(&s),
        lifeboat_common::exit::CERTIFICATE_REFUSED,
        "{s:?}"
    );
    let (other, _) = crate::ca::Ca::generate().expect("other ca");
    let foreign = other.issue_admin().expect("foreign admin");
    let s = call_without(&ctl, Some((foreign.cert_pem, foreign.key_pem))).await;
    assert_eq!(
        crate::client::classify(&s),
        lifeboat_common::exit::CERTIFICATE_REFUSED,
        "{s:?}"
    );
    // The controller still serves good clients afterwards.
    let mut admin = AdminServiceClient::new(ctl.admin_channel().await);
    admin
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("admin still works");
}

#[tokio::test]
async fn unreachable_controller_is_classified() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = TestController::start(&tmp.path().join("ctl")).await;
    let url = ctl.url();
    ctl.shutdown.cancel();
    ctl.handle.await.expect("join").expect("stopped");
    let ca = std::fs::read(ctl.dir.join("ca.pem")).expect("ca");
    let cert = std::fs::read(ctl.dir.join("admin.pem")).expect("cert");
    let key = std::fs::read(ctl.dir.join("admin.key")).expect("key");
    let e = crate::client::connect_pem(&url, "lifeboat-controller", &ca, &cert, &key)
        .await
        .expect_err("nothing listens");
    assert_eq!(e.exit_code(), lifeboat_common::exit::UNREACHABLE, "{e}");
}
