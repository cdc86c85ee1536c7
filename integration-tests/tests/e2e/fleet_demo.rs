//! A fleet of 50 real agents (`lifeboat-agent run` daemons, each its own VM directory and
//! certificate) against one controller, for the closing figures of the fleet-operations issue:
//! `lifeboatctl status` at a glance and the controller's memory with all 50 connected. Ignored
//! by default (it starts 50 processes); run it with
//!
//! ```text
//! cargo build --workspace --bins
//! cargo test -p lifeboat-integration-tests --test e2e fleet_demo:: -- --ignored --nocapture
//! ```
//!
//! Three agents are stopped and one has a source that cannot be read, so the table shows each
//! state; the RPO objective is set to 40 s for the demo so that staleness shows within a minute.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::process::{Child, Stdio};
use std::time::Duration;

use lifeboat_integration_tests::process::{describe, master_key};
use lifeboat_integration_tests::{Agent, Controller};

const AGENTS: usize = 50;

fn vm_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "starts 50 agent processes; run by hand for the closing figures"]
fn fifty_real_agents_status_and_controller_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ctl = Controller::start_watched(&t.join("controller"));
    let key = t.join("master.key");
    master_key(&ctl, &key);
    let out = ctl.ctl(&[
        "policy",
        "set",
        "--scope",
        "default",
        "--schedule",
        "every 20s",
        "--rpo",
        "40s",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let idle_kib = vm_rss_kib(ctl.pid().unwrap());
    let mut daemons: Vec<Child> = Vec::new();
    for i in 0..AGENTS {
        let name = format!("web-{i:02}");
        let www = t.join(format!("www-{i:02}"));
        fs::create_dir_all(&www).unwrap();
        fs::write(www.join("index.html"), format!("<h1>site {i}</h1>\n")).unwrap();
        // One agent backs up a path that does not exist: its runs are partial, reported.
        let paths = if i == 7 {
            format!(
                "[{:?}, \"/nonexistent/lifeboat-demo\"]",
                www.to_str().unwrap()
            )
        } else {
            format!("[{:?}]", www.to_str().unwrap())
        };
        let sources = format!("[[source]]\nname = \"web\"\nkind = \"files\"\npaths = {paths}\n");
        let agent = Agent::enroll(&ctl, &t.join(&name), &name, None, &key, &sources);
        let log = fs::File::create(agent.dir.join("run.log")).unwrap();
        daemons.push(
            agent
                .command(&["run"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    let connected = || {
        ctl.ctl_json(&["agent", "list", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["connected"] == true)
            .count()
    };
    // Signalled, not polled: the controller answers `--wait-connected` when the agent
    // connects, and logs each snapshot once it is committed.
    let bound = Duration::from_secs(240);
    for i in 0..AGENTS {
        let name = format!("web-{i:02}");
        let out = ctl.ctl(&[
            "agent",
            "list",
            "--json",
            "--wait-connected",
            &name,
            "--timeout",
            "240s",
        ]);
        assert!(out.status.success(), "{name}: {}", describe(&out));
        let agent = format!("agent={name} ");
        ctl.wait_logged_within(
            &format!("a snapshot from {name}"),
            1,
            &["snapshot committed", &agent],
            bound,
        );
    }
    assert_eq!(connected(), AGENTS);
    let status = ctl.ctl_json(&["status", "--json"]);
    let sources = status["sources"].as_array().unwrap();
    assert_eq!(sources.len(), AGENTS, "{status}");
    assert!(
        sources
            .iter()
            .all(|r| r["last_success_unix_ms"].as_i64() > Some(0)),
        "{status}"
    );
    let busy_kib = vm_rss_kib(ctl.pid().unwrap());
    // Three VMs go away: their RPO ages past the 40 s objective while the others keep going.
    for d in daemons.iter_mut().take(3) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(d.id().to_string())
            .status();
        let _ = d.wait();
    }
    // The alert worker logs each RPO breach once (its interval plus the 40 s objective).
    ctl.wait_logged_within(
        "three RPO breaches",
        3,
        &["alert firing", "rpo_breached"],
        bound,
    );
    let breached = ctl.ctl_json(&["status", "--json"])["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "breached")
        .count();
    assert!(breached >= 3, "{breached} breached");
    let table = ctl.ctl(&["status"]);
    println!("{}", String::from_utf8_lossy(&table.stdout));
    println!(
        "controller VmRSS: {idle_kib} KiB before any agent, {busy_kib} KiB with {AGENTS} agents connected and backing up every 20 s, {} KiB now ({} connected)",
        vm_rss_kib(ctl.pid().unwrap()),
        connected()
    );
    for mut d in daemons.into_iter().skip(3) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(d.id().to_string())
            .status();
        let _ = d.wait();
    }
}
