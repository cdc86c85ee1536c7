//! The controller under a failing object store: an in-process server with real mTLS whose
//! store is a [`FaultStore`]. What the agent sees is always an error or a complete snapshot,
//! and the catalog never records what the store did not durably hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_common::blob;
use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::{DataKeys, MasterKey};
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::agent_service_client::AgentServiceClient;
use object_store::ObjectStore;
use tonic::Code;
use tonic::transport::Channel;

use super::{Fault, FaultStore, Op};
use crate::catalog::Catalog;
use crate::store::Store;
use crate::testing::{TestController, agent_csr};

type Agent = AgentServiceClient<Channel>;

struct Rig {
    _dir: tempfile::TempDir,
    _ctl: TestController,
    faults: Arc<FaultStore>,
    catalog: Catalog,
    agent: Agent,
    keys: DataKeys,
}

/// A controller over an in-memory store wrapped in faults, and one enrolled agent.
async fn rig(deadline: Duration) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faults = FaultStore::new(inner);
    let mut catalog = None;
    let f2: Arc<dyn ObjectStore> = faults.clone();
    let ctl = TestController::start_with(&dir.path().join("ctl"), |s| {
        s.store = Store::from_object_store(f2);
        s.store_deadline = deadline;
        catalog = Some(s.catalog.clone());
    })
    .await;
    let (csr, key) = agent_csr("web-01", vec![]);
    let mut admin = AdminServiceClient::new(ctl.admin_channel().await);
    let r = admin
        .add_agent(pb::AddAgentRequest {
            agent_id: "web-01".into(),
            csr_pem: csr,
            dedup_group: String::new(),
        })
        .await
        .expect("add agent")
        .into_inner();
    let ch = ctl
        .channel(r.certificate_pem.as_bytes(), key.as_bytes())
        .await
        .expect("agent channel");
    Rig {
        _dir: dir,
        _ctl: ctl,
        faults,
        catalog: catalog.expect("catalog"),
        agent: AgentServiceClient::new(ch),
        keys: MasterKey::generate().data_keys(),
    }
}

fn ids_bytes(ids: &[ChunkId]) -> Vec<Bytes> {
    ids.iter()
        .map(|i| Bytes::copy_from_slice(i.as_bytes()))
        .collect()
}

impl Rig {
    fn chunks(&self, n: usize) -> Vec<(ChunkId, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let text = format!("chunk number {i} of the fault tests").into_bytes();
                let id = self.keys.chunk_id(&text);
                (id, blob::seal(&self.keys, &id, &text, 3).expect("seal"))
            })
            .collect()
    }

    async fn session(&mut self) -> String {
        self.agent
            .begin_session(pb::BeginSessionRequest {
                source: "web".into(),
            })
            .await
            .expect("begin")
            .into_inner()
            .session_id
    }

    async fn upload(
        &mut self,
        session: &str,
        blobs: &[(ChunkId, Vec<u8>)],
    ) -> Result<pb::UploadChunksResponse, tonic::Status> {
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
        self.agent
            .upload_chunks(tokio_stream::iter(vec![msg]))
            .await
            .map(|r| r.into_inner())
    }

    async fn commit(
        &mut self,
        session: &str,
        refs: &[ChunkId],
    ) -> Result<pb::CommitSnapshotResponse, tonic::Status> {
        let header = pb::CommitHeader {
            session_id: session.into(),
            started_at_unix_ms: 1_000,
            finished_at_unix_ms: 2_000,
            stats: Some(pb::SnapshotStats::default()),
            manifest_ids: ids_bytes(&refs[..1]),
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
        self.agent
            .commit_snapshot(tokio_stream::iter(msgs))
            .await
            .map(|r| r.into_inner())
    }

    async fn missing(&mut self, session: &str, ids: &[ChunkId]) -> usize {
        self.agent
            .have_chunks(pb::HaveChunksRequest {
                session_id: session.into(),
                ids: ids_bytes(ids),
            })
            .await
            .expect("have")
            .into_inner()
            .missing
            .len()
    }

    async fn snapshots_listed(&mut self) -> usize {
        self.agent
            .list_snapshots(pb::ListSnapshotsRequest::default())
            .await
            .expect("list")
            .into_inner()
            .snapshots
            .len()
    }

    /// Rows in a catalog table.
    fn rows(&self, table: &'static str) -> i64 {
        self.catalog
            .run_blocking(move |c| {
                Ok(c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
            })
            .expect("count rows")
    }
}

fn ids(chunks: &[(ChunkId, Vec<u8>)]) -> Vec<ChunkId> {
    chunks.iter().map(|(id, _)| *id).collect()
}

/// Failing pack puts fail UploadChunks with a clear error naming the pack; nothing reaches the
/// catalog, HaveChunks still asks for everything, and a commit sees the chunks as missing.
#[tokio::test]
async fn failing_puts_fail_the_upload_and_record_nothing() {
    let mut r = rig(Duration::from_secs(30)).await;
    let chunks = r.chunks(5);
    let all = ids(&chunks);
    r.faults.inject(Op::Put, "packs/", Fault::FailAll);
    let s = r.session().await;
    let e = r.upload(&s, &chunks).await.expect_err("upload must fail");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("put of packs/") && e.message().contains("injected"),
        "the error must name the operation and the pack: {}",
        e.message()
    );
    assert_eq!(r.rows("chunks"), 0);
    assert_eq!(r.rows("packs"), 0);
    assert_eq!(r.missing(&s, &all).await, 5);
    let c = r.commit(&s, &all).await.expect("commit answers");
    assert!(c.snapshot_id.is_empty());
    assert_eq!(c.missing.len(), 5);
    assert_eq!(r.snapshots_listed().await, 0);
    assert_eq!(r.rows("snapshots"), 0);

    // The store recovers: the same upload and commit now succeed.
    r.faults.clear();
    let up = r.upload(&s, &chunks).await.expect("upload after recovery");
    assert_eq!(up.chunks_stored, 5);
    let c = r.commit(&s, &all).await.expect("commit after recovery");
    assert!(!c.snapshot_id.is_empty(), "{c:?}");
    assert_eq!(r.snapshots_listed().await, 1);
}

/// A store that fails the first N puts fails exactly N calls, one put each: the controller does
/// not retry on its own (retries are bounded and live in the backend and the agent).
#[tokio::test]
async fn fail_first_n_puts_then_recover_with_one_put_per_call() {
    let mut r = rig(Duration::from_secs(30)).await;
    let chunks = r.chunks(3);
    // Puts before this point (the agent's registry object) are not counted.
    let base = r.faults.calls(Op::Put);
    r.faults.inject(Op::Put, "", Fault::FailFirst(2));
    let s = r.session().await;
    for attempt in 1..=2u64 {
        let e = r.upload(&s, &chunks).await.expect_err("must fail");
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(
            r.faults.calls(Op::Put) - base,
            attempt,
            "one put per failed call"
        );
        assert_eq!(r.rows("chunks"), 0);
    }
    let up = r.upload(&s, &chunks).await.expect("third attempt");
    assert_eq!(up.chunks_stored, 3);
    assert_eq!(r.faults.calls(Op::Put) - base, 3);
}

/// Failing the snapshot record's put (after the reference segments landed) leaves no visible
/// snapshot: the agent gets an error, ListSnapshots is empty, and a retried commit succeeds.
#[tokio::test]
async fn failing_record_put_leaves_no_half_visible_snapshot() {
    let mut r = rig(Duration::from_secs(30)).await;
    let chunks = r.chunks(4);
    let all = ids(&chunks);
    let s = r.session().await;
    r.upload(&s, &chunks).await.expect("upload");
    r.faults.inject(Op::Put, "snapshots/", Fault::FailAll);
    let e = r.commit(&s, &all).await.expect_err("commit must fail");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("snapshots/web-01/"), "{}", e.message());
    assert_eq!(r.snapshots_listed().await, 0);
    assert_eq!(r.rows("snapshots"), 0);
    assert_eq!(r.rows("snapshot_refs"), 0);

    r.faults.clear();
    let c = r.commit(&s, &all).await.expect("retried commit");
    assert!(!c.snapshot_id.is_empty());
    assert_eq!(r.snapshots_listed().await, 1);
}

/// A hanging store ends the call with UNAVAILABLE at the deadline, records nothing, and was
/// asked exactly once.
#[tokio::test]
async fn hanging_store_times_out_at_the_deadline() {
    let deadline = Duration::from_millis(300);
    let mut r = rig(deadline).await;
    let chunks = r.chunks(2);
    let base = r.faults.calls(Op::Put);
    r.faults.inject(Op::Put, "", Fault::Hang);
    let s = r.session().await;
    let t = Instant::now();
    let e = r.upload(&s, &chunks).await.expect_err("must time out");
    let took = t.elapsed();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("did not finish within 300 ms"),
        "{}",
        e.message()
    );
    assert!(took >= deadline, "ended before the deadline: {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "deadline not enforced: {took:?}"
    );
    assert_eq!(r.faults.calls(Op::Put) - base, 1, "no unbounded retries");
    assert_eq!(r.rows("chunks"), 0);

    // The commit path has the same deadline.
    r.faults.clear();
    r.upload(&s, &chunks).await.expect("upload");
    r.faults.inject(Op::Put, "refs/", Fault::Hang);
    let e = r
        .commit(&s, &ids(&chunks))
        .await
        .expect_err("commit must time out");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(r.rows("snapshots"), 0);
}

/// A put that landed but whose answer was lost: the call fails (nothing acknowledged), and the
/// retry finds identical bytes under the key and succeeds.
#[tokio::test]
async fn lost_put_answer_then_retry_is_idempotent() {
    let mut r = rig(Duration::from_secs(30)).await;
    let chunks = r.chunks(3);
    r.faults.inject(Op::Put, "packs/", Fault::LoseResponse);
    let s = r.session().await;
    r.upload(&s, &chunks).await.expect_err("answer lost");
    assert_eq!(r.rows("chunks"), 0, "not acknowledged, not recorded");
    r.faults.clear();
    let up = r.upload(&s, &chunks).await.expect("retry");
    assert_eq!(up.chunks_stored, 3);
    assert_eq!(r.rows("packs"), 1);
}

/// A torn put (a prefix stored) on a store without atomic puts: the call fails, and the retry
/// refuses to treat the torn object as the pack (hash mismatch) instead of acknowledging it.
#[tokio::test]
async fn torn_put_is_never_acknowledged() {
    let mut r = rig(Duration::from_secs(30)).await;
    let chunks = r.chunks(3);
    let all = ids(&chunks);
    r.faults.inject(Op::Put, "packs/", Fault::Truncate(10));
    let s = r.session().await;
    r.upload(&s, &chunks).await.expect_err("torn");
    r.faults.clear();
    let e = r
        .upload(&s, &chunks)
        .await
        .expect_err("torn object refused");
    assert!(
        e.message().contains("already exists"),
        "a conflict naming the object: {}",
        e.message()
    );
    assert_eq!(r.rows("chunks"), 0);
    let c = r.commit(&s, &all).await.expect("commit answers");
    assert_eq!(c.missing.len(), 3, "nothing acknowledged, nothing visible");
}
