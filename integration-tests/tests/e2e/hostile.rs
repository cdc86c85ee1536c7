//! Hostile callers against a real controller (in process, real mTLS on loopback): an agent that
//! opens more upload/commit streams at once than it may is refused with RESOURCE_EXHAUSTED, the
//! other agents are not affected, and the slot is free again when a stream ends; requests over
//! the size and count limits of docs/limits.md get the documented error naming the limit, and
//! the controller keeps serving.
//! (Hostile manifests are tested in the agent's restore pipeline, `agent/src/restore/
//! hostile_tests.rs`; oversized and garbage messages in `bad_input.rs`; see docs/limits.md.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lifeboat_controller::streams::{MAX_STREAMS_PER_AGENT, StreamLimiter};
use lifeboat_controller::testing::{TestController, agent_csr};
use lifeboat_controller::{MAX_IDS, MAX_MESSAGE_BYTES, MAX_REFERENCE_COUNT};
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::agent_service_client::AgentServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

async fn agent(ctl: &TestController, name: &str) -> AgentServiceClient<Channel> {
    let (csr, key) = agent_csr(name, vec!["lifeboat-controller".into()]);
    let mut admin = AdminServiceClient::new(ctl.admin_channel().await);
    let r = admin
        .add_agent(pb::AddAgentRequest {
            agent_id: name.into(),
            csr_pem: csr,
            dedup_group: String::new(),
        })
        .await
        .expect("add agent")
        .into_inner();
    AgentServiceClient::new(
        ctl.channel(r.certificate_pem.as_bytes(), key.as_bytes())
            .await
            .expect("agent channel"),
    )
}

/// Waits until the controller counts `n` open streams for `agent`: woken by the limiter on each
/// open and close, bounded by 30 s.
async fn wait_open(l: &StreamLimiter, agent: &str, n: usize) {
    if tokio::time::timeout(Duration::from_secs(30), l.wait_until(agent, n))
        .await
        .is_err()
    {
        panic!("{agent}: {} streams open, want {n}", l.open_for(agent));
    }
}

#[tokio::test]
async fn concurrent_upload_streams_per_agent_are_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let mut limiter = None;
    let ctl = TestController::start_with(&tmp.path().join("ctl"), |s| {
        limiter = Some(Arc::clone(&s.streams));
    })
    .await;
    let limiter = limiter.expect("state configured");
    let web = agent(&ctl, "web-01").await;
    let mut db = agent(&ctl, "db-01").await;

    // MAX streams held open: each one's request stream stays open while its sender lives.
    let mut held = Vec::new();
    for _ in 0..MAX_STREAMS_PER_AGENT {
        let (tx, rx) = mpsc::channel::<pb::UploadChunksRequest>(1);
        let mut c = web.clone();
        let task = tokio::spawn(async move { c.upload_chunks(ReceiverStream::new(rx)).await });
        held.push((tx, task));
    }
    wait_open(&limiter, "web-01", MAX_STREAMS_PER_AGENT).await;

    let err = web
        .clone()
        .upload_chunks(tokio_stream::empty())
        .await
        .expect_err("one stream too many");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let limit = format!("the limit is {MAX_STREAMS_PER_AGENT}");
    assert!(
        err.message().contains("web-01") && err.message().contains(&limit),
        "{err:?}"
    );
    let err = web
        .clone()
        .commit_snapshot(tokio_stream::empty())
        .await
        .expect_err("commit counts too");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Another agent is not affected.
    db.upload_chunks(tokio_stream::empty())
        .await
        .expect("db-01 has its own limit");

    // Ending one stream frees its slot.
    let (tx, task) = held.pop().expect("held");
    drop(tx);
    task.await.expect("join").expect("an empty upload succeeds");
    wait_open(&limiter, "web-01", MAX_STREAMS_PER_AGENT - 1).await;
    web.clone()
        .upload_chunks(tokio_stream::empty())
        .await
        .expect("a slot is free again");

    // A client that goes away (the connection's streams reset) frees its slots too.
    for (tx, task) in held {
        task.abort();
        drop(tx);
    }
    drop(web);
    wait_open(&limiter, "web-01", 0).await;
    ctl.shutdown.cancel();
}

async fn session(a: &mut AgentServiceClient<Channel>) -> String {
    a.begin_session(pb::BeginSessionRequest {
        source: "web".into(),
    })
    .await
    .expect("session")
    .into_inner()
    .session_id
}

fn header(session: &str, manifest_ids: usize, reference_count: u64) -> pb::CommitSnapshotRequest {
    pb::CommitSnapshotRequest {
        part: Some(pb::commit_snapshot_request::Part::Header(
            pb::CommitHeader {
                session_id: session.into(),
                started_at_unix_ms: 1,
                finished_at_unix_ms: 2,
                stats: None,
                manifest_ids: vec![Bytes::from(vec![1u8; 32]); manifest_ids],
                reference_count,
            },
        )),
    }
}

#[tokio::test]
async fn requests_over_the_documented_limits_are_refused_naming_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = TestController::start(&tmp.path().join("ctl")).await;
    let mut a = agent(&ctl, "web-01")
        .await
        .max_encoding_message_size(64 << 20);
    let s = session(&mut a).await;
    let too_many = vec![Bytes::from(vec![1u8; 32]); MAX_IDS + 1];
    let limit = format!("the limit is {MAX_IDS}");
    let check = |what: &str, e: tonic::Status, code: Code, needle: &str| {
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(e.message().contains(needle), "{what}: {e:?}");
    };

    let e = a
        .have_chunks(pb::HaveChunksRequest {
            session_id: s.clone(),
            ids: too_many.clone(),
        })
        .await
        .expect_err("HaveChunks");
    check("HaveChunks ids", e, Code::InvalidArgument, &limit);
    let e = a
        .read_chunks(pb::ReadChunksRequest {
            ids: too_many.clone(),
            ..Default::default()
        })
        .await
        .expect_err("ReadChunks");
    check("ReadChunks ids", e, Code::InvalidArgument, &limit);
    let blobs = vec![
        pb::Blob {
            id: Bytes::from(vec![1u8; 32]),
            data: Bytes::new(),
        };
        MAX_IDS + 1
    ];
    let e = a
        .upload_chunks(tokio_stream::once(pb::UploadChunksRequest {
            session_id: s.clone(),
            blobs,
        }))
        .await
        .expect_err("UploadChunks");
    check("UploadChunks blobs", e, Code::InvalidArgument, &limit);
    let e = a
        .commit_snapshot(tokio_stream::once(header(&s, MAX_IDS + 1, 1)))
        .await
        .expect_err("manifest ids");
    check(
        "CommitSnapshot manifest_ids",
        e,
        Code::InvalidArgument,
        &limit,
    );
    let e = a
        .commit_snapshot(tokio_stream::once(header(&s, 1, MAX_REFERENCE_COUNT + 1)))
        .await
        .expect_err("reference count");
    let want = format!("exceeds the limit of {MAX_REFERENCE_COUNT}");
    check(
        "CommitSnapshot reference_count",
        e,
        Code::InvalidArgument,
        &want,
    );
    // One message over MAX_MESSAGE_BYTES: refused by the transport, not buffered.
    let e = a
        .upload_chunks(tokio_stream::once(pb::UploadChunksRequest {
            session_id: s.clone(),
            blobs: vec![pb::Blob {
                id: Bytes::from(vec![1u8; 32]),
                data: Bytes::from(vec![0u8; MAX_MESSAGE_BYTES + 1]),
            }],
        }))
        .await
        .expect_err("oversized message");
    // A stream's message: the handler reports the broken stream (unary calls: OUT_OF_RANGE).
    let want = format!("the limit is: {MAX_MESSAGE_BYTES} bytes");
    check("UploadChunks message size", e, Code::InvalidArgument, &want);

    // Still serving.
    a.who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("still serving");
    ctl.shutdown.cancel();
}
