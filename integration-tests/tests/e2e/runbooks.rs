//! The runbooks of `docs/runbooks/`, command by command, against real processes and two (then
//! three) in-process S3-compatible servers (s3s-fs) standing for the regions:
//! - `primary_region_lost`: the primary bucket is wiped; restores carry on from the secondary
//!   and say so; the controller is re-pointed at a new bucket, its catalog rebuilt from the
//!   secondary, which refills the new primary; backups deduplicate as before.
//! - `total_loss`: the controller host, the primary region and the VM are all lost at once
//!   (the test 5). A new controller is made from the secondary alone (`recover-ca`,
//!   `rebuild-catalog`, `issue-certs`), a new VM enrolls with a join token, recovers the master
//!   key with the escrow passphrase, gets an `allow-restore` grant, and brings the nginx web
//!   root and the MariaDB database back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use lifeboat_integration_tests::poc_vm::PocVm;
use lifeboat_integration_tests::process::{bin, describe, parse_json, run};
use lifeboat_integration_tests::regions::{self, write};
use lifeboat_integration_tests::s3::S3Server;
use lifeboat_integration_tests::tree::{assert_same_tree, build_sample_tree, restored_root};
use lifeboat_integration_tests::{Agent, Controller};

const PASSPHRASE: &str = "correct horse battery staple";

fn controller_cmd(args: &[&str], config: &Path) -> Output {
    run(Command::new(bin("lifeboat-controller"))
        .args(args)
        .arg("--config")
        .arg(config))
}

fn ok(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what}: {}", describe(&out));
    out
}

/// `init`, then `[store]` on `primary` and `[secondary]` on `secondary` (prefix "fleet").
fn init_two_regions(dir: &Path, primary: &S3Server, secondary: &S3Server) {
    regions::init(dir);
    primary.configure_controller(dir, "fleet", "auto");
    regions::s3_secondary(dir, secondary, "fleet");
}

#[test]
fn primary_region_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let region1 = S3Server::start(&t.join("region-1"), "lifeboat");
    let region2 = S3Server::start(&t.join("region-2"), "lifeboat-dr");
    let dir = t.join("controller");
    init_two_regions(&dir, &region1, &region2);
    let mut ctl = Controller::serve(&dir);
    let key = t.join("fleet-master.key");
    lifeboat_integration_tests::process::master_key(&ctl, &key);
    let www = t.join("www");
    build_sample_tree(&www, 3 << 20);
    let sources = format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
        www.to_str().unwrap()
    );
    let agent = Agent::enroll(&ctl, &t.join("vm"), "web-01", None, &key, &sources);
    let first = agent.backup("web");
    ctl.wait_caught_up();

    // Disaster: the primary bucket is gone.
    fs::remove_dir_all(region1.object_path("fleet")).unwrap();

    // Runbook step 1: restores carry on from the secondary, and say so.
    let to = t.join("restored-1");
    let r = agent.restore("web", &["--to", to.to_str().unwrap()]);
    assert_same_tree(&www, &restored_root(&to, &www));
    // Some, not necessarily all: each failed read also queues a repair copy into the (still
    // reachable, empty) primary bucket, which may land before later reads of the same pack.
    assert!(r["chunks_from_secondary"].as_u64().unwrap() > 0, "{r}");

    // Runbook step 2: a new primary bucket in a surviving region; the catalog rebuilt from the
    // secondary refills it.
    ctl.stop();
    let region3 = S3Server::start(&t.join("region-3"), "lifeboat-new");
    region3.configure_controller(&dir, "fleet", "auto");
    let out = ok(
        controller_cmd(
            &[
                "rebuild-catalog",
                "--region",
                "secondary",
                "--force",
                "--json",
            ],
            &dir.join("controller.toml"),
        ),
        "rebuild-catalog",
    );
    let report = parse_json(&out);
    assert!(report["snapshots"].as_u64().unwrap() >= 1, "{report}");
    let ctl = Controller::serve(&dir);
    agent.write_config(&ctl.url(), &sources);
    ctl.wait_caught_up();

    // Backups deduplicate against the old chunks; restores work from the new primary alone.
    let again = agent.backup("web");
    assert!(
        again["uploaded_bytes"].as_u64().unwrap() < 16_384,
        "unchanged data after the move uploads only a manifest: {again} (first: {first})"
    );
    let to = t.join("restored-2");
    let r = agent.restore(
        "web",
        &["--to", to.to_str().unwrap(), "--region", "primary"],
    );
    assert_same_tree(&www, &restored_root(&to, &www));
    assert_eq!(r["chunks_from_secondary"], 0, "{r}");
}

#[test]
fn total_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let region1 = S3Server::start(&t.join("region-1"), "lifeboat");
    let region2 = S3Server::start(&t.join("region-2"), "lifeboat-dr");
    let old_dir = t.join("controller");
    init_two_regions(&old_dir, &region1, &region2);
    // What an operator keeps off the controller host: its config (with the credentials file).
    let saved = t.join("config-management");
    fs::create_dir(&saved).unwrap();
    fs::copy(
        old_dir.join("controller.toml"),
        saved.join("controller.toml"),
    )
    .unwrap();
    let mut ctl = Controller::serve(&old_dir);
    let pass = write(&t.join("escrow-passphrase"), &format!("{PASSPHRASE}\n"));
    let key = t.join("fleet-master.key");
    let p = pass.to_str().unwrap();
    ok(
        ctl.ctl(&[
            "key",
            "init",
            "--out",
            key.to_str().unwrap(),
            "--passphrase-file",
            p,
        ]),
        "key init",
    );
    let (ca_key, ca_cert) = (old_dir.join("ca.key"), old_dir.join("ca.pem"));
    ok(
        ctl.ctl(&[
            "key",
            "escrow",
            "--ca-key",
            ca_key.to_str().unwrap(),
            "--ca-cert",
            ca_cert.to_str().unwrap(),
            "--passphrase-file",
            p,
        ]),
        "key escrow of the CA",
    );
    let old_ca = fs::read(&ca_cert).unwrap();

    let mut vm = PocVm::start(t);
    let agent = Agent::enroll(&ctl, &t.join("vm-01"), "vm-01", None, &key, &vm.sources());
    agent.backup("web");
    let dbb = agent.backup("db");
    assert_eq!(dbb["databases"][0]["rows"], 3, "{dbb}");
    ctl.wait_caught_up();

    // Total loss: the controller host, the primary region, and the VM (web root, database,
    // agent directory with its key and certificate).
    ctl.kill();
    fs::remove_dir_all(&old_dir).unwrap();
    fs::remove_dir_all(region1.object_path("fleet")).unwrap();
    vm.nginx.stop();
    fs::remove_dir_all(&vm.www).unwrap();
    vm.db.stop();
    fs::remove_dir_all(vm.db.dir.join("data/poc_db")).unwrap();
    fs::remove_dir_all(&agent.dir).unwrap();
    fs::remove_file(&key).unwrap();
    drop(region1);

    // Runbook "controller host lost" (from the secondary: the primary region is gone too).
    let dir = t.join("new-controller");
    fs::create_dir(&dir).unwrap();
    fs::copy(saved.join("controller.toml"), dir.join("controller.toml")).unwrap();
    region2.write_credentials(&dir.join("s3.credentials"));
    let region3 = S3Server::start(&t.join("region-3"), "lifeboat-new");
    region3.configure_controller(&dir, "fleet", "auto");
    let cfg = dir.join("controller.toml");
    ok(
        run(Command::new(bin("lifeboat-controller"))
            .args([
                "recover-ca",
                "--region",
                "secondary",
                "--passphrase-file",
                p,
            ])
            .arg("--config")
            .arg(&cfg)),
        "recover-ca",
    );
    assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), old_ca);
    let out = ok(
        controller_cmd(
            &["rebuild-catalog", "--region", "secondary", "--json"],
            &cfg,
        ),
        "rebuild-catalog",
    );
    let report = parse_json(&out);
    assert_eq!(report["snapshots"], 2, "{report}");
    ok(
        run(Command::new(bin("lifeboat-controller"))
            .args(["issue-certs", "--admin-out"])
            .arg(&dir)
            .arg("--config")
            .arg(&cfg)),
        "issue-certs",
    );
    let ctl = Controller::serve(&dir);

    // Runbook "VM lost": a new VM enrolls with a join token, recovers the key, is granted the
    // old VM's snapshots, and restores them.
    let out = ok(
        ctl.ctl(&["token", "create", "--ttl", "10m"]),
        "token create",
    );
    let token = write(
        &t.join("token"),
        String::from_utf8_lossy(&out.stdout).trim(),
    );
    let new_dir = t.join("vm-02");
    ok(
        run(Command::new(bin("lifeboat-agent"))
            .arg("enroll")
            .arg("--token-file")
            .arg(&token)
            .arg("--dir")
            .arg(&new_dir)
            .args(["--name", "vm-02"])),
        "enroll",
    );
    let new = Agent {
        name: "vm-02".into(),
        dir: new_dir.clone(),
    };
    new.write_config(&ctl.url(), &vm.sources());
    ok(
        new.run(&["key", "recover", "--passphrase-file", p]),
        "key recover",
    );
    ok(
        ctl.ctl(&["agent", "allow-restore", "vm-02", "--from", "vm-01"]),
        "allow-restore",
    );
    vm.db.restart();
    let out = ok(
        new.run(&[
            "restore",
            "--from-agent",
            "vm-01",
            "--source",
            "web",
            "--in-place",
            "--json",
        ]),
        "restore web",
    );
    let r = parse_json(&out);
    assert_eq!(r["nginx"]["test_passed"], true, "{r}");
    let out = ok(
        new.run(&[
            "restore",
            "--from-agent",
            "vm-01",
            "--source",
            "db",
            "--json",
        ]),
        "restore db",
    );
    let r = parse_json(&out);
    assert_eq!(r["databases"][0]["rows"], 3, "{r}");
    vm.nginx.start_again();
    let (code, body) = vm.nginx.get("/");
    assert_eq!(code, 200);
    assert!(body.contains("<h1>DR PoC Web Page</h1>"), "{body}");
    assert_eq!(
        vm.db.sql("SELECT * FROM poc_db.test_table ORDER BY id"),
        vm.rows
    );
}
