//! Fleet status and alerts end to end (real controller, lifeboatctl and agent processes, real
//! mTLS): policies are validated and stored; an agent backs up and stops; with a short RPO and the
//! controller's fleet clock moved forward (the `testing` clock-offset file, no sleeps),
//! `lifeboatctl status --json` shows the source breached, `/metrics` agrees, and a webhook
//! receiver on 127.0.0.1:0 gets the breach alert with a valid signature; after a new backup the
//! recovery arrives; restarting the controller repeats no alert and invents no recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lifeboat_controller::fleet::clock::ENV_OFFSET_FILE;
use lifeboat_controller::fleet::webhook::receiver::{self, Received};
use lifeboat_integration_tests::process::{describe, master_key, metric, run};
use lifeboat_integration_tests::{Agent, Controller, bin};
use tokio::sync::mpsc::UnboundedReceiver;

const SECRET: &[u8] = b"webhook-test-secret";

struct Rig {
    rt: tokio::runtime::Runtime,
    hooks: UnboundedReceiver<Received>,
    clock: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Rig {
    /// The next webhook request (the worker runs every second; 60 s is a generous bound).
    fn next_hook(&mut self) -> Received {
        let hooks = &mut self.hooks;
        let got = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), hooks.recv()).await });
        got.ok().flatten().unwrap_or_else(|| {
            let log = fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default();
            panic!(
                "no webhook within 60s; if the log lacks \"test clock offset file in effect\", \
                 build the binaries with the testing feature (`cargo build --workspace --bins`); \
                 log:\n{log}"
            )
        })
    }

    fn set_clock_offset(&self, ms: i64) {
        fs::write(&self.clock, ms.to_string()).expect("write clock offset");
    }

    fn serve(&self) -> Controller {
        let clock = self.clock.to_str().expect("utf-8");
        Controller::serve_with_env(&self.dir, &[(ENV_OFFSET_FILE, clock)])
    }
}

fn rig(tmp: &Path) -> Rig {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hooks = {
        let _g = rt.enter();
        receiver::serve(listener, SECRET.to_vec(), vec![])
    };
    let dir = tmp.join("controller");
    let out = run(Command::new(bin("lifeboat-controller"))
        .arg("init")
        .arg("--dir")
        .arg(&dir));
    assert!(out.status.success(), "init: {}", describe(&out));
    let secret = dir.join("webhook.secret");
    fs::write(&secret, SECRET).expect("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut cfg = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("controller.toml"))
        .expect("open config");
    write!(
        cfg,
        "\n[alerts]\ninterval = \"1s\"\nwebhook_url = \"http://{addr}/hook\"\nwebhook_secret_file = \"webhook.secret\"\n"
    )
    .expect("append [alerts]");
    let clock = tmp.join("clock-offset-ms");
    fs::write(&clock, "0").expect("clock");
    Rig {
        rt,
        hooks,
        clock,
        dir,
    }
}

fn source_status(ctl: &Controller) -> serde_json::Value {
    let v = ctl.ctl_json(&["status", "--json"]);
    let sources = v["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 1, "{v}");
    sources[0].clone()
}

#[test]
fn breach_alert_recovery_and_restart_without_false_alerts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = rig(tmp.path());
    let mut ctl = rig.serve();
    let key = tmp.path().join("fleet.key");
    master_key(&ctl, &key);
    let www = tmp.path().join("www");
    fs::create_dir_all(&www).expect("mkdir");
    fs::write(www.join("index.html"), "hello").expect("write");
    let sources = format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
        www.to_str().expect("utf-8")
    );
    let agent = Agent::enroll(
        &ctl,
        &tmp.path().join("db-01"),
        "db-01",
        None,
        &key,
        &sources,
    );

    // A schedule that cannot meet the objective is refused unless forced.
    let out = ctl.ctl(&[
        "policy",
        "set",
        "--scope",
        "agent:db-01",
        "--rpo",
        "30s",
        "--schedule",
        "every 1m",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        describe(&out)
    );
    let set = ctl.ctl_json(&[
        "policy",
        "set",
        "--scope",
        "agent:db-01",
        "--rpo",
        "30s",
        "--schedule",
        "every 10s",
        "--json",
    ]);
    assert_eq!(set["policy"]["rpo_ms"], 30_000, "{set}");
    let shown = ctl.ctl_json(&["policy", "show", "--agent", "db-01", "--json"]);
    assert_eq!(shown["policies"].as_array().expect("policies").len(), 1);

    // A backup, then the agent stops: the source is ok.
    agent.backup("web");
    let s = source_status(&ctl);
    assert_eq!(
        (s["agent"].as_str(), s["source"].as_str()),
        (Some("db-01"), Some("web"))
    );
    assert_eq!(s["state"], "ok", "{s}");
    assert_eq!(s["objective_ms"], 30_000);
    let last_success = s["last_success_unix_ms"].as_i64().expect("last success");

    // An hour later (the fleet clock moves, nobody sleeps): breached, alerted, on /metrics.
    rig.set_clock_offset(3_600_000);
    let hook = rig.next_hook();
    assert!(hook.signature_valid, "{hook:?}");
    assert_eq!(hook.body["status"], "firing", "{hook:?}");
    assert_eq!(hook.body["condition"], "rpo_breached");
    assert_eq!(hook.body["agent"], "db-01");
    assert_eq!(hook.body["source"], "web");
    let s = source_status(&ctl);
    assert_eq!(s["state"], "breached", "{s}");
    let age_ms = s["age_ms"].as_i64().expect("age");
    assert!(age_ms >= 3_600_000, "{s}");
    let table = ctl.ctl(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("db-01") && table.contains("breached"),
        "{table}"
    );
    assert!(!table.contains('\x1b'), "no colour off a terminal: {table}");
    let text = ctl.scrape_metrics();
    let labels = "{agent=\"db-01\",source=\"web\"}";
    assert_eq!(
        metric(&text, &format!("lifeboat_rpo_breached{labels}")),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("lifeboat_backup_last_success_timestamp_seconds{labels}")
        ),
        last_success as f64 / 1000.0,
        "/metrics and status agree on the last success"
    );
    assert_eq!(
        metric(&text, &format!("lifeboat_rpo_objective_seconds{labels}")),
        30.0
    );
    assert_eq!(
        metric(&text, &format!("lifeboat_backup_last_run_success{labels}")),
        1.0
    );
    let metric_age = metric(&text, &format!("lifeboat_rpo_seconds{labels}"));
    assert!(
        (metric_age - age_ms as f64 / 1000.0).abs() < 30.0,
        "/metrics age {metric_age}s vs status {age_ms}ms"
    );

    // Restart while breached: no repeated alert (the next webhook must be the recovery).
    ctl.stop();
    let ctl = rig.serve();
    agent.write_config(&ctl.url(), &sources);
    agent.backup("web");
    rig.set_clock_offset(0);
    let hook = rig.next_hook();
    assert!(hook.signature_valid, "{hook:?}");
    assert_eq!(
        (
            hook.body["condition"].as_str(),
            hook.body["status"].as_str()
        ),
        (Some("rpo_breached"), Some("resolved")),
        "a restart must not repeat the breach: {hook:?}"
    );
    let s = source_status(&ctl);
    assert_eq!(
        s["state"],
        "ok",
        "{s}\n{}\n{}",
        ctl.ctl_json(&["snapshots", "list", "--json"]),
        ctl.log()
    );

    // Restart while healthy: no invented recovery; the next webhook is a new breach.
    let mut ctl = ctl;
    ctl.stop();
    let ctl = rig.serve();
    rig.set_clock_offset(3_600_000);
    let hook = rig.next_hook();
    assert_eq!(
        (
            hook.body["condition"].as_str(),
            hook.body["status"].as_str()
        ),
        (Some("rpo_breached"), Some("firing")),
        "{hook:?}"
    );
    let log = ctl.log();
    assert_eq!(log.matches("alert firing").count(), 2, "{log}");
    assert_eq!(log.matches("alert resolved").count(), 1, "{log}");
}
