//! Issue 7, test 4: an upload with a bandwidth limit stays within it, measured over the whole
//! transfer (uploaded bytes / backup duration), with real processes. The limit comes from
//! `lifeboat-agent backup --bandwidth` here; under `run` the controller's policy sets the same
//! per-source limit (see `fleet_control`/`fleet_status`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use lifeboat_integration_tests::process::{describe, master_key, metric, parse_json};
use lifeboat_integration_tests::tree::write_data;
use lifeboat_integration_tests::{Agent, Controller};

const LIMIT: f64 = 2.0 * 1024.0 * 1024.0;

#[test]
fn a_limited_backup_stays_within_its_bandwidth() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ctl = Controller::start(&t.join("controller"));
    let key = t.join("fleet-master.key");
    master_key(&ctl, &key);
    let www = t.join("www");
    fs::create_dir(&www).unwrap();
    // Incompressible, so what is uploaded is what was read: 6 MiB at 2 MiB/s takes >= 3 s.
    write_data(&www.join("a.bin"), 6 << 20, 7, false);
    let sources = format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
        www.to_str().unwrap()
    );
    let agent = Agent::enroll(&ctl, &t.join("vm"), "web-01", None, &key, &sources);
    let out = agent.run(&[
        "backup",
        "--source",
        "web",
        "--bandwidth",
        "2MiB/s",
        "--json",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = parse_json(&out);
    let uploaded = r["uploaded_bytes"].as_f64().unwrap();
    let secs = r["duration_ms"].as_f64().unwrap() / 1000.0;
    assert!(uploaded >= 6.0 * 1024.0 * 1024.0, "{r}");
    let rate = uploaded / secs;
    assert!(
        rate <= LIMIT * 1.05,
        "{rate:.0} B/s over the transfer exceeds the 2 MiB/s limit: {r}"
    );
    // A limit is not a stall: the transfer still moves at a useful fraction of it.
    assert!(rate >= LIMIT * 0.25, "{rate:.0} B/s: {r}");

    // /metrics counts what the commit brought in, per agent and source.
    let m = ctl.scrape_metrics();
    let series = "{agent=\"web-01\",source=\"web\"}";
    assert_eq!(
        metric(&m, &format!("lifeboat_backup_uploaded_bytes_total{series}")),
        r["new_logical_bytes"].as_f64().unwrap()
    );
    assert_eq!(
        metric(&m, &format!("lifeboat_backup_snapshots_total{series}")),
        1.0
    );

    // A bad rate is a usage error naming the flag's format.
    let out = agent.run(&["backup", "--bandwidth", "fast"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("10MiB/s"));
}
