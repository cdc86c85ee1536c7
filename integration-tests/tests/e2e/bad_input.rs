//! Bad input end to end: unreadable sources, broken configs, oversized and garbage messages.
//! Each must give a clear error and lose nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use lifeboat_common::exit;
use lifeboat_integration_tests::process::{describe, master_key, parse_json, run};
use lifeboat_integration_tests::tree::{restored_root, write_data};
use lifeboat_integration_tests::{Agent, Controller};
use lifeboat_proto::v1::agent_service_client::AgentServiceClient;
use lifeboat_proto::v1::{Blob, UploadChunksRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn sources(root: &Path) -> String {
    format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
        root.to_str().unwrap()
    )
}

fn setup(tmp: &Path) -> (Controller, Agent, std::path::PathBuf) {
    let ctl = Controller::start(&tmp.join("controller"));
    let key = tmp.join("master.key");
    master_key(&ctl, &key);
    let root = tmp.join("www");
    fs::create_dir(&root).unwrap();
    write_data(&root.join("ok.html"), 20_000, 1, true);
    let agent = Agent::enroll(
        &ctl,
        &tmp.join("agent"),
        "web-01",
        None,
        &key,
        &sources(&root),
    );
    (ctl, agent, root)
}

/// A file the agent cannot read is reported, the rest is backed up, the exit code is 3, and the
/// snapshot restores what was readable. The agent runs without CAP_DAC_OVERRIDE so that, even as
/// root, mode 000 makes a file unreadable.
#[test]
fn unreadable_file_gives_partial_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ctl, agent, root) = setup(tmp.path());
    let secret = root.join("locked.html");
    write_data(&secret, 1_000, 2, true);
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();

    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--bounding-set",
        "-dac_override,-dac_read_search",
        "--inh-caps",
        "-all",
        "--",
    ]);
    let inner = agent.command(&["backup", "--source", "web", "--json"]);
    cmd.arg(inner.get_program()).args(inner.get_args());
    cmd.env("RUST_LOG", "info");
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(exit::PARTIAL), "{}", describe(&out));
    let v = parse_json(&out);
    assert!(v["partial"].as_bool().unwrap(), "{v}");
    assert!(v["unreadable"].to_string().contains("locked.html"), "{v}");

    let to = tmp.path().join("restored");
    agent.restore("web", &["--to", to.to_str().unwrap()]);
    let r = restored_root(&to, &root);
    assert_eq!(
        fs::read(r.join("ok.html")).unwrap(),
        fs::read(root.join("ok.html")).unwrap()
    );
    assert!(!r.join("locked.html").exists());
}

/// A misspelt key and a missing file in the agent config are reported by name; nothing runs.
#[test]
fn bad_config_is_reported_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, agent, root) = setup(tmp.path());
    agent.write_config(
        &ctl.url(),
        &format!("{}exclud = [\"*.tmp\"]\n", sources(&root)),
    );
    let out = agent.run(&["backup"]);
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exclud"),
        "{}",
        describe(&out)
    );

    agent.write_config(&ctl.url(), &sources(&root));
    fs::remove_file(agent.dir.join("master.key")).unwrap();
    let out = agent.run(&["backup"]);
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("master.key"),
        "{}",
        describe(&out)
    );

    let out = run(
        Command::new(lifeboat_integration_tests::bin("lifeboat-agent")).args([
            "--config",
            "/nonexistent/agent.toml",
            "backup",
        ]),
    );
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"),
        "{}",
        describe(&out)
    );
}

async fn agent_client(ctl: &Controller, agent: &Agent) -> AgentServiceClient<Channel> {
    lifeboat_common::tls::install_crypto_provider();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            fs::read(ctl.dir.join("ca.pem")).unwrap(),
        ))
        .identity(Identity::from_pem(
            fs::read(agent.dir.join("agent.pem")).unwrap(),
            fs::read(agent.dir.join("agent.key")).unwrap(),
        ))
        .domain_name("lifeboat-controller");
    let channel = Channel::from_shared(ctl.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    AgentServiceClient::new(channel).max_encoding_message_size(64 << 20)
}

/// An oversized message and a garbage blob are refused with a clear status; the controller keeps
/// serving and stores nothing.
#[tokio::test]
async fn oversized_and_garbage_uploads_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, agent, _root) = setup(tmp.path());
    let mut client = agent_client(&ctl, &agent).await;
    let session = client
        .begin_session(lifeboat_proto::v1::BeginSessionRequest {
            source: "web".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;

    let huge = UploadChunksRequest {
        session_id: session.clone(),
        blobs: vec![Blob {
            id: vec![1; 32].into(),
            data: vec![0u8; 20 << 20].into(),
        }],
    };
    let err = client
        .upload_chunks(tokio_stream_once(huge))
        .await
        .expect_err("oversized message accepted");
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{err:?}"
    );

    let garbage = UploadChunksRequest {
        session_id: session.clone(),
        blobs: vec![Blob {
            id: vec![2; 32].into(),
            data: b"definitely not a blob".to_vec().into(),
        }],
    };
    let err = client
        .upload_chunks(tokio_stream_once(garbage))
        .await
        .expect_err("garbage blob accepted");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let bad_id = lifeboat_proto::v1::HaveChunksRequest {
        session_id: session,
        ids: vec![vec![1, 2, 3].into()],
    };
    let err = client
        .have_chunks(bad_id)
        .await
        .expect_err("short id accepted");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Still serving.
    client
        .who_am_i(lifeboat_proto::v1::WhoAmIRequest {})
        .await
        .unwrap();
    let packs = ctl.dir.join("objects/packs");
    assert!(
        !packs.exists()
            || lifeboat_integration_tests::tree::walk(&packs)
                .iter()
                .all(|(_, m)| !m.is_file())
    );
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::IntoStreamingRequest<Message = T> {
    tokio_stream::once(item)
}
