//! mTLS and isolation, end to end: who can talk to the controller, and what each caller can see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use lifeboat_common::exit;
use lifeboat_integration_tests::process::{bin, describe, master_key, run};
use lifeboat_integration_tests::tree::write_data;
use lifeboat_integration_tests::{Agent, Controller};

fn sources(root: &Path) -> String {
    format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
        root.to_str().unwrap()
    )
}

fn setup() -> (tempfile::TempDir, Controller, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(&tmp.path().join("controller"));
    let key = tmp.path().join("master.key");
    master_key(&ctl, &key);
    (tmp, ctl, key)
}

/// Writes a lifeboatctl config that trusts `ctl`'s CA but presents the given cert and key.
fn ctl_config(dir: &Path, ctl: &Controller, cert: &Path, key: &Path) -> PathBuf {
    let p = dir.join("ctl-as-other.toml");
    fs::write(
        &p,
        format!(
            "address = \"{}\"\nserver_name = \"lifeboat-controller\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            ctl.url(),
            ctl.dir.join("ca.pem").to_str().unwrap(),
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    p
}

/// A client certificate from another CA is refused at the handshake, and the controller says why;
/// so is a client without any certificate.
#[test]
fn foreign_or_missing_client_certificate_is_refused_at_handshake() {
    let (tmp, ctl, _key) = setup();
    let other = tmp.path().join("other-controller");
    let out = run(Command::new(bin("lifeboat-controller"))
        .arg("init")
        .arg("--dir")
        .arg(&other));
    assert!(out.status.success(), "{}", describe(&out));

    let cfg = ctl_config(
        tmp.path(),
        &ctl,
        &other.join("admin.pem"),
        &other.join("admin.key"),
    );
    let out = run(Command::new(bin("lifeboatctl"))
        .arg("--config")
        .arg(&cfg)
        .args(["agent", "list"]));
    assert_eq!(
        out.status.code(),
        Some(exit::CERTIFICATE_REFUSED),
        "{}",
        describe(&out)
    );

    // No client certificate at all: a raw TLS client.
    lifeboat_common::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in lifeboat_common::tls::load_certs(&ctl.dir.join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let config = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let conn =
        rustls::ClientConnection::new(config.clone(), "lifeboat-controller".try_into().unwrap())
            .unwrap();
    let sock = TcpStream::connect(ctl.addr).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut buf = [0u8; 64];
    let res = tls.read(&mut buf);
    assert!(
        !matches!(res, Ok(n) if n > 0),
        "controller answered a client without a certificate"
    );

    // Under the enrollment server name (and only there) the same client gets through the
    // handshake: the controller answers with its HTTP/2 settings. Every call but Enroll is then
    // refused per call (controller/src/server/authz_tests.rs, "none" column).
    let conn = rustls::ClientConnection::new(
        config,
        lifeboat_common::tls::ENROLL_SERVER_NAME.try_into().unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(ctl.addr).unwrap());
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let res = tls.read(&mut buf);
    assert!(
        matches!(res, Ok(n) if n > 0),
        "the enrollment name must accept a client without a certificate: {res:?}"
    );

    // The controller logged both refusals with the reason (the log is written as they happen;
    // wait for it by polling the file, bounded).
    let log = wait_for_log(&ctl, "peer sent no certificates");
    assert!(log.contains("TLS handshake refused"), "{log}");
    assert!(
        log.to_lowercase().contains("unknownissuer") || log.contains("unknown issuer"),
        "{log}"
    );
}

/// Polls the controller log for a line (the refusal is logged asynchronously); bounded to 10 s.
fn wait_for_log(ctl: &Controller, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = ctl.log();
        if log.contains(needle) || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::yield_now();
    }
}

/// An agent certificate cannot make admin calls; an agent sees and restores only its own snapshots;
/// an agent whose certificate is refused gets exit code 5 and a hint.
#[test]
fn agents_are_isolated_and_not_admins() {
    let (tmp, ctl, key) = setup();
    let root_a = tmp.path().join("www-a");
    let root_b = tmp.path().join("www-b");
    fs::create_dir(&root_a).unwrap();
    fs::create_dir(&root_b).unwrap();
    write_data(&root_a.join("a.html"), 10_000, 1, true);
    write_data(&root_b.join("b.html"), 10_000, 2, true);
    let a = Agent::enroll(
        &ctl,
        &tmp.path().join("a"),
        "agent-a",
        Some("shared"),
        &key,
        &sources(&root_a),
    );
    let b = Agent::enroll(
        &ctl,
        &tmp.path().join("b"),
        "agent-b",
        Some("shared"),
        &key,
        &sources(&root_b),
    );
    a.backup("web");
    let snap_b = b.backup("web")["snapshot_id"].as_str().unwrap().to_owned();

    // Agent certificate on an admin call.
    let cfg = ctl_config(
        tmp.path(),
        &ctl,
        &a.dir.join("agent.pem"),
        &a.dir.join("agent.key"),
    );
    let out = run(Command::new(bin("lifeboatctl"))
        .arg("--config")
        .arg(&cfg)
        .args(["agent", "list"]));
    assert_eq!(
        out.status.code(),
        Some(exit::CERTIFICATE_REFUSED),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("permission"),
        "{}",
        describe(&out)
    );

    // A lists only its own snapshots.
    let out = a.run(&["snapshots", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&snap_b), "agent A sees B's snapshot: {text}");
    assert!(text.contains("agent-a") || text.contains("web"), "{text}");

    // A cannot list or restore B's snapshot by id.
    let out = a.run(&["ls", "--source", "web", "--snapshot", &snap_b]);
    assert!(!out.status.success(), "{}", describe(&out));
    let to = tmp.path().join("stolen");
    let out = a.run(&[
        "restore",
        "--source",
        "web",
        "--snapshot",
        &snap_b,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        !to.join(root_b.strip_prefix("/").unwrap())
            .join("b.html")
            .exists()
    );

    // An agent presenting a certificate from another CA: exit 5 and a hint.
    let other = tmp.path().join("other-controller");
    let out = run(Command::new(bin("lifeboat-controller"))
        .arg("init")
        .arg("--dir")
        .arg(&other));
    assert!(out.status.success());
    fs::copy(other.join("admin.pem"), a.dir.join("agent.pem")).unwrap();
    fs::copy(other.join("admin.key"), a.dir.join("agent.key")).unwrap();
    let out = a.run(&["backup", "--source", "web"]);
    assert_eq!(
        out.status.code(),
        Some(exit::CERTIFICATE_REFUSED),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lifeboatctl agent add"),
        "{}",
        describe(&out)
    );
}

/// A controller that is not running: exit code 4, with the address in the message.
#[test]
fn unreachable_controller_exit_code() {
    let (tmp, mut ctl, key) = setup();
    let root = tmp.path().join("www");
    fs::create_dir(&root).unwrap();
    let a = Agent::enroll(
        &ctl,
        &tmp.path().join("a"),
        "agent-a",
        None,
        &key,
        &sources(&root),
    );
    let url = ctl.url();
    assert_eq!(
        ctl.stop(),
        Some(0),
        "SIGTERM must end the controller cleanly"
    );
    let out = a.run(&["backup", "--source", "web", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(exit::UNREACHABLE),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(url.trim_start_matches("https://")),
        "{}",
        describe(&out)
    );
}
