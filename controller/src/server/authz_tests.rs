//! The authorization table (docs/security.md), walked: every RPC is called with the admin
//! certificate, the owning agent's, another agent's, a revoked agent's, an expired certificate
//! and none, and the outcome class is asserted for each.

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::ids::AgentId;
use lifeboat_common::keys::MasterKey;
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::agent_service_client::AgentServiceClient;
use lifeboat_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use super::enroll_tests::{anonymous, create_token, enroll_with};
use super::tests::{chunk, commit, ids_bytes, session, upload};
use crate::ca::Ca;
use crate::testing::{TestController, agent_csr};

/// How a call ended, as far as authorization is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Authorized (the call succeeded or failed only on its arguments).
    Ok,
    /// The resource is invisible to the caller (NotFound: another agent's session).
    Hidden,
    /// PermissionDenied or FailedPrecondition (wrong service, or no restore grant).
    Denied,
    /// Unauthenticated: no, unknown or revoked certificate.
    Unauth,
    /// The TLS handshake refused the certificate (e.g. expired): a transport error.
    Refused,
    /// Enrollment: the call is open to anyone; the (bogus) join token is what gets refused.
    Token,
}
use Outcome::*;

fn classify(r: Result<(), tonic::Status>) -> Outcome {
    let Err(s) = r else { return Ok };
    match s.code() {
        Code::InvalidArgument | Code::AlreadyExists => Ok,
        Code::NotFound => Hidden,
        Code::PermissionDenied | Code::FailedPrecondition => Denied,
        Code::Unauthenticated if s.message().contains("the join token ") => Token,
        Code::Unauthenticated => Unauth,
        _ => Refused,
    }
}

/// What the owning agent has in the catalog, for requests that name it.
struct Fixture {
    session: String,
    snapshot: String,
    chunk: Vec<u8>,
    /// A well-formed blob the owner has not uploaded yet.
    blob: pb::Blob,
    url: String,
}

async fn call(rpc: &str, ch: Channel, f: &Fixture) -> Outcome {
    let mut ag = AgentServiceClient::new(ch.clone());
    let mut ad = AdminServiceClient::new(ch.clone());
    let blob = f.blob.clone();
    let r: Result<(), tonic::Status> = match rpc {
        "WhoAmI" => ag.who_am_i(pb::WhoAmIRequest {}).await.map(drop),
        "BeginSession" => ag
            .begin_session(pb::BeginSessionRequest {
                source: "web".into(),
            })
            .await
            .map(drop),
        "HaveChunks" => ag
            .have_chunks(pb::HaveChunksRequest {
                session_id: f.session.clone(),
                ids: vec![bytes::Bytes::from(vec![1u8; 32])],
            })
            .await
            .map(drop),
        "UploadChunks" => ag
            .upload_chunks(tokio_stream::iter(vec![pb::UploadChunksRequest {
                session_id: f.session.clone(),
                blobs: vec![blob],
            }]))
            .await
            .map(drop),
        "CommitSnapshot" => ag
            .commit_snapshot(tokio_stream::iter(vec![
                pb::CommitSnapshotRequest {
                    part: Some(pb::commit_snapshot_request::Part::Header(
                        pb::CommitHeader {
                            session_id: f.session.clone(),
                            started_at_unix_ms: 1_000,
                            finished_at_unix_ms: 2_000,
                            stats: Some(pb::SnapshotStats::default()),
                            manifest_ids: vec![f.blob.id.clone()],
                            reference_count: 1,
                        },
                    )),
                },
                pb::CommitSnapshotRequest {
                    part: Some(pb::commit_snapshot_request::Part::Refs(pb::RefBatch {
                        ids: vec![f.blob.id.clone()],
                    })),
                },
            ]))
            .await
            .map(drop),
        "ListSnapshots" => ag
            .list_snapshots(pb::ListSnapshotsRequest {
                from_agent: "a".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetSnapshot" => ag
            .get_snapshot(pb::GetSnapshotRequest {
                snapshot_id: f.snapshot.clone(),
                from_agent: "a".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ReadChunks" => match ag
            .read_chunks(pb::ReadChunksRequest {
                ids: vec![bytes::Bytes::from(f.chunk.clone())],
                from_agent: "a".into(),
                ..Default::default()
            })
            .await
        {
            Result::Ok(s) => {
                let mut s = s.into_inner();
                s.message().await.map(drop)
            }
            Err(e) => Err(e),
        },
        "ReportFailure" => ag
            .report_failure(pb::ReportFailureRequest {
                source: "web".into(),
                reason: "authz test".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "RenewCertificate" => ag
            .renew_certificate(pb::RenewCertificateRequest {
                csr_pem: "not a csr".into(),
            })
            .await
            .map(drop),
        "AddAgent" => ad
            .add_agent(pb::AddAgentRequest {
                agent_id: "z".into(),
                csr_pem: "not a csr".into(),
                dedup_group: String::new(),
            })
            .await
            .map(drop),
        "ListAgents" => ad
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .map(drop),
        "Admin.ListSnapshots" => ad
            .list_snapshots(pb::AdminListSnapshotsRequest::default())
            .await
            .map(drop),
        "Admin.GetSnapshot" => ad
            .get_snapshot(pb::AdminGetSnapshotRequest {
                snapshot_id: f.snapshot.clone(),
            })
            .await
            .map(drop),
        "AllowRestore" => ad
            .allow_restore(pb::AllowRestoreRequest {
                agent_id: "c".into(),
                from_agent: "a".into(),
            })
            .await
            .map(drop),
        "GetStorageStats" => ad
            .get_storage_stats(pb::GetStorageStatsRequest {})
            .await
            .map(drop),
        "ListOrphans" => ad
            .list_orphans(pb::ListOrphansRequest { limit: 1 })
            .await
            .map(drop),
        "CreateJoinToken" => ad
            .create_join_token(pb::CreateJoinTokenRequest {
                address: f.url.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        "RevokeAgent" => ad
            .revoke_agent(pb::RevokeAgentRequest {
                agent_id: "c".into(),
            })
            .await
            .map(drop),
        "ReplicationStatus" => ad
            .replication_status(pb::ReplicationStatusRequest::default())
            .await
            .map(drop),
        "GetKeyEscrow" => ag
            .get_key_escrow(pb::GetKeyEscrowRequest {
                kind: "master".into(),
            })
            .await
            .map(drop),
        "PutKeyEscrow" => ad
            .put_key_escrow(pb::PutKeyEscrowRequest {
                escrow: Some(pb::KeyEscrow {
                    kind: "master".into(),
                    envelope: bytes::Bytes::from_static(b"not an envelope"),
                    ..Default::default()
                }),
            })
            .await
            .map(drop),
        // A dry run with one rule: authorized callers change nothing in the fixture.
        "Forget" => ad
            .forget(pb::ForgetRequest {
                rules: Some(pb::RetentionRules {
                    keep_last: 1,
                    ..Default::default()
                }),
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(drop),
        "ScrubSecondary" => ad
            .scrub_secondary(pb::ScrubSecondaryRequest { sample: 1 })
            .await
            .map(drop),
        "ListDelayedDeletes" => ad
            .list_delayed_deletes(pb::ListDelayedDeletesRequest::default())
            .await
            .map(drop),
        // An invalid schedule: the admin gets InvalidArgument (authorized), nothing is stored.
        "SetPolicy" => ad
            .set_policy(pb::SetPolicyRequest {
                policy: Some(pb::Policy {
                    scope: "default".into(),
                    schedule: Some("never".into()),
                    ..Default::default()
                }),
                force: false,
            })
            .await
            .map(drop),
        "ListPolicies" => ad
            .list_policies(pb::ListPoliciesRequest::default())
            .await
            .map(drop),
        "FleetStatus" => ad.fleet_status(pb::FleetStatusRequest {}).await.map(drop),
        // A hello alone: the stream is accepted (the policy comes back), then the agent hangs up.
        "Control" => ag
            .control(tokio_stream::iter(vec![pb::AgentEvent {
                event: Some(pb::agent_event::Event::Hello(pb::AgentHello {
                    version: "authz".into(),
                    sources: Vec::new(),
                })),
            }]))
            .await
            .map(drop),
        // No agent id: the admin gets InvalidArgument (authorized), nothing is sent anywhere.
        "RunBackup" => ad
            .run_backup(pb::RunBackupRequest::default())
            .await
            .map(drop),
        "RunRestore" => ad
            .run_restore(pb::RunRestoreRequest::default())
            .await
            .map(drop),
        "RunGc" => ad
            .run_gc(pb::RunGcRequest { dry_run: true })
            .await
            .map(drop),
        "Enroll" => EnrollmentServiceClient::new(ch)
            .enroll(pb::EnrollRequest {
                token: "lbjt1.00".into(),
                agent_id: "e".into(),
                csr_pem: String::new(),
            })
            .await
            .map(drop),
        other => panic!("unknown rpc {other}"),
    };
    classify(r)
}

/// Expected outcome per caller: admin, owner, other agent, revoked, expired, none.
const TABLE: &[(&str, [Outcome; 6])] = &[
    ("WhoAmI", [Denied, Ok, Ok, Unauth, Refused, Unauth]),
    // No escrow is stored in the fixture: an authorized agent gets NotFound (Hidden).
    (
        "GetKeyEscrow",
        [Denied, Hidden, Hidden, Unauth, Refused, Unauth],
    ),
    // A junk envelope: the admin gets InvalidArgument (authorized), agents are denied.
    (
        "PutKeyEscrow",
        [Ok, Denied, Denied, Unauth, Refused, Unauth],
    ),
    ("BeginSession", [Denied, Ok, Ok, Unauth, Refused, Unauth]),
    ("HaveChunks", [Denied, Ok, Hidden, Unauth, Refused, Unauth]),
    (
        "UploadChunks",
        [Denied, Ok, Hidden, Unauth, Refused, Unauth],
    ),
    (
        "CommitSnapshot",
        [Denied, Ok, Hidden, Unauth, Refused, Unauth],
    ),
    (
        "ListSnapshots",
        [Denied, Ok, Denied, Unauth, Refused, Unauth],
    ),
    ("GetSnapshot", [Denied, Ok, Denied, Unauth, Refused, Unauth]),
    ("ReadChunks", [Denied, Ok, Denied, Unauth, Refused, Unauth]),
    ("ReportFailure", [Denied, Ok, Ok, Unauth, Refused, Unauth]),
    (
        "RenewCertificate",
        [Denied, Ok, Ok, Unauth, Refused, Unauth],
    ),
    ("AddAgent", [Ok, Denied, Denied, Unauth, Refused, Unauth]),
    ("ListAgents", [Ok, Denied, Denied, Unauth, Refused, Unauth]),
    (
        "Admin.ListSnapshots",
        [Ok, Denied, Denied, Unauth, Refused, Unauth],
    ),
    (
        "Admin.GetSnapshot",
        [Ok, Denied, Denied, Unauth, Refused, Unauth],
    ),
    (
        "AllowRestore",
        [Ok, Denied, Denied, Unauth, Refused, Unauth],
    ),
    (
        "GetStorageStats",
        [Ok, Denied, Denied, Unauth, Refused, Unauth],
    ),
    ("ListOrphans", [Ok, Denied, Denied, Unauth, Refused, Unauth]),
    (
        "CreateJoinToken",
        [Ok, Denied, Denied, Unauth, Refused, Unauth],
    ),
    ("RevokeAgent", [Ok, Denied, Denied, Unauth, Refused, Unauth]),
    (
        "ReplicationStatus",
        [Ok, Denied, Denied, Unauth, Refused, Unauth],
    ),
    // Only the admin may forget: agents can never delete (invariant 2).
    ("Forget", [Ok, Denied, Denied, Unauth, Refused, Unauth]),
    (
        "ScrubSecondary",
        [Ok, Denied, Denied, Unauth, Refused, Unauth],
    ),
    (
        "ListDelayedDeletes",
        [Ok, Denied, Denied, Unauth, Refused, Unauth],
    ),
    ("SetPolicy", [Ok, Denied, Denied, Unauth, Refused, Unauth]),
    (
        "ListPolicies",
        [Ok, Denied, Denied, Unauth, Refused, Unauth],
    ),
    ("FleetStatus", [Ok, Denied, Denied, Unauth, Refused, Unauth]),
    // Every agent may hold its own control stream; only the admin may command agents.
    ("Control", [Denied, Ok, Ok, Unauth, Refused, Unauth]),
    ("RunBackup", [Ok, Denied, Denied, Unauth, Refused, Unauth]),
    ("RunRestore", [Ok, Denied, Denied, Unauth, Refused, Unauth]),
    // Only the admin may collect garbage: agents can never delete (invariant 2).
    ("RunGc", [Ok, Denied, Denied, Unauth, Refused, Unauth]),
    ("Enroll", [Token, Token, Token, Token, Refused, Token]),
];

async fn enrolled(ctl: &TestController, name: &str) -> (String, String) {
    let token = create_token(ctl, "", "").await;
    enroll_with(ctl, &token, name).await.expect("enroll")
}

#[tokio::test]
async fn every_rpc_with_every_kind_of_caller() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = TestController::start(&tmp.path().join("ctl")).await;
    let (a_cert, a_key) = enrolled(&ctl, "a").await;
    let (b_cert, b_key) = enrolled(&ctl, "b").await;
    let (c_cert, c_key) = enrolled(&ctl, "c").await;
    // The owner's data: a committed snapshot and a session left open.
    let mut a = AgentServiceClient::new(
        ctl.channel(a_cert.as_bytes(), a_key.as_bytes())
            .await
            .expect("a"),
    );
    let keys = MasterKey::generate().data_keys();
    let (id, blob) = chunk(&keys, b"owner data");
    let s1 = session(&mut a, "web").await;
    upload(&mut a, &s1, &[(id, blob)]).await;
    let snapshot = commit(&mut a, &s1, &[id], &[id])
        .await
        .expect("commit")
        .into_inner_id();
    let fixture = Fixture {
        session: session(&mut a, "web").await,
        snapshot,
        chunk: ids_bytes(&[id])[0].to_vec(),
        blob: {
            let (id2, data) = chunk(&keys, b"not uploaded yet");
            pb::Blob {
                id: ids_bytes(&[id2])[0].clone(),
                data: bytes::Bytes::from(data),
            }
        },
        url: ctl.url(),
    };
    AdminServiceClient::new(ctl.admin_channel().await)
        .revoke_agent(pb::RevokeAgentRequest {
            agent_id: "c".into(),
        })
        .await
        .expect("revoke c");
    // An expired certificate for the owner, signed by the controller's own CA.
    let ca = Ca::load(&ctl.config.ca_cert, &ctl.config.ca_key).expect("ca");
    let (csr, x_key) = agent_csr("a", vec![]);
    let now = now_unix_ms();
    let expired = ca
        .sign_agent_csr_between(
            &csr,
            &AgentId::new("a").expect("id"),
            now - 7_200_000,
            now - 3_600_000,
        )
        .expect("expired cert");
    let admin = (
        std::fs::read_to_string(ctl.dir.join("admin.pem")).expect("admin.pem"),
        std::fs::read_to_string(ctl.dir.join("admin.key")).expect("admin.key"),
    );
    let callers = [
        Some(admin),
        Some((a_cert, a_key)),
        Some((b_cert, b_key)),
        Some((c_cert, c_key)),
        Some((expired.cert_pem, x_key)),
        None,
    ];
    let mut mismatches = Vec::new();
    for (rpc, expected) in TABLE {
        for (i, caller) in callers.iter().enumerate() {
            // A fresh connection per call: nothing is cached across callers.
            let ch = match caller {
                Some((c, k)) => match ctl.channel(c.as_bytes(), k.as_bytes()).await {
                    Result::Ok(ch) => ch,
                    Err(_) => {
                        if expected[i] != Refused {
                            mismatches.push(format!("{rpc} caller {i}: connect refused"));
                        }
                        continue;
                    }
                },
                None => anonymous(&ctl),
            };
            let got = call(rpc, ch, &fixture).await;
            if got != expected[i] {
                mismatches.push(format!(
                    "{rpc} caller {i}: expected {:?}, got {got:?}",
                    expected[i]
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "authorization table violated:\n{}",
        mismatches.join("\n")
    );
}

trait SnapshotIdExt {
    fn into_inner_id(self) -> String;
}

impl SnapshotIdExt for pb::CommitSnapshotResponse {
    fn into_inner_id(self) -> String {
        assert!(self.missing.is_empty(), "commit missing {:?}", self.missing);
        self.snapshot_id
    }
}
