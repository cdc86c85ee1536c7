//! The user's disaster runbook, end to end, against a private MariaDB and a private nginx:
//! back up the nginx preset and `poc_db`, lose the web root and the database directory, restore
//! both with `lifeboat-agent restore`, and prove the page and the rows are back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use lifeboat_integration_tests::mariadb::MariaDb;
use lifeboat_integration_tests::nginx::Nginx;
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
    let www = t.join("www");
    fs::create_dir(&www).unwrap();
    fs::write(www.join("index.html"), "<h1>DR PoC Web Page</h1>\n").unwrap();
    let prefix = t.join("nginx");
    let mut ngx = Nginx::start(&prefix, &www);
    assert!(ngx.get("/").1.contains("<h1>DR PoC Web Page</h1>"));
    let mut db = MariaDb::start(&t.join("db"), false);
    db.sql(
        "CREATE DATABASE poc_db; USE poc_db; CREATE TABLE test_table (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50), created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP); \
         INSERT INTO test_table (name) VALUES ('Backup test 1'), ('Backup test 2'), ('Backup test 3');",
    );
    let rows_before = db.sql("SELECT * FROM poc_db.test_table ORDER BY id");
    assert_eq!(rows_before.lines().count(), 3, "{rows_before}");

    // 2. The agent backs up the nginx preset (web root + nginx configuration) and poc_db.
    let p = prefix.display();
    let sources = format!(
        r#"[[source]]
name = "web"
kind = "nginx"
paths = ["{www}", "{p}"]
exclude = ["{p}/logs", "{p}/tmp", "*.pid", "*.log"]
nginx_conf = "{p}/nginx.conf"
nginx_prefix = "{p}"

[[source]]
name = "db"
kind = "mysql"
databases = ["poc_db"]
socket = "{sock}"
user = "root"
"#,
        www = www.display(),
        sock = db.socket.display()
    );
    let agent = Agent::enroll(&ctl, &t.join("agent"), "vm-01", None, &key, &sources);
    let web = agent.backup("web");
    assert!(web["files"].as_u64().unwrap() >= 2, "{web}");
    let dbb = agent.backup("db");
    assert_eq!(dbb["databases"][0]["name"], "poc_db", "{dbb}");
    assert_eq!(dbb["databases"][0]["rows"], 3, "{dbb}");

    // 3. Disaster: nginx stopped and its web root deleted; MariaDB stopped and poc_db's directory
    //    deleted from the data directory.
    ngx.stop();
    fs::remove_dir_all(&www).unwrap();
    db.stop();
    fs::remove_dir_all(db.dir.join("data/poc_db")).unwrap();

    // 4. MariaDB starts (without poc_db); both are restored as the operator would; nginx starts.
    db.restart();
    assert!(!db.sql("SHOW DATABASES").contains("poc_db"));
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
    ngx.start_again();

    // 5. The page is served and the rows are identical (ids, names, created_at).
    let (code, body) = ngx.get("/");
    assert_eq!(code, 200);
    assert!(body.contains("<h1>DR PoC Web Page</h1>"), "{body}");
    assert_eq!(
        db.sql("SELECT * FROM poc_db.test_table ORDER BY id"),
        rows_before
    );
}
