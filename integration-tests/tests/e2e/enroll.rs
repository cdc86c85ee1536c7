//! Enrollment with join tokens, end to end with the real binaries: a fresh VM enrolls itself
//! (key made on the VM, never sent), backs up and restores; used and foreign tokens are refused;
//! a controller that does not match the token's CA fingerprint is refused by the agent;
//! renewal keeps the agent working; revocation cuts it off (exit 5).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use lifeboat_common::exit;
use lifeboat_common::join_token::JoinToken;
use lifeboat_integration_tests::process::{bin, describe, master_key, run};
use lifeboat_integration_tests::tree::write_data;
use lifeboat_integration_tests::{Agent, Controller};

fn token(ctl: &Controller, args: &[&str]) -> String {
    let mut a = vec!["token", "create"];
    a.extend_from_slice(args);
    let out = ctl.ctl(&a);
    assert!(out.status.success(), "token create: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn enroll(dir: &Path, token: &str, name: Option<&str>) -> Output {
    let file = dir.with_extension("token");
    fs::write(&file, token).unwrap();
    let mut c = Command::new(bin("lifeboat-agent"));
    c.args(["enroll", "--token-file"])
        .arg(&file)
        .arg("--dir")
        .arg(dir);
    if let Some(n) = name {
        c.args(["--name", n]);
    }
    run(&mut c)
}

#[test]
fn fresh_vm_enrolls_backs_up_restores_renews_and_is_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(&tmp.path().join("controller"));
    let key = tmp.path().join("master.key");
    master_key(&ctl, &key);
    let root = tmp.path().join("www");
    fs::create_dir(&root).unwrap();
    write_data(&root.join("index.html"), 50_000, 7, true);

    let t = token(&ctl, &["--group", "web", "--ttl", "10m"]);
    assert!(!ctl.log().contains(&t), "the token must not be logged");
    let dir = tmp.path().join("vm");
    let out = enroll(&dir, &t, Some("web-01"));
    assert!(out.status.success(), "enroll: {}", describe(&out));
    let mode = fs::metadata(dir.join("agent.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let private = fs::read_to_string(dir.join("agent.key")).unwrap();
    assert!(!ctl.log().contains(private.lines().nth(1).unwrap()));

    fs::copy(&key, dir.join("master.key")).unwrap();
    let agent = Agent {
        name: "web-01".into(),
        dir: dir.clone(),
    };
    agent.write_config(
        &ctl.url(),
        &format!(
            "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
            root.to_str().unwrap()
        ),
    );
    agent.backup("web");
    let to = tmp.path().join("restored");
    agent.restore("web", &["--to", to.to_str().unwrap()]);
    let restored = fs::read(to.join(root.strip_prefix("/").unwrap()).join("index.html"))
        .or_else(|_| fs::read(to.join("index.html")))
        .unwrap();
    assert_eq!(restored, fs::read(root.join("index.html")).unwrap());

    // The token was single-use.
    let out = enroll(&tmp.path().join("vm2"), &t, Some("web-02"));
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    assert!(
        describe(&out).contains("already been used"),
        "{}",
        describe(&out)
    );

    // Renewal over mTLS, then the agent keeps working with the new certificate.
    let before = fs::read(dir.join("agent.pem")).unwrap();
    let out = agent.run(&["renew"]);
    assert!(out.status.success(), "renew: {}", describe(&out));
    assert_ne!(fs::read(dir.join("agent.pem")).unwrap(), before);
    agent.backup("web");

    // Revocation: the next call is refused with exit 5.
    let out = ctl.ctl(&["agent", "revoke", "web-01"]);
    assert!(out.status.success(), "revoke: {}", describe(&out));
    let out = agent.run(&["backup", "--source", "web"]);
    assert_eq!(
        out.status.code(),
        Some(exit::CERTIFICATE_REFUSED),
        "{}",
        describe(&out)
    );
}

#[test]
fn agent_refuses_a_controller_that_does_not_match_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(&tmp.path().join("controller"));
    let other = Controller::start(&tmp.path().join("other"));
    let t = token(&ctl, &[]);
    // Same token, pointed at another controller (another CA): no trust on first use.
    let mut parsed = JoinToken::decode(&t).unwrap();
    parsed.address = other.url();
    let out = enroll(&tmp.path().join("vm"), &parsed.encode(), Some("web-01"));
    assert_eq!(
        out.status.code(),
        Some(exit::CERTIFICATE_REFUSED),
        "{}",
        describe(&out)
    );
    assert!(describe(&out).contains("pinned"), "{}", describe(&out));
    // Nothing was sent: the token is still unused on the real controller.
    let out = enroll(&tmp.path().join("vm3"), &t, Some("web-01"));
    assert!(out.status.success(), "{}", describe(&out));
    // Unknown token (never created), and no token at all.
    let mut unknown = JoinToken::decode(&t).unwrap();
    unknown.secret = [9u8; 32];
    let out = enroll(&tmp.path().join("vm4"), &unknown.encode(), Some("web-04"));
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    assert!(describe(&out).contains("not known"), "{}", describe(&out));
    let out = run(Command::new(bin("lifeboat-agent"))
        .args(["enroll", "--dir"])
        .arg(tmp.path().join("vm5"))
        .env_remove("LIFEBOAT_JOIN_TOKEN"));
    assert_eq!(out.status.code(), Some(exit::USAGE), "{}", describe(&out));
}
