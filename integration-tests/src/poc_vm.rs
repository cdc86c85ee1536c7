//! The user's proof-of-concept VM for the disaster tests: a private nginx and a private MariaDB
//! with the runbook's page and rows, and the agent sources that back them up.

use std::fs;
use std::path::{Path, PathBuf};

use crate::mariadb::MariaDb;
use crate::nginx::Nginx;

/// The user's proof-of-concept VM: nginx serving `<h1>DR PoC Web Page</h1>` from a web root, and
/// MariaDB holding `poc_db.test_table` with the rows 'Backup test 1..3'.
pub struct PocVm {
    pub www: PathBuf,
    pub prefix: PathBuf,
    pub nginx: Nginx,
    pub db: MariaDb,
    pub rows: String,
}

impl PocVm {
    /// Starts both in `t` (web root `t/www`, nginx prefix `t/nginx`, MariaDB in `t/db`).
    pub fn start(t: &Path) -> PocVm {
        let www = t.join("www");
        fs::create_dir(&www).unwrap();
        fs::write(www.join("index.html"), "<h1>DR PoC Web Page</h1>\n").unwrap();
        let prefix = t.join("nginx");
        let nginx = Nginx::start(&prefix, &www);
        let db = MariaDb::start(&t.join("db"), false);
        db.sql(
            "CREATE DATABASE poc_db; USE poc_db; CREATE TABLE test_table (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50), created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP); \
             INSERT INTO test_table (name) VALUES ('Backup test 1'), ('Backup test 2'), ('Backup test 3');",
        );
        let rows = db.sql("SELECT * FROM poc_db.test_table ORDER BY id");
        PocVm {
            www,
            prefix,
            nginx,
            db,
            rows,
        }
    }

    /// The agent's `[[source]]` tables: the nginx preset (`web`) and `poc_db` (`db`).
    pub fn sources(&self) -> String {
        let p = self.prefix.display();
        format!(
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
            www = self.www.display(),
            sock = self.db.socket.display()
        )
    }
}
