//! The agent control stream with real processes: `lifeboatctl backup|restore --agent` drive a
//! running `lifeboat-agent run`, an offline agent gets a clear error, agents reconnect to a
//! restarted controller by themselves, and the controller's memory with 50 connected agents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lifeboat_integration_tests::logwatch::LogWatch;
use lifeboat_integration_tests::process::{Agent, Controller, describe, master_key};
use serde_json::Value;

/// A `lifeboat-agent run` child, stopped with SIGTERM when dropped; its log (`run.log`) is
/// watched so tests wait for what it logs.
struct Daemon(Child, LogWatch);

impl Daemon {
    fn start(agent: &Agent) -> Daemon {
        let log = agent.dir.join("run.log");
        let _ = fs::remove_file(&log);
        let mut child = agent
            .command(&["run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let watch = LogWatch::follow(child.stderr.take().unwrap(), &log);
        Daemon(child, watch)
    }

    /// Waits (60 s bound) for a line of the daemon's log containing `part`.
    fn wait_logged(&self, what: &str, part: &str) {
        self.1
            .wait_for(what, 1, Duration::from_secs(60), |l| l.contains(part));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn agent_entry(ctl: &Controller, name: &str) -> Value {
    let list = ctl.ctl_json(&["agent", "list", "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// `agent list --json --wait-connected|--wait-disconnected`: the controller answers once the
/// agent's connection state is `want` (woken on every connect and disconnect), or fails after
/// 60 s. Returns the agent's entry.
fn wait_connected(ctl: &Controller, agent: &Agent, want: bool) -> Value {
    let flag = if want {
        "--wait-connected"
    } else {
        "--wait-disconnected"
    };
    let out = ctl.ctl(&[
        "agent",
        "list",
        "--json",
        flag,
        &agent.name,
        "--timeout",
        "60s",
    ]);
    assert!(
        out.status.success(),
        "agent {} connected != {want}: {}\nagent log:\n{}\ncontroller log:\n{}",
        agent.name,
        describe(&out),
        fs::read_to_string(agent.dir.join("run.log")).unwrap_or_default(),
        ctl.log()
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == agent.name.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(a["connected"], want, "{a}");
    a
}

fn ndjson(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn setup(tmp: &Path) -> (Controller, Agent) {
    let ctl = Controller::start_watched(&tmp.join("ctl"));
    let key = tmp.join("master.key");
    master_key(&ctl, &key);
    let www = tmp.join("www");
    fs::create_dir_all(www.join("img")).unwrap();
    fs::write(www.join("index.html"), "<h1>DR PoC Web Page</h1>\n").unwrap();
    fs::write(www.join("img/logo.bin"), vec![7u8; 300_000]).unwrap();
    let adir = tmp.join("agent");
    fs::create_dir(&adir).unwrap();
    let sources = format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [\"{}\"]\ninterval = \"1h\"\n",
        www.display()
    );
    let agent = Agent::enroll(&ctl, &adir, "web-01", None, &key, &sources);
    (ctl, agent)
}

#[test]
fn remote_backup_and_restore_follow_the_run_and_agent_list_shows_connected() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, agent) = setup(tmp.path());
    let before = agent_entry(&ctl, "web-01");
    assert_eq!(before["connected"], false, "{before}");
    assert_eq!(before["version"], "", "{before}");
    let _d = Daemon::start(&agent);
    let a = wait_connected(&ctl, &agent, true);
    assert_eq!(a["version"], env!("CARGO_PKG_VERSION"), "{a}");
    let table = ctl.ctl(&["agent", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("CONNECTED") && text.contains("VERSION"),
        "{text}"
    );

    // Remote backup, waiting (the default), NDJSON reports.
    fs::write(
        tmp.path().join("www/new.txt"),
        "written after the daemon started\n",
    )
    .unwrap();
    let out = ctl.ctl(&["backup", "--agent", "web-01", "--source", "web", "--json"]);
    assert!(out.status.success(), "backup: {}", describe(&out));
    let reports = ndjson(&out);
    assert_eq!(reports.first().unwrap()["phase"], "started", "{reports:?}");
    let last = reports.last().unwrap();
    assert_eq!(last["phase"], "succeeded", "{reports:?}");
    assert_eq!(last["agent"], "web-01");
    assert_eq!(last["kind"], "backup");
    let snap = last["snapshot_id"].as_str().unwrap().to_owned();
    assert!(!snap.is_empty());
    assert_eq!(last["summary"]["snapshot_id"], snap.as_str());
    assert_eq!(last["summary"]["files"], 3, "{last}");
    let list = ctl.ctl_json(&["snapshots", "list", "--agent", "web-01", "--json"]);
    assert!(list.to_string().contains(&snap), "{list}");

    // Human output, every source: the final line names the agent and the result.
    let out = ctl.ctl(&["backup", "--agent", "web-01"]);
    assert!(out.status.success(), "backup: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("web-01/web: backup succeeded: snapshot"),
        "{text}"
    );
    assert!(text.contains("web-01: backup succeeded"), "{text}");

    // --no-wait answers once the agent started.
    let out = ctl.ctl(&["backup", "--agent", "web-01", "--no-wait", "--json"]);
    assert!(out.status.success(), "no-wait: {}", describe(&out));
    let r = ndjson(&out);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["phase"], "started");

    // Remote restore of that snapshot: progress, then the final verified summary.
    let target = tmp.path().join("restored");
    let out = ctl.ctl(&[
        "restore",
        "--agent",
        "web-01",
        "--source",
        "web",
        "--snapshot",
        &snap,
        "--to",
        target.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "restore: {}", describe(&out));
    let reports = ndjson(&out);
    let phases: Vec<_> = reports
        .iter()
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"started"), "{phases:?}");
    assert!(phases.contains(&"progress"), "{phases:?}");
    let last = reports.last().unwrap();
    assert_eq!(last["phase"], "succeeded", "{reports:?}");
    assert_eq!(last["kind"], "restore");
    assert_eq!(last["snapshot_id"], snap.as_str());
    assert_eq!(last["summary"]["files_written"], 3, "{last}");
    let www = tmp.path().join("www");
    let restored = target.join(www.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read(restored.join("new.txt")).unwrap(),
        fs::read(www.join("new.txt")).unwrap()
    );
    assert_eq!(
        fs::read(restored.join("img/logo.bin")).unwrap(),
        vec![7u8; 300_000]
    );

    // A restore the agent refuses (unknown snapshot) fails with exit 1 and says why.
    let out = ctl.ctl(&[
        "restore",
        "--agent",
        "web-01",
        "--source",
        "web",
        "--snapshot",
        "ffffffff",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("restore FAILED"), "{}", describe(&out));
    // An unknown source is refused by the controller before anything is sent.
    let out = ctl.ctl(&["backup", "--agent", "web-01", "--source", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no source \"nope\""),
        "{}",
        describe(&out)
    );
}

#[test]
fn offline_and_unknown_agents_get_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, _agent) = setup(tmp.path());
    let out = ctl.ctl(&["backup", "--agent", "web-01", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent web-01 is not connected"), "{err}");
    assert!(err.contains("lifeboat-agent run"), "{err}");
    let out = ctl.ctl(&[
        "restore", "--agent", "web-01", "--source", "web", "--to", "/tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not connected"));
    let out = ctl.ctl(&["backup", "--agent", "ghost"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agent ghost is not enrolled"),
        "{}",
        describe(&out)
    ); // Waiting for an agent that never connects ends at the timeout with a clear error.
    let out = ctl.ctl(&[
        "agent",
        "list",
        "--wait-connected",
        "web-01",
        "--timeout",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("web-01 is still not connected after 1000 ms"),
        "{}",
        describe(&out)
    );
}

#[test]
fn agents_reconnect_to_a_restarted_controller_by_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut ctl, agent) = setup(tmp.path());
    let _d = Daemon::start(&agent);
    wait_connected(&ctl, &agent, true);
    let listen = ctl.addr.to_string();
    let dir = ctl.dir.clone();
    let started = Instant::now();
    assert_eq!(ctl.stop(), Some(0), "controller exit:\n{}", ctl.log());
    // Open control streams must not hold the graceful shutdown for its whole grace period.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(ctl);
    let ctl = Controller::serve_on(&dir, &listen, &[]);
    let a = wait_connected(&ctl, &agent, true);
    assert_eq!(a["version"], env!("CARGO_PKG_VERSION"), "{a}");
    let out = ctl.ctl(&["backup", "--agent", "web-01", "--source", "web", "--json"]);
    assert!(
        out.status.success(),
        "backup after restart: {}",
        describe(&out)
    );
    assert_eq!(ndjson(&out).last().unwrap()["phase"], "succeeded");
}

#[test]
fn the_schedule_runs_while_the_controller_is_down_and_missed_slots_are_reported_on_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut ctl, agent) = setup(tmp.path());
    // A 2-second schedule from the config (no policy pushed yet: the controller is down).
    let www = tmp.path().join("www");
    agent.write_config(
        &ctl.url(),
        &format!(
            "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [\"{}\"]\ninterval = \"2s\"\n",
            www.display()
        ),
    );
    let (listen, dir) = (ctl.addr.to_string(), ctl.dir.clone());
    assert_eq!(ctl.stop(), Some(0));
    drop(ctl);
    let daemon = Daemon::start(&agent);
    daemon.wait_logged("a missed slot in the agent log", "scheduled slot missed");
    let ctl = Controller::serve_on_watched(&dir, &listen);
    wait_connected(&ctl, &agent, true);
    let failed = || {
        let list = ctl.ctl_json(&["snapshots", "list", "--agent", "web-01", "--json"]);
        list.as_array()
            .unwrap()
            .iter()
            .filter(|x| x["status"] == "failed")
            .filter_map(|x| x["reason"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    // The controller logs a reported missed run once its failure row is committed.
    ctl.wait_logged(
        "a missed-run failure in the catalog",
        1,
        &["missed scheduled backup", "web-01"],
    );
    assert!(
        failed()
            .iter()
            .any(|r| r.contains("missed scheduled backup")),
        "{:?}",
        failed()
    );
    // The agent gets its policy and keeps backing up on its own.
    ctl.wait_logged(
        "a scheduled snapshot after the reconnect",
        1,
        &["snapshot committed", "agent=web-01"],
    );
    let list = ctl.ctl_json(&["snapshots", "list", "--agent", "web-01", "--json"]);
    assert!(
        list.as_array().unwrap().iter().any(|x| x["status"] == "ok"),
        "{list}"
    );
    daemon.wait_logged(
        "the policy in the agent log",
        "policy received from the controller",
    );
    // A stopped agent shows as disconnected.
    drop(daemon);
    wait_connected(&ctl, &agent, false);
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// 50 enrolled agent identities in this process each hold a Control stream open to a real
/// controller process; its resident memory is read from /proc before and after. A revoked
/// agent's stream is closed on its next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connected_agents_and_the_controllers_memory() {
    use lifeboat_controller::client::connect_pem;
    use lifeboat_proto::v1 as pb;
    use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
    use lifeboat_proto::v1::agent_service_client::AgentServiceClient;

    const AGENTS: usize = 50;
    lifeboat_common::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let ctl = tokio::task::block_in_place(|| Controller::start_watched(&tmp.path().join("ctl")));
    let pid = ctl.pid().unwrap();
    let read = |f: &str| fs::read(ctl.dir.join(f)).unwrap();
    let ca = read("ca.pem");
    let url = ctl.url();
    let admin = connect_pem(
        &url,
        "lifeboat-controller",
        &ca,
        &read("admin.pem"),
        &read("admin.key"),
    )
    .await
    .unwrap();
    let mut admin = AdminServiceClient::new(admin);
    let mut ids = Vec::new();
    for i in 0..AGENTS {
        let name = format!("sim-{i:03}");
        let (csr, key) = lifeboat_controller::testing::agent_csr(&name, vec![]);
        let r = admin
            .add_agent(pb::AddAgentRequest {
                agent_id: name.clone(),
                csr_pem: csr,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.push((name, r.certificate_pem, key));
    }
    let idle_kib = vm_rss_kib(pid);
    let mut held = Vec::new();
    for (name, cert, key) in &ids {
        let ch = connect_pem(
            &url,
            "lifeboat-controller",
            &ca,
            cert.as_bytes(),
            key.as_bytes(),
        )
        .await
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = pb::AgentHello {
            version: "sim-1".into(),
            sources: vec![
                pb::HelloSource {
                    name: "db".into(),
                    kind: "mysql".into(),
                },
                pb::HelloSource {
                    name: "web".into(),
                    kind: "nginx".into(),
                },
            ],
        };
        tx.send(pb::AgentEvent {
            event: Some(pb::agent_event::Event::Hello(hello)),
        })
        .await
        .unwrap();
        let mut inbound = AgentServiceClient::new(ch)
            .control(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        let Some(pb::controller_command::Command::Policy(p)) = first.command else {
            panic!("{name}: first command is not the policy: {first:?}");
        };
        assert_eq!(p.sources.len(), 2);
        assert_eq!(p.sources[0].schedule, "every 5m");
        assert_eq!(p.sources[1].schedule, "every 10m");
        held.push((name.clone(), tx, inbound));
    }
    let list = tokio::task::block_in_place(|| ctl.ctl_json(&["agent", "list", "--json"]));
    let connected = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["connected"] == true && a["version"] == "sim-1")
        .count();
    assert_eq!(connected, AGENTS, "{list}");
    let busy_kib = vm_rss_kib(pid);
    println!(
        "controller VmRSS: {idle_kib} KiB with {AGENTS} agents enrolled and none connected, {busy_kib} KiB with {AGENTS} control streams open ({} KiB per agent)",
        busy_kib.saturating_sub(idle_kib) / AGENTS as u64
    );
    assert!(busy_kib < 512 * 1024, "controller RSS {busy_kib} KiB");

    // Revocation closes the stream on the agent's next message.
    let out = tokio::task::block_in_place(|| ctl.ctl(&["agent", "revoke", "sim-000"]));
    assert!(out.status.success(), "revoke: {}", describe(&out));
    let (_, tx, inbound) = &mut held[0];
    let beat = pb::Heartbeat { sent_at_unix_ms: 1 };
    tx.send(pb::AgentEvent {
        event: Some(pb::agent_event::Event::Heartbeat(beat)),
    })
    .await
    .unwrap();
    let err = inbound.message().await.expect_err("revoked stream closed");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("sim-000 has been revoked"),
        "{err:?}"
    );
    // The others stay connected; a missed slot they report is recorded as a failed backup.
    let (_, tx1, _) = &held[1];
    let missed = pb::MissedRun {
        source: "db".into(),
        slot_unix_ms: 1_800_000_000_000,
        reason: "controller unreachable".into(),
    };
    tx1.send(pb::AgentEvent {
        event: Some(pb::agent_event::Event::Missed(missed)),
    })
    .await
    .unwrap();
    let list = tokio::task::block_in_place(|| {
        ctl.wait_logged(
            "the missed run recorded",
            1,
            &["missed scheduled backup", "sim-001"],
        );
        ctl.ctl_json(&["snapshots", "list", "--agent", "sim-001", "--json"])
    });
    let failures: Vec<Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["status"] == "failed")
        .cloned()
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let reason = failures[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("missed scheduled backup") && reason.contains("controller unreachable"),
        "{reason}"
    );
    let list = tokio::task::block_in_place(|| ctl.ctl_json(&["agent", "list", "--json"]));
    let sim1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "sim-001")
        .unwrap();
    assert_eq!(sim1["connected"], true, "{sim1}");
    let sim0 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "sim-000")
        .unwrap();
    assert_eq!(sim0["connected"], false, "{sim0}");
}

/// Issue 7, test 4 through the policy: `policy set --bandwidth` reaches the connected agent,
/// a remote backup reports progress while it runs, and stays within the limit over the whole
/// transfer (uploaded bytes / backup duration), with tolerance.
#[test]
fn the_policy_bandwidth_limits_a_remote_backup_that_reports_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctl, agent) = setup(tmp.path());
    let set = ctl.ctl_json(&[
        "policy",
        "set",
        "--scope",
        "agent:web-01",
        "--source",
        "web",
        "--bandwidth",
        "2MiB/s",
        "--json",
    ]);
    assert_eq!(set["policy"]["bandwidth_bytes_per_sec"], 2 << 20, "{set}");
    let _d = Daemon::start(&agent);
    wait_connected(&ctl, &agent, true);
    // The daemon backs up once when it starts: let that run finish, so the remote backup is
    // the one that uploads the new file.
    ctl.wait_logged(
        "the daemon's first scheduled backup",
        1,
        &["snapshot committed", "agent=web-01"],
    );
    // Incompressible: what is read is what is uploaded. 5 MiB at 2 MiB/s takes >= 2.5 s.
    lifeboat_integration_tests::tree::write_data(
        &tmp.path().join("www/video.bin"),
        5 << 20,
        9,
        false,
    );
    let out = ctl.ctl(&["backup", "--agent", "web-01", "--source", "web", "--json"]);
    assert!(out.status.success(), "backup: {}", describe(&out));
    let reports = ndjson(&out);
    let progress: Vec<&Value> = reports
        .iter()
        .filter(|r| r["phase"] == "progress")
        .collect();
    assert!(
        !progress.is_empty(),
        "no progress while running: {reports:?}"
    );
    assert!(
        progress[0]["bytes_done"].as_u64().unwrap() > 0,
        "{reports:?}"
    );
    assert!(
        progress[0]["bytes_total"].as_u64().unwrap() >= 5 << 20,
        "{reports:?}"
    );
    let summary = &reports.last().unwrap()["summary"];
    let uploaded = summary["uploaded_bytes"].as_f64().unwrap();
    let secs = summary["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(uploaded >= f64::from(5 << 20), "{summary}");
    let limit = f64::from(2 << 20);
    assert!(
        uploaded / secs <= limit * 1.05,
        "{:.0} B/s exceeds the policy's 2 MiB/s: {summary}",
        uploaded / secs
    );
}
