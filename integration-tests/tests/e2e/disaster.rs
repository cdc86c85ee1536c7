//! The user's disaster runbook, end to end, against a private MariaDB and a private nginx:
//! back up the nginx preset and `poc_db`, lose the web root and the database directory, restore
//! both with `lifeboat-agent restore`, and prove the page and the rows are back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use lifeboat_integration_tests::poc_vm::PocVm;
use lifeboat_integration_tests::process::{describe, master_key, parse_json};
use lifeboat_integration_tests::{Agent, Controller};

#[test]
fn disaster_scenario_nginx_and_mariadb() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ctl = Controller::start(&t.join("controller"));
    let key = t.join("fleet-master.key");
    master_key(&ctl, &key);

    // 1. nginx serves the page; MariaDB holds poc_db.test_table with three rows.
    let mut vm = PocVm::start(t);
    assert!(vm.nginx.get("/").1.contains("<h1>DR PoC Web Page</h1>"));
    assert_eq!(vm.rows.lines().count(), 3, "{}", vm.rows);

    // 2. The agent backs up the nginx preset (web root + nginx configuration) and poc_db.
    let sources = vm.sources();
    let agent = Agent::enroll(&ctl, &t.join("agent"), "vm-01", None, &key, &sources);
    let web = agent.backup("web");
    assert!(web["files"].as_u64().unwrap() >= 2, "{web}");
    let dbb = agent.backup("db");
    assert_eq!(dbb["databases"][0]["name"], "poc_db", "{dbb}");
    assert_eq!(dbb["databases"][0]["rows"], 3, "{dbb}");

    // 3. Disaster: nginx stopped and its web root deleted; MariaDB stopped and poc_db's directory
    //    deleted from the data directory.
    vm.nginx.stop();
    fs::remove_dir_all(&vm.www).unwrap();
    vm.db.stop();
    fs::remove_dir_all(vm.db.dir.join("data/poc_db")).unwrap();

    // 4. MariaDB starts (without poc_db); both are restored as the operator would; nginx starts.
    vm.db.restart();
    assert!(!vm.db.sql("SHOW DATABASES").contains("poc_db"));
    let r = agent.restore("web", &["--in-place"]);
    assert_eq!(
        r["nginx"]["test_passed"], true,
        "nginx -t after restore: {r}"
    );
    let out = agent.run(&["restore", "--source", "db", "--json"]);
    assert!(out.status.success(), "restore db: {}", describe(&out));
    let r = parse_json(&out);
    assert_eq!(r["databases"][0]["into"], "poc_db", "{r}");
    assert_eq!(r["databases"][0]["rows"], 3, "{r}");
    vm.nginx.start_again();

    // 5. The page is served and the rows are identical (ids, names, created_at).
    let (code, body) = vm.nginx.get("/");
    assert_eq!(code, 200);
    assert!(body.contains("<h1>DR PoC Web Page</h1>"), "{body}");
    assert_eq!(
        vm.db.sql("SELECT * FROM poc_db.test_table ORDER BY id"),
        vm.rows
    );
}
