//! Two regions for end-to-end tests: a controller directory with a `[secondary]` store (a local
//! directory or an in-process S3 server), and waiting for replication to catch up — answered by
//! the controller itself (`replication status --wait`), never by polling with sleeps.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{Controller, bin, describe, parse_json, run};
use crate::s3::S3Server;

/// How long replication may take to catch up on loopback before a test fails.
pub const CATCH_UP: Duration = Duration::from_secs(120);

/// `lifeboat-controller init --dir DIR` (the directory must not exist).
pub fn init(dir: &Path) {
    let out = run(Command::new(bin("lifeboat-controller"))
        .args(["init", "--dir"])
        .arg(dir));
    assert!(out.status.success(), "init: {}", describe(&out));
}

/// Appends `table` (TOML) to `dir/controller.toml`.
pub fn append_config(dir: &Path, table: &str) {
    let cfg = dir.join("controller.toml");
    let mut text = fs::read_to_string(&cfg).unwrap();
    text.push('\n');
    text.push_str(table);
    fs::write(&cfg, text).unwrap();
}

/// A local-directory `[secondary]` at `path`.
pub fn local_secondary(dir: &Path, path: &Path) {
    append_config(
        dir,
        &format!(
            "[secondary]\nkind = \"local\"\npath = {:?}\n",
            path.to_str().unwrap()
        ),
    );
}

/// An S3 `[secondary]` on `server` under `prefix` (credentials in `dir/s3.credentials`).
pub fn s3_secondary(dir: &Path, server: &S3Server, prefix: &str) {
    append_config(
        dir,
        &server
            .store_toml(prefix, "auto")
            .replace("[store]", "[secondary]"),
    );
    server.write_credentials(&dir.join("s3.credentials"));
}

/// Writes `text` to `path` and returns the path (passphrase and token files).
pub fn write(path: &Path, text: &str) -> PathBuf {
    fs::write(path, text).unwrap();
    path.to_owned()
}

impl Controller {
    /// `replication status --wait CONDITION` (`caught-up` or `error`): the controller answers
    /// once it holds, re-checked after every copy attempt; fails the test after [`CATCH_UP`].
    pub fn wait_replication(&self, condition: &str) -> serde_json::Value {
        let timeout = format!("{}s", CATCH_UP.as_secs());
        let out = self.ctl(&[
            "replication",
            "status",
            "--json",
            "--wait",
            condition,
            "--timeout",
            &timeout,
        ]);
        assert!(
            out.status.success(),
            "replication never reached {condition}: {}\n{}",
            describe(&out),
            self.log()
        );
        parse_json(&out)
    }

    /// Waits until nothing is pending.
    pub fn wait_caught_up(&self) -> serde_json::Value {
        let s = self.wait_replication("caught-up");
        assert_eq!(s["pending_objects"], 0, "{s}");
        s
    }
}
