//! Enrollment with join tokens, revocation and renewal, over real TLS on 127.0.0.1:0.

use std::sync::Arc;
use std::time::Duration;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::join_token::JoinToken;
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::agent_service_client::AgentServiceClient;
use lifeboat_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use rustls::pki_types::pem::PemObject;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::tests::{chunk, session};
use crate::catalog::Catalog;
use crate::catalog::tokens::{self, TokenRow};
use crate::testing::{TestController, agent_csr};

/// A channel that trusts the controller's CA and presents no client certificate. It asks for the
/// enrollment server name: under any other name the handshake itself refuses it.
pub(super) fn anonymous(ctl: &TestController) -> Channel {
    let ca = std::fs::read(ctl.dir.join("ca.pem")).expect("ca");
    Endpoint::from_shared(ctl.url())
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name(lifeboat_common::tls::ENROLL_SERVER_NAME),
        )
        .expect("tls")
        .connect_lazy()
}

pub(super) async fn create_token(ctl: &TestController, agent: &str, group: &str) -> String {
    AdminServiceClient::new(ctl.admin_channel().await)
        .create_join_token(pb::CreateJoinTokenRequest {
            agent_id: agent.into(),
            dedup_group: group.into(),
            address: ctl.url(),
            ..Default::default()
        })
        .await
        .expect("create token")
        .into_inner()
        .token
}

/// Enrolls `name` with `token`; returns (certificate PEM, key PEM).
pub(super) async fn enroll_with(
    ctl: &TestController,
    token: &str,
    name: &str,
) -> Result<(String, String), tonic::Status> {
    let (csr, key) = agent_csr(name, vec![]);
    let r = EnrollmentServiceClient::new(anonymous(ctl))
        .enroll(pb::EnrollRequest {
            token: token.into(),
            agent_id: name.into(),
            csr_pem: csr,
        })
        .await?
        .into_inner();
    Ok((r.certificate_pem, key))
}

pub(super) async fn agent_client(
    ctl: &TestController,
    cert: &str,
    key: &str,
) -> AgentServiceClient<Channel> {
    AgentServiceClient::new(
        ctl.channel(cert.as_bytes(), key.as_bytes())
            .await
            .expect("agent channel"),
    )
}

async fn who(ctl: &TestController, cert: &str, key: &str) -> Result<String, tonic::Status> {
    agent_client(ctl, cert, key)
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner().agent_id)
}

#[tokio::test]
async fn join_token_enrolls_once_and_bad_tokens_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = TestController::start(&tmp.path().join("ctl")).await;
    let token = create_token(&ctl, "", "web").await;
    let parsed = JoinToken::decode(&token).expect("token parses");
    let ca = std::fs::read(ctl.dir.join("ca.pem")).expect("ca");
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(&ca).expect("ca der");
    assert!(parsed.pins(&ca_der), "token pins the controller's CA");
    assert_eq!(parsed.address, ctl.url());

    let (cert, key) = enroll_with(&ctl, &token, "web-01").await.expect("enroll");
    assert_eq!(who(&ctl, &cert, &key).await.expect("whoami"), "web-01");

    let used = enroll_with(&ctl, &token, "web-02").await.expect_err("used");
    assert_eq!(used.code(), Code::Unauthenticated);
    assert!(used.message().contains("already been used"), "{used:?}");

    // Tampered: one hex digit of the secret changed.
    let mut t = parsed.clone();
    t.secret[0] ^= 1;
    let e = enroll_with(&ctl, &t.encode(), "web-03")
        .await
        .expect_err("tampered");
    assert!(e.message().contains("not known"), "{e:?}");
    let e = enroll_with(&ctl, "lbjt1.zz", "web-03")
        .await
        .expect_err("garbage");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("malformed"), "{e:?}");

    // Expired: stored with an expiry in the past.
    let expired = JoinToken::generate(&ca_der, &ctl.url());
    let cat = Catalog::open(&ctl.config.catalog).expect("catalog");
    let row = TokenRow {
        secret_sha256: expired.secret_hash(),
        agent: None,
        name_prefix: String::new(),
        dedup_group: None,
        uses_left: 1,
        expires_at: now_unix_ms() - 1,
        created_at: 0,
    };
    cat.run(move |c| tokens::insert(c, &row))
        .await
        .expect("insert");
    let e = enroll_with(&ctl, &expired.encode(), "web-04")
        .await
        .expect_err("expired");
    assert!(e.message().contains("expired"), "{e:?}");

    // Only the enrollment call works without a certificate.
    let e = AgentServiceClient::new(anonymous(&ctl))
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("no cert");
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = AdminServiceClient::new(anonymous(&ctl))
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect_err("no cert");
    assert_eq!(e.code(), Code::Unauthenticated);

    // A token naming an agent enrolls only that name; the use is recorded once.
    let named = create_token(&ctl, "db-01", "").await;
    let e = enroll_with(&ctl, &named, "db-02")
        .await
        .expect_err("other name");
    assert_eq!(e.code(), Code::PermissionDenied);
    enroll_with(&ctl, &named, "db-01").await.expect("named");
    let h = JoinToken::decode(&named).expect("named").secret_hash();
    let n = cat.run(move |c| tokens::uses(c, &h)).await.expect("uses");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn enrollment_attempts_are_rate_limited_per_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = TestController::start_with(&tmp.path().join("ctl"), |s| {
        s.enrollment = Arc::new(crate::enrollment::Policy {
            clock: s.enrollment.clock.clone(),
            rate_limit: 3,
            ..Default::default()
        });
    })
    .await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            enroll_with(&ctl, "lbjt1.00", "x")
                .await
                .expect_err("bad")
                .code(),
        );
    }
    assert_eq!(
        codes,
        vec![
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::Unavailable
        ]
    );
}

#[tokio::test]
async fn revocation_cuts_off_the_next_call_and_an_upload_in_progress() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = TestController::start(&tmp.path().join("ctl")).await;
    let token = create_token(&ctl, "web-01", "").await;
    let (cert, key) = enroll_with(&ctl, &token, "").await.expect("enroll");
    let mut a = agent_client(&ctl, &cert, &key).await;
    let sid = session(&mut a, "web").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let keys = lifeboat_common::keys::MasterKey::generate().data_keys();
    let msg = |n: u8| {
        let (id, data) = chunk(&keys, &[n; 100]);
        pb::UploadChunksRequest {
            session_id: sid.clone(),
            blobs: vec![pb::Blob {
                id: bytes::Bytes::copy_from_slice(id.as_bytes()),
                data: bytes::Bytes::from(data),
            }],
        }
    };
    tx.send(msg(1)).await.expect("send");
    let mut up = a.clone();
    let call = tokio::spawn(async move {
        up.upload_chunks(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    AdminServiceClient::new(ctl.admin_channel().await)
        .revoke_agent(pb::RevokeAgentRequest {
            agent_id: "web-01".into(),
        })
        .await
        .expect("revoke");
    // The stream is still open: its next message is refused.
    let _ = tx.send(msg(2)).await;
    drop(tx);
    let e = call.await.expect("join").expect_err("revoked mid-upload");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = a.who_am_i(pb::WhoAmIRequest {}).await.expect_err("revoked");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("revoked"), "{e:?}");
    // Written to the bucket registry too, so a rebuilt catalog can keep it: one event per
    // change (enrolled, revoked), never overwritten.
    let reg = ctl.dir.join("objects/registry/agents/web-01");
    let events: Vec<String> = std::fs::read_dir(&reg)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        events.iter().filter(|e| e.contains("\"revoked\"")).count(),
        1,
        "one revocation recorded under {}: {events:?}",
        reg.display()
    );
    let e = AdminServiceClient::new(ctl.admin_channel().await)
        .revoke_agent(pb::RevokeAgentRequest {
            agent_id: "nobody".into(),
        })
        .await
        .expect_err("unknown agent");
    assert_eq!(e.code(), Code::NotFound);
    // The documented way back: a token naming the agent re-enrolls it, history kept.
    let again = create_token(&ctl, "web-01", "").await;
    let (cert2, key2) = enroll_with(&ctl, &again, "web-01")
        .await
        .expect("re-enroll");
    assert_eq!(who(&ctl, &cert2, &key2).await.expect("back"), "web-01");
    assert!(
        who(&ctl, &cert, &key).await.is_err(),
        "old certificate stays dead"
    );
}

#[tokio::test]
async fn renewal_overlaps_until_the_new_certificate_is_used() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lifetime = Duration::from_secs(7200);
    let ctl = TestController::start_with(&tmp.path().join("ctl"), |s| {
        s.enrollment = Arc::new(crate::enrollment::Policy {
            clock: s.enrollment.clock.clone(),
            cert_lifetime: lifetime,
            ..Default::default()
        });
    })
    .await;
    let token = create_token(&ctl, "", "").await;
    let (old, key) = enroll_with(&ctl, &token, "web-01").await.expect("enroll");
    let mut a = agent_client(&ctl, &old, &key).await;
    let (csr, key2) = agent_csr("web-01", vec![]);
    let r = a
        .renew_certificate(pb::RenewCertificateRequest { csr_pem: csr })
        .await
        .expect("renew")
        .into_inner();
    let expected = now_unix_ms() + lifetime.as_millis() as i64;
    assert!(
        (r.not_after_unix_ms - expected).abs() < 5_000,
        "configured lifetime"
    );
    assert_eq!(who(&ctl, &old, &key).await.expect("overlap"), "web-01");
    assert_eq!(
        who(&ctl, &r.certificate_pem, &key2).await.expect("new"),
        "web-01"
    );
    let e = who(&ctl, &old, &key).await.expect_err("old retired");
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn renewal_keeps_an_agent_working_across_its_certificate_expiry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lifetime = Duration::from_secs(3 * 3600);
    let mut clock = None;
    let ctl = TestController::start_with(&tmp.path().join("ctl"), |s| {
        clock = Some(s.enrollment.clock.clone());
        s.enrollment = Arc::new(crate::enrollment::Policy {
            clock: s.enrollment.clock.clone(),
            cert_lifetime: lifetime,
            ..Default::default()
        });
    })
    .await;
    let clock = clock.expect("clock");
    let token = create_token(&ctl, "", "").await;
    let (old, key) = enroll_with(&ctl, &token, "web-01").await.expect("enroll");
    // Two thirds of the lifetime later the agent renews over its still-valid certificate.
    clock.advance(Duration::from_secs(2 * 3600 + 600));
    let (csr, key2) = agent_csr("web-01", vec![]);
    let r = agent_client(&ctl, &old, &key)
        .await
        .renew_certificate(pb::RenewCertificateRequest { csr_pem: csr })
        .await
        .expect("renew before expiry")
        .into_inner();
    // Past the old certificate's expiry: it is refused (at the handshake), the new one works.
    clock.advance(Duration::from_secs(3600));
    who(&ctl, &old, &key)
        .await
        .expect_err("expired certificate refused");
    assert_eq!(
        who(&ctl, &r.certificate_pem, &key2).await.expect("renewed"),
        "web-01"
    );
}

#[tokio::test]
async fn a_token_with_n_uses_enrolls_n_agents_within_its_prefix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = TestController::start(&tmp.path().join("ctl")).await;
    let token = AdminServiceClient::new(ctl.admin_channel().await)
        .create_join_token(pb::CreateJoinTokenRequest {
            uses: 2,
            name_prefix: "web-".into(),
            dedup_group: "web".into(),
            address: ctl.url(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .token;
    let e = enroll_with(&ctl, &token, "db-01")
        .await
        .expect_err("prefix");
    assert_eq!(e.code(), Code::PermissionDenied);
    for name in ["web-01", "web-02"] {
        let (cert, key) = enroll_with(&ctl, &token, name).await.expect("enroll");
        let me = agent_client(&ctl, &cert, &key)
            .await
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .expect("whoami")
            .into_inner();
        assert_eq!(
            (me.agent_id.as_str(), me.dedup_group.as_str()),
            (name, "web")
        );
    }
    let e = enroll_with(&ctl, &token, "web-03")
        .await
        .expect_err("used up");
    assert!(e.message().contains("already been used"), "{e:?}");
    // A name that exists is not taken over by a token that does not name it.
    let other = create_token(&ctl, "", "").await;
    let e = enroll_with(&ctl, &other, "web-01")
        .await
        .expect_err("exists");
    assert_eq!(e.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn oversized_enrollment_requests_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = TestController::start(&tmp.path().join("ctl")).await;
    let e = EnrollmentServiceClient::new(anonymous(&ctl))
        .enroll(pb::EnrollRequest {
            token: "x".repeat(crate::server::ENROLL_MESSAGE_BYTES + 1),
            agent_id: "web-01".into(),
            csr_pem: String::new(),
        })
        .await
        .expect_err("too big");
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );
}
