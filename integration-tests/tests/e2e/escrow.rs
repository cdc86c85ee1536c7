//! Key escrow and recovery on a fresh host (issue 5, "Key escrow"; DESIGN.md invariant 4), end to
//! end with the real binaries: `key init` with escrow → a freshly enrolled agent without a key
//! runs `key recover` → identical key, backs up and restores; a wrong passphrase writes nothing;
//! a weak passphrase stores nothing; the paper form round-trips and locates a typo; the CA comes
//! back from the store (primary and secondary) with `recover-ca`; envelopes are replicated.
//!
//! Each escrow seal/open runs Argon2id at the default parameters (about half a second here), so
//! the number of them is kept small.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use lifeboat_common::exit;
use lifeboat_integration_tests::process::{bin, describe, run};
use lifeboat_integration_tests::regions::{self, write};
use lifeboat_integration_tests::tree::write_data;
use lifeboat_integration_tests::{Agent, Controller};

const PASSPHRASE: &str = "correct horse battery staple";

/// A controller whose controller.toml has a local-directory `[secondary]` at `secondary`.
fn controller_with_secondary(dir: &Path, secondary: &Path) -> Controller {
    regions::init(dir);
    regions::local_secondary(dir, secondary);
    Controller::serve(dir)
}

/// Object keys (relative paths) under `root/prefix`, sorted.
fn objects(root: &Path, prefix: &str) -> Vec<String> {
    let dir = root.join(prefix);
    let mut out: Vec<String> = fs::read_dir(&dir)
        .map(|rd| {
            rd.map(|e| format!("{prefix}/{}", e.unwrap().file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn token(ctl: &Controller) -> String {
    let out = ctl.ctl(&["token", "create", "--ttl", "10m"]);
    assert!(out.status.success(), "token create: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Enrolls a brand-new VM with a join token: it has a certificate, no master key.
fn fresh_vm(ctl: &Controller, dir: &Path, name: &str, root: &Path) -> Agent {
    let tf = write(&dir.with_extension("token"), &token(ctl));
    let out = run(Command::new(bin("lifeboat-agent"))
        .arg("enroll")
        .arg("--token-file")
        .arg(&tf)
        .arg("--dir")
        .arg(dir)
        .args(["--name", name]));
    assert!(out.status.success(), "enroll: {}", describe(&out));
    let agent = Agent {
        name: name.into(),
        dir: dir.to_owned(),
    };
    agent.write_config(
        &ctl.url(),
        &format!(
            "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
            root.to_str().unwrap()
        ),
    );
    assert!(!dir.join("master.key").exists());
    agent
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn key_init_escrows_and_a_fresh_vm_recovers_the_key_then_backs_up_and_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let secondary = tmp.path().join("region-2");
    let ctl = controller_with_secondary(&tmp.path().join("controller"), &secondary);
    let good = write(&tmp.path().join("pass"), &format!("{PASSPHRASE}\n"));
    let wrong = write(&tmp.path().join("wrong"), "correct horse battery stable\n");
    let key = tmp.path().join("fleet-master.key");

    let out = ctl.ctl(&[
        "key",
        "init",
        "--out",
        key.to_str().unwrap(),
        "--passphrase-file",
        good.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "key init: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("escrowed the master key as keys/master/"),
        "{stdout}"
    );
    assert!(stdout.contains("queued for the secondary"), "{stdout}");
    let primary = ctl.dir.join("objects");
    let stored = objects(&primary, "keys/master");
    assert_eq!(stored.len(), 1, "{stored:?}");
    // The controller never saw the key or the passphrase.
    let envelope = fs::read(primary.join(&stored[0])).unwrap();
    let key_bytes = fs::read(&key).unwrap();
    assert!(!envelope.windows(32).any(|w| w == key_bytes.as_slice()));
    assert!(!ctl.log().contains(PASSPHRASE));

    // The envelope is replicated to the secondary with the same bytes.
    ctl.wait_caught_up();
    assert_eq!(fs::read(secondary.join(&stored[0])).unwrap(), envelope);

    let www = tmp.path().join("www");
    fs::create_dir(&www).unwrap();
    write_data(&www.join("index.html"), 80_000, 11, true);
    let vm = fresh_vm(&ctl, &tmp.path().join("vm"), "web-new", &www);

    // Wrong passphrase: clear error, nothing written.
    let out = vm.run(&[
        "key",
        "recover",
        "--passphrase-file",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        describe(&out)
    );
    assert!(!vm.dir.join("master.key").exists());
    // No passphrase source and no terminal: a clear error too.
    let out = vm.run(&["key", "recover"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("--passphrase-file"),
        "{}",
        describe(&out)
    );

    let out = vm.run(&[
        "key",
        "recover",
        "--passphrase-file",
        good.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "recover: {}", describe(&out));
    assert_eq!(fs::read(vm.dir.join("master.key")).unwrap(), key_bytes);
    // Again: identical key, a no-op success.
    let out = vm.run(&[
        "key",
        "recover",
        "--passphrase-file",
        good.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "recover again: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing changed"));

    vm.backup("web");
    let to = tmp.path().join("restored");
    vm.restore("web", &["--to", to.to_str().unwrap()]);
    let restored = to.join(www.strip_prefix("/").unwrap()).join("index.html");
    assert_eq!(
        fs::read(restored).unwrap(),
        fs::read(www.join("index.html")).unwrap()
    );
}

#[test]
fn weak_passphrase_or_none_at_key_init_stores_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(&tmp.path().join("controller"));
    let key = tmp.path().join("k");
    let weak = write(&tmp.path().join("weak"), "Password1234!\n");
    let out = ctl.ctl(&[
        "key",
        "init",
        "--out",
        key.to_str().unwrap(),
        "--passphrase-file",
        weak.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("passphrase too weak"), "{err}");
    assert!(err.contains("at least 12 characters"), "{err}");
    assert!(!key.exists());
    assert!(objects(&ctl.dir.join("objects"), "keys/master").is_empty());

    // Neither a passphrase file, a terminal nor --no-escrow: a usage error, nothing written.
    let out = ctl.ctl(&["key", "init", "--out", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{}", describe(&out));
    assert!(stderr(&out).contains("--no-escrow"), "{}", describe(&out));
    assert!(!key.exists());

    // An agent asking for a key before any escrow exists is told what to do.
    let www = tmp.path().join("www");
    fs::create_dir(&www).unwrap();
    let vm = fresh_vm(&ctl, &tmp.path().join("vm"), "web-1", &www);
    let good = write(&tmp.path().join("pass"), PASSPHRASE);
    let out = vm.run(&[
        "key",
        "recover",
        "--passphrase-file",
        good.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    assert!(
        stderr(&out).contains("lifeboatctl key escrow"),
        "{}",
        describe(&out)
    );
    assert!(!vm.dir.join("master.key").exists());
}

#[test]
fn paper_export_import_round_trip_and_a_typo_is_located() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(&tmp.path().join("controller"));
    let key = tmp.path().join("k");
    let out = ctl.ctl(&["key", "init", "--no-escrow", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = ctl.ctl(&["key", "export", "--paper", "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let paper = String::from_utf8(out.stdout).unwrap();
    assert_eq!(paper.lines().count(), 5, "{paper}");

    let typed = write(&tmp.path().join("typed"), &paper.to_lowercase());
    let back = tmp.path().join("k2");
    let out = ctl.ctl(&[
        "key",
        "import",
        "--paper",
        "--from",
        typed.to_str().unwrap(),
        "--out",
        back.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(fs::read(&back).unwrap(), fs::read(&key).unwrap());

    // One character of line 3, group 2 mistyped.
    let mut lines: Vec<String> = paper.lines().map(str::to_owned).collect();
    let at = lines[3].find(' ').unwrap() + 1 + 5 + 1; // "3: XXXX X?XX"
    let orig = lines[3].as_bytes()[at];
    let typo = if orig == b'7' { "8" } else { "7" };
    lines[3].replace_range(at..at + 1, typo);
    let bad = write(&tmp.path().join("bad"), &lines.join("\n"));
    let out3 = tmp.path().join("k3");
    let out = ctl.ctl(&[
        "key",
        "import",
        "--paper",
        "--from",
        bad.to_str().unwrap(),
        "--out",
        out3.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    assert!(
        stderr(&out).contains("line 3, group 2, character 2"),
        "{}",
        describe(&out)
    );
    assert!(!out3.exists());
    // Import never overwrites.
    let out = ctl.ctl(&[
        "key",
        "import",
        "--paper",
        "--from",
        typed.to_str().unwrap(),
        "--out",
        back.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
}

fn recover_ca(config: &Path, pass: &Path, region: &str) -> Output {
    run(Command::new(bin("lifeboat-controller"))
        .arg("recover-ca")
        .arg("--config")
        .arg(config)
        .arg("--passphrase-file")
        .arg(pass)
        .args(["--region", region]))
}

#[test]
fn recover_ca_from_the_store_gives_the_same_ca_from_either_region() {
    let tmp = tempfile::tempdir().unwrap();
    let secondary = tmp.path().join("region-2");
    let old = tmp.path().join("controller");
    let mut ctl = controller_with_secondary(&old, &secondary);
    let pass = write(&tmp.path().join("pass"), PASSPHRASE);
    let out = ctl.ctl(&[
        "key",
        "escrow",
        "--ca-key",
        old.join("ca.key").to_str().unwrap(),
        "--ca-cert",
        old.join("ca.pem").to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "key escrow: {}", describe(&out));
    assert_eq!(objects(&old.join("objects"), "keys/ca").len(), 1);
    ctl.wait_caught_up();
    ctl.stop();

    // A new controller directory on another host: the same stores, no CA yet.
    let new = tmp.path().join("rebuilt");
    fs::create_dir(&new).unwrap();
    let text = fs::read_to_string(old.join("controller.toml"))
        .unwrap()
        .replace(
            "path = \"objects\"",
            &format!("path = {:?}", old.join("objects").to_str().unwrap()),
        );
    let cfg = write(&new.join("controller.toml"), &text);

    let wrong = write(&tmp.path().join("wrong"), "correct horse battery stable");
    let out = recover_ca(&cfg, &wrong, "primary");
    assert_eq!(out.status.code(), Some(exit::ERROR), "{}", describe(&out));
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        describe(&out)
    );
    assert!(!new.join("ca.pem").exists() && !new.join("ca.key").exists());

    // From the secondary (the primary region lost).
    let out = recover_ca(&cfg, &pass, "secondary");
    assert!(out.status.success(), "recover-ca: {}", describe(&out));
    assert_eq!(
        fs::read(new.join("ca.pem")).unwrap(),
        fs::read(old.join("ca.pem")).unwrap()
    );
    assert_eq!(
        fs::read(new.join("ca.key")).unwrap(),
        fs::read(old.join("ca.key")).unwrap()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let fp = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CA sha256 fingerprint: "))
        .expect("fingerprint line")
        .to_owned();
    assert_eq!(fp.len(), 64, "{stdout}");
    // The fingerprint is the old CA's (the one agents pin through their join tokens).
    let old_ca =
        lifeboat_controller::ca::Ca::load(&old.join("ca.pem"), &old.join("ca.key")).unwrap();
    assert_eq!(
        lifeboat_controller::auth::fingerprint(&old_ca.cert_der().unwrap()),
        fp
    );

    // From the primary: identical files already there, a no-op success.
    let out = recover_ca(&cfg, &pass, "primary");
    assert!(out.status.success(), "recover-ca again: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("identical"));
}

#[test]
fn escrow_of_key_and_ca_on_an_s3_store_recovers_both() {
    use lifeboat_integration_tests::s3::S3Server;
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), "lifeboat");
    let old = tmp.path().join("controller");
    let out = run(Command::new(bin("lifeboat-controller"))
        .args(["init", "--dir"])
        .arg(&old));
    assert!(out.status.success(), "init: {}", describe(&out));
    server.configure_controller(&old, "fleet", "auto");
    let ctl = Controller::serve(&old);
    let pass = write(&tmp.path().join("pass"), PASSPHRASE);
    let key = tmp.path().join("master.key");
    let out = ctl.ctl(&["key", "init", "--no-escrow", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = ctl.ctl(&[
        "key",
        "escrow",
        "--key",
        key.to_str().unwrap(),
        "--ca-key",
        old.join("ca.key").to_str().unwrap(),
        "--ca-cert",
        old.join("ca.pem").to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "key escrow: {}", describe(&out));
    for kind in ["master", "ca"] {
        let dir = server.object_path(&format!("fleet/keys/{kind}"));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "{}", dir.display());
    }

    let www = tmp.path().join("www");
    fs::create_dir(&www).unwrap();
    let vm = fresh_vm(&ctl, &tmp.path().join("vm"), "web-s3", &www);
    let out = vm.run(&[
        "key",
        "recover",
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "recover: {}", describe(&out));
    assert_eq!(
        fs::read(vm.dir.join("master.key")).unwrap(),
        fs::read(&key).unwrap()
    );

    let new = tmp.path().join("rebuilt");
    fs::create_dir(&new).unwrap();
    fs::copy(old.join("controller.toml"), new.join("controller.toml")).unwrap();
    server.write_credentials(&new.join("s3.credentials"));
    let out = recover_ca(&new.join("controller.toml"), &pass, "primary");
    assert!(out.status.success(), "recover-ca: {}", describe(&out));
    assert_eq!(
        fs::read(new.join("ca.key")).unwrap(),
        fs::read(old.join("ca.key")).unwrap()
    );
    assert_eq!(
        fs::read(new.join("ca.pem")).unwrap(),
        fs::read(old.join("ca.pem")).unwrap()
    );
}
