//! A private nginx for tests: its own prefix, config and a free loopback port. nginx cannot
//! listen on port 0, so a free port is found first; `nginx` returns only after its master
//! process has bound the socket (it opens listeners before daemonising), which is the readiness
//! signal.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{describe, run};

pub struct Nginx {
    pub prefix: PathBuf,
    pub root: PathBuf,
    pub port: u16,
    running: bool,
}

impl Nginx {
    /// Writes a config serving `root` and starts nginx.
    pub fn start(prefix: &Path, root: &Path) -> Nginx {
        fs::create_dir_all(prefix.join("logs")).expect("mkdir");
        fs::create_dir_all(prefix.join("tmp")).expect("mkdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let p = prefix.display();
        let conf = format!(
            "user root;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp; fastcgi_temp_path {p}/tmp;\n  uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;\n  server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            root.display()
        );
        fs::write(prefix.join("nginx.conf"), conf).expect("write nginx.conf");
        let mut n = Nginx {
            prefix: prefix.to_owned(),
            root: root.to_owned(),
            port,
            running: false,
        };
        n.start_again();
        n
    }

    pub fn conf(&self) -> PathBuf {
        self.prefix.join("nginx.conf")
    }

    /// `nginx -t` then start; panics with nginx's output on failure.
    pub fn start_again(&mut self) {
        let out = run(Command::new("nginx")
            .arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(self.conf()));
        assert!(
            out.status.success(),
            "nginx failed to start: {}",
            describe(&out)
        );
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            let pid = fs::read_to_string(self.prefix.join("nginx.pid")).unwrap_or_default();
            let _ = run(Command::new("nginx")
                .arg("-p")
                .arg(&self.prefix)
                .arg("-c")
                .arg(self.conf())
                .args(["-s", "stop"]));
            // `-s stop` only signals the master; wait until it has exited and released the port.
            if !pid.trim().is_empty() {
                let _ = run(Command::new("timeout").args([
                    "30",
                    "tail",
                    "--pid",
                    pid.trim(),
                    "-f",
                    "/dev/null",
                ]));
            }
            self.running = false;
        }
    }

    /// A plain HTTP/1.0 GET of `path`; returns (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect nginx");
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
