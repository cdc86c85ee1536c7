//! A private MariaDB server for tests: its own data directory and socket in a temporary
//! directory, no networking, never the host's service. Readiness is signalled by the server
//! itself (systemd's notify protocol: mariadbd sends `READY=1` to `$NOTIFY_SOCKET`), not slept for.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{describe, run};

pub struct MariaDb {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    log_bin: bool,
}

impl MariaDb {
    /// Creates a data directory under `dir` and starts the server. `log_bin` turns binary logging on
    /// (needed for binlog coordinates in dumps).
    pub fn start(dir: &Path, log_bin: bool) -> MariaDb {
        // A temporary directory of its own: the bootstrap's temporary tables in a shared /tmp
        // once collided with another test's ("Could not remove temporary table", install failed).
        fs::create_dir_all(dir.join("tmp")).expect("mkdir");
        let out = run(Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ]));
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            describe(&out)
        );
        let mut db = MariaDb {
            dir: dir.to_owned(),
            socket: dir.join("mysql.sock"),
            child: None,
            log_bin,
        };
        db.restart();
        db
    }

    /// Starts (again) the server on the existing data directory and waits for READY=1.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let notify = self.dir.join("notify.sock");
        let _ = fs::remove_file(&notify);
        let listener = UnixDatagram::bind(&notify).expect("bind notify socket");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mariadb.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.dir.join("err.log").display()
            ))
            .args([
                "--skip-networking",
                "--user=root",
                "--innodb-buffer-pool-size=64M",
                "--event-scheduler=OFF",
            ])
            .env("NOTIFY_SOCKET", &notify)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.log_bin {
            cmd.arg(format!("--log-bin={}", self.dir.join("binlog").display()))
                .arg("--server-id=1");
        }
        let mut child = cmd
            .spawn()
            .expect("spawn mariadbd (apt-get install mariadb-server)");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "mariadbd exited with {status} before it was ready:\n{}",
                    self.error_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd not ready after 120 s:\n{}",
                self.error_log()
            );
            if let Ok(n) = listener.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
            {
                break;
            }
        }
        self.child = Some(child);
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("err.log")).unwrap_or_default()
    }

    /// Runs SQL through the `mariadb` client (socket auth as root); returns tab-separated rows.
    pub fn sql(&self, query: &str) -> String {
        let out = run(self.client().args(["-N", "-B", "-e", query]));
        assert!(
            out.status.success(),
            "SQL {query:?} failed: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `mariadb` client command connected to this server.
    pub fn client(&self) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .arg("--user=root");
        c
    }

    /// SIGTERM and wait (a clean shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}
