//! Real processes: a controller (init + serve), `lifeboatctl`, and enrolled agents.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::logwatch::LogWatch;

/// Path of a lifeboat binary built by cargo.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("LIFEBOAT_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first (`cargo build --workspace --all-targets`, which scripts/test does) or set LIFEBOAT_BIN_DIR",
        p.display()
    );
    p
}

/// Runs a command to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Formats a command's output for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running `lifeboat-controller serve`, with its directory from `init`.
pub struct Controller {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    /// The `/metrics` listener (`METRICS <addr>`, printed before `LISTENING`).
    pub metrics: Option<SocketAddr>,
    child: Option<Child>,
    /// This run's log lines when started `_watched`.
    watch: Option<LogWatch>,
}

impl Controller {
    /// Inits a controller in `dir` (which must not exist yet) and starts it.
    pub fn start(dir: &Path) -> Controller {
        Self::init(dir);
        Self::serve(dir)
    }

    /// `lifeboat-controller init --dir DIR`, asserting success.
    fn init(dir: &Path) {
        let out = run(Command::new(bin("lifeboat-controller"))
            .arg("init")
            .arg("--dir")
            .arg(dir));
        assert!(
            out.status.success(),
            "controller init failed: {}",
            describe(&out)
        );
    }

    /// Starts `serve` on an existing controller directory.
    pub fn serve(dir: &Path) -> Controller {
        Self::serve_with_env(dir, &[])
    }

    /// Starts `serve` with extra environment variables (e.g. `LIFEBOAT_FAILPOINTS`).
    pub fn serve_with_env(dir: &Path, env: &[(&str, &str)]) -> Controller {
        Self::serve_on(dir, "127.0.0.1:0", env)
    }

    /// Starts `serve` listening on `listen` (a restart on the address agents already know).
    pub fn serve_on(dir: &Path, listen: &str, env: &[(&str, &str)]) -> Controller {
        Self::spawn(dir, listen, env, false)
    }

    /// [`Controller::start`], with its log lines watched ([`Controller::wait_logged`]).
    pub fn start_watched(dir: &Path) -> Controller {
        Self::init(dir);
        Self::spawn(dir, "127.0.0.1:0", &[], true)
    }

    /// [`Controller::serve_on`], with its log lines watched ([`Controller::wait_logged`]).
    pub fn serve_on_watched(dir: &Path, listen: &str) -> Controller {
        Self::spawn(dir, listen, &[], true)
    }

    /// `watched`: stderr goes through a [`LogWatch`] (a copying thread) instead of straight
    /// to `controller.log`. Only tests that wait on log lines opt in: the file then lags the
    /// process by the copy, so `log()` right after an RPC might miss a line just written.
    fn spawn(dir: &Path, listen: &str, env: &[(&str, &str)], watched: bool) -> Controller {
        let log_path = dir.join("controller.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open controller log");
        let mut child = Command::new(bin("lifeboat-controller"))
            .arg("serve")
            .arg("--config")
            .arg(dir.join("controller.toml"))
            .arg("--listen")
            .arg(listen)
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if watched {
                Stdio::piped()
            } else {
                Stdio::from(log)
            })
            .spawn()
            .expect("spawn controller");
        let watch = child
            .stderr
            .take()
            .map(|stderr| LogWatch::follow(stderr, &log_path));
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read controller stdout");
        let mut metrics = None;
        if let Some(m) = line.trim().strip_prefix("METRICS ") {
            metrics = Some(m.parse().expect("metrics address"));
            line.clear();
            reader.read_line(&mut line).expect("read controller stdout");
        }
        let addr = line
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| {
                panic!(
                    "controller did not report LISTENING (got {line:?}); log:\n{}",
                    fs::read_to_string(dir.join("controller.log")).unwrap_or_default()
                )
            })
            .parse()
            .expect("listen address");
        Controller {
            dir: dir.to_owned(),
            addr,
            metrics,
            child: Some(child),
            watch,
        }
    }

    /// GET /metrics (the `METRICS <addr>` listener): the exposition text.
    pub fn scrape_metrics(&self) -> String {
        use std::io::{Read, Write};
        let addr = self
            .metrics
            .expect("the controller printed no METRICS line");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Runs `lifeboatctl` with the admin config of this controller.
    pub fn ctl(&self, args: &[&str]) -> Output {
        run(Command::new(bin("lifeboatctl"))
            .arg("--config")
            .arg(self.dir.join("lifeboatctl.toml"))
            .arg("--address")
            .arg(self.url())
            .args(args))
    }

    /// Runs `lifeboatctl` and parses its JSON stdout, asserting success.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "lifeboatctl {args:?}: {}",
            describe(&out)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("lifeboatctl {args:?} JSON: {e}: {}", describe(&out)))
    }

    /// Waits until `count` lines of this run's log contain every one of `parts` (a controller
    /// started `_watched`); returns them. 60 s bound.
    pub fn wait_logged(&self, what: &str, count: usize, parts: &[&str]) -> Vec<String> {
        self.wait_logged_within(what, count, parts, std::time::Duration::from_secs(60))
    }

    /// [`Controller::wait_logged`] with another bound.
    pub fn wait_logged_within(
        &self,
        what: &str,
        count: usize,
        parts: &[&str],
        timeout: std::time::Duration,
    ) -> Vec<String> {
        self.watch
            .as_ref()
            .expect("wait_logged needs a controller started with start_watched/serve_on_watched")
            .wait_for(what, count, timeout, |l| {
                parts.iter().all(|p| l.contains(p))
            })
    }

    /// Everything the controller logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().ok().and_then(|s| s.code())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to end by itself (e.g. a failpoint abort); returns its status.
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        child.wait().ok()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An enrolled agent: its directory, key, certificate and config.
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
}

impl Agent {
    /// `lifeboat-agent init`, `lifeboatctl agent add`, copies the master key, and writes a config
    /// with the given `[[source]]` tables.
    pub fn enroll(
        ctl: &Controller,
        dir: &Path,
        name: &str,
        group: Option<&str>,
        master_key: &Path,
        sources: &str,
    ) -> Agent {
        let out = run(Command::new(bin("lifeboat-agent"))
            .args(["init", "--name", name, "--dir"])
            .arg(dir)
            .args(["--controller", &ctl.url()]));
        assert!(out.status.success(), "agent init: {}", describe(&out));
        let csr = dir.join("agent.csr");
        let mut args = vec![
            "agent",
            "add",
            name,
            "--csr",
            csr.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ];
        if let Some(g) = group {
            args.extend(["--group", g]);
        }
        let out = ctl.ctl(&args);
        assert!(out.status.success(), "agent add: {}", describe(&out));
        fs::copy(master_key, dir.join("master.key")).expect("copy master key");
        let agent = Agent {
            name: name.to_owned(),
            dir: dir.to_owned(),
        };
        agent.write_config(&ctl.url(), sources);
        agent
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    pub fn write_config(&self, address: &str, sources: &str) {
        let text = format!(
            "state_dir = \"state\"\nmaster_key = \"master.key\"\n\n[controller]\naddress = \"{address}\"\nca = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n\n{sources}\n"
        );
        fs::write(self.config(), text).expect("write agent config");
    }

    /// Runs `lifeboat-agent --config <cfg> <args>`.
    pub fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("lifeboat-agent"));
        c.arg("--config")
            .arg(self.config())
            .args(args)
            .env("RUST_LOG", "info");
        c
    }

    /// Runs a backup of one source with `--json`, asserting success, and returns its summary.
    pub fn backup(&self, source: &str) -> serde_json::Value {
        let out = self.run(&["backup", "--source", source, "--json"]);
        assert!(out.status.success(), "backup {source}: {}", describe(&out));
        parse_json(&out)
    }

    /// Runs `restore` with `--json` and the given extra args, asserting success.
    pub fn restore(&self, source: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["restore", "--source", source, "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "restore {extra:?}: {}",
            describe(&out)
        );
        parse_json(&out)
    }
}

/// Parses the last JSON object printed on stdout (one per line, or one pretty object).
/// The value of one series (`name{labels}`) in a /metrics text; panics when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing in {text}"))
        .trim()
        .parse()
        .unwrap()
}

pub fn parse_json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    if let Ok(v) = serde_json::from_str(&text) {
        return v;
    }
    let last = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON in output ({e}): {}", describe(out)))
}

/// Creates a fleet master key with `lifeboatctl key init --no-escrow` (it never reaches the
/// controller; tests of the escrow itself are in `tests/escrow.rs`).
pub fn master_key(ctl: &Controller, path: &Path) {
    let out = ctl.ctl(&[
        "key",
        "init",
        "--no-escrow",
        "--out",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "key init: {}", describe(&out));
}
