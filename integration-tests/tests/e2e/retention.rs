//! Retention end to end (real controller, lifeboatctl and agent processes, real mTLS):
//! `lifeboatctl forget --dry-run` lists the right keep/remove decisions and reasons and changes
//! nothing; `forget` then hides the removed snapshots from listings and restores while the kept
//! ones still restore byte for byte; an agent certificate cannot call Forget.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use lifeboat_common::exit;
use lifeboat_integration_tests::process::{describe, master_key, run};
use lifeboat_integration_tests::tree::restored_root;
use lifeboat_integration_tests::{Agent, Controller, bin};

fn snapshot_ids(ctl: &Controller) -> Vec<String> {
    let v = ctl.ctl_json(&["snapshots", "list", "--agent", "web-01", "--json"]);
    v.as_array()
        .expect("array")
        .iter()
        .filter(|s| s["status"] != "failed")
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect()
}

fn version_text(i: usize) -> String {
    format!("version {i}\n{}", "x".repeat(i * 7))
}

/// (id, action, reasons) of the only group in a `forget --json` answer, newest first.
fn decisions(v: &serde_json::Value) -> Vec<(String, String, Vec<String>)> {
    let groups = v["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{v}");
    assert_eq!(groups[0]["agent"], "web-01");
    assert_eq!(groups[0]["source"], "web");
    groups[0]["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_owned(),
                s["action"].as_str().expect("action").to_owned(),
                s["reasons"]
                    .as_array()
                    .expect("reasons")
                    .iter()
                    .map(|r| r.as_str().expect("reason").to_owned())
                    .collect(),
            )
        })
        .collect()
}

/// A lifeboatctl config that presents the agent's certificate instead of the admin's.
fn agent_ctl_config(ctl: &Controller, agent: &Agent) -> std::path::PathBuf {
    let p = agent.dir.join("as-agent-lifeboatctl.toml");
    let q = |p: &Path| format!("{:?}", p.to_str().expect("utf-8"));
    fs::write(
        &p,
        format!(
            "address = \"{}\"\nca = {}\ncert = {}\nkey = {}\n",
            ctl.url(),
            q(&ctl.dir.join("ca.pem")),
            q(&agent.dir.join("agent.pem")),
            q(&agent.dir.join("agent.key")),
        ),
    )
    .expect("write config");
    p
}

#[test]
fn forget_dry_run_then_forget_hides_and_keeps_restorable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctl = Controller::start(&tmp.path().join("controller"));
    let key = tmp.path().join("fleet.key");
    master_key(&ctl, &key);
    let www = tmp.path().join("www");
    fs::create_dir_all(&www).expect("mkdir");
    let sources = format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
        www.to_str().expect("utf-8")
    );
    let agent = Agent::enroll(
        &ctl,
        &tmp.path().join("web-01"),
        "web-01",
        None,
        &key,
        &sources,
    );

    // Five backups, each with a different index.html; ids[i] holds version i.
    let mut ids = Vec::new();
    for i in 0..5 {
        fs::write(www.join("index.html"), version_text(i)).expect("write");
        agent.backup("web");
        let now = snapshot_ids(&ctl);
        assert_eq!(now.len(), i + 1);
        ids.push(now.last().expect("newest").clone());
    }

    // No rule: refused as a usage error, nothing changes.
    let out = ctl.ctl(&["forget", "--agent", "web-01"]);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{}", describe(&out));

    // Dry run: the plan, newest first, with reasons; nothing is forgotten.
    let plan = ctl.ctl_json(&[
        "forget",
        "--agent",
        "web-01",
        "--source",
        "web",
        "--keep-last",
        "2",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["forgotten"], 0);
    let want = |v: &[(&str, &[&str])]| -> Vec<(String, String, Vec<String>)> {
        ids.iter()
            .rev()
            .zip(v)
            .map(|(id, (action, reasons))| {
                (
                    id.clone(),
                    (*action).to_owned(),
                    reasons.iter().map(|r| (*r).to_owned()).collect(),
                )
            })
            .collect()
    };
    let expected = want(&[
        ("keep", &["last", "newest"]),
        ("keep", &["last"]),
        ("remove", &[]),
        ("remove", &[]),
        ("remove", &[]),
    ]);
    assert_eq!(decisions(&plan), expected);
    assert_eq!(snapshot_ids(&ctl), ids, "a dry run changes nothing");

    // The human table says the same.
    let out = ctl.ctl(&[
        "forget",
        "--agent",
        "web-01",
        "--keep-last",
        "2",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("agent web-01 source web: keep 2, remove 3"),
        "{text}"
    );
    assert!(text.contains("would be forgotten"), "{text}");
    for (id, action, _) in &expected {
        let line = text
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not in {text}"));
        assert!(line.contains(action.as_str()), "{line}");
    }
    assert_eq!(snapshot_ids(&ctl), ids);

    // An agent certificate cannot forget, not even its own snapshots.
    let cfg = agent_ctl_config(&ctl, &agent);
    let out = run(std::process::Command::new(bin("lifeboatctl"))
        .arg("--config")
        .arg(&cfg)
        .args(["forget", "--agent", "web-01", "--keep-last", "1"]));
    assert_eq!(
        out.status.code(),
        Some(exit::CERTIFICATE_REFUSED),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot call the admin service"),
        "{}",
        describe(&out)
    );
    assert_eq!(snapshot_ids(&ctl), ids);

    // Forget for real: the three oldest disappear from the listing.
    let done = ctl.ctl_json(&["forget", "--agent", "web-01", "--keep-last", "2", "--json"]);
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["forgotten"], 3);
    assert_eq!(snapshot_ids(&ctl), ids[3..].to_vec());
    // Applying the same rules again forgets nothing more.
    let again = ctl.ctl_json(&["forget", "--agent", "web-01", "--keep-last", "2", "--json"]);
    assert_eq!(again["forgotten"], 0);

    // The kept snapshots restore byte for byte, the latest included.
    for (i, id) in ids.iter().enumerate().skip(3) {
        let to = tmp.path().join(format!("restore-{i}"));
        agent.restore(
            "web",
            &["--snapshot", id, "--to", to.to_str().expect("utf-8")],
        );
        let got =
            fs::read_to_string(restored_root(&to, &www).join("index.html")).expect("restored file");
        assert_eq!(got, version_text(i), "snapshot {id}");
    }
    // A forgotten snapshot can no longer be restored or listed by the agent.
    let to = tmp.path().join("restore-forgotten");
    let out = agent.run(&[
        "restore",
        "--source",
        "web",
        "--snapshot",
        &ids[0],
        "--to",
        to.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(!restored_root(&to, &www).join("index.html").exists());
    let out = agent.run(&["snapshots", "--source", "web", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&ids[4]), "{listed}");
    assert!(!listed.contains(&ids[0]), "{listed}");
}

/// `[retention]` in controller.toml: the worker applies the default rules on its schedule and
/// logs each snapshot it forgets; the newest is kept and still restores.
#[test]
fn configured_rules_are_applied_by_the_worker() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("controller");
    let mut ctl = Controller::start(&dir);
    let key = tmp.path().join("fleet.key");
    master_key(&ctl, &key);
    let www = tmp.path().join("www");
    fs::create_dir_all(&www).expect("mkdir");
    let sources = format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
        www.to_str().expect("utf-8")
    );
    let agent = Agent::enroll(
        &ctl,
        &tmp.path().join("web-01"),
        "web-01",
        None,
        &key,
        &sources,
    );
    for i in 0..3 {
        fs::write(www.join("index.html"), version_text(i)).expect("write");
        agent.backup("web");
    }
    let ids = snapshot_ids(&ctl);
    assert_eq!(ids.len(), 3);
    assert_eq!(ctl.stop(), Some(0));

    let cfg = dir.join("controller.toml");
    let mut text = fs::read_to_string(&cfg).expect("read config");
    text.push_str("\n[retention]\ninterval = \"1s\"\nkeep_last = 1\n");
    fs::write(&cfg, text).expect("write config");
    let ctl = Controller::serve_on_watched(&dir, "127.0.0.1:0");
    // The worker logs each snapshot it forgot once its transaction committed: wait for both.
    let forgotten = ctl.wait_logged(
        "the retention worker forgetting two snapshots",
        2,
        &["snapshot forgotten by retention"],
    );
    assert_eq!(snapshot_ids(&ctl), ids[2..].to_vec());
    for id in &ids[..2] {
        assert!(
            forgotten.iter().any(|l| l.contains(id.as_str())),
            "{id} not logged: {forgotten:?}"
        );
    }
    // The restarted controller listens on a new port.
    agent.write_config(&ctl.url(), &sources);
    let to = tmp.path().join("restore");
    agent.restore("web", &["--to", to.to_str().expect("utf-8")]);
    let got = fs::read_to_string(restored_root(&to, &www).join("index.html")).expect("restored");
    assert_eq!(got, version_text(2));
}
