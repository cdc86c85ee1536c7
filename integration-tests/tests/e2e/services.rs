//! The private test services themselves work: a MariaDB that signals readiness and answers SQL,
//! and an nginx that serves a web root on a free loopback port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_integration_tests::mariadb::MariaDb;
use lifeboat_integration_tests::nginx::Nginx;

#[test]
fn private_mariadb_and_nginx() {
    let tmp = tempfile::tempdir().unwrap();
    let mut db = MariaDb::start(&tmp.path().join("db"), true);
    db.sql(
        "CREATE DATABASE t; CREATE TABLE t.x (id INT PRIMARY KEY); INSERT INTO t.x VALUES (1),(2)",
    );
    assert_eq!(db.sql("SELECT COUNT(*) FROM t.x").trim(), "2");
    assert_eq!(db.sql("SELECT @@log_bin").trim(), "1");
    db.stop();
    db.restart();
    assert_eq!(db.sql("SELECT SUM(id) FROM t.x").trim(), "3");

    let www = tmp.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "<h1>DR PoC Web Page</h1>\n").unwrap();
    let mut ngx = Nginx::start(&tmp.path().join("ngx"), &www);
    let (code, body) = ngx.get("/");
    assert_eq!(code, 200);
    assert!(body.contains("DR PoC Web Page"));
    ngx.stop();
    ngx.start_again();
    assert_eq!(ngx.get("/").0, 200);
}
