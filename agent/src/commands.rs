//! The subcommands, one file each: a thin layer that loads the config, connects, calls the
//! library, prints, and picks the exit code. Errors are turned into operator messages here
//! (and logged nowhere else).

pub mod backup;
pub mod cpu_check;
pub mod enroll;
pub mod init;
pub mod key;
pub mod ls;
pub mod renew;
pub mod restore;
pub mod run;
pub mod snapshots;

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_common::exit;
use lifeboat_common::keys::{DataKeys, MasterKey};

use crate::cache::{FileCache, SledCache};
use crate::client::GrpcRemote;
use crate::config::AgentConfig;
use crate::error::{AgentError, describe};

/// A command that failed: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl Failure {
    pub fn new(err: &AgentError, cfg: Option<&AgentConfig>) -> Self {
        let message = match cfg {
            Some(c) => describe(err, &c.controller.address, &c.path),
            None => err.to_string(),
        };
        Failure {
            message,
            code: err.exit_code(),
        }
    }
}

/// The result of a command: an exit code (0 or 3) or a failure.
pub type CmdResult = Result<i32, Failure>;

/// Loads the config named by `--config`.
pub fn load_config(path: Option<&Path>) -> Result<AgentConfig, Failure> {
    let path = path.ok_or_else(|| Failure {
        message: "--config FILE is required for this command (the agent.toml written by `lifeboat-agent init`)".into(),
        code: exit::USAGE,
    })?;
    AgentConfig::load(path).map_err(|e| Failure::new(&AgentError::Config(e), None))
}

/// Loads the master key and derives the data keys.
pub fn data_keys(cfg: &AgentConfig) -> Result<DataKeys, Failure> {
    MasterKey::load(&cfg.master_key)
        .map(|k| k.data_keys())
        .map_err(|e| Failure::new(&AgentError::Key(e), Some(cfg)))
}

/// Connects to the controller now (so an unreachable controller fails early, exit 4).
pub async fn connect(cfg: &AgentConfig) -> Result<GrpcRemote, Failure> {
    let endpoint = GrpcRemote::endpoint(&cfg.controller)
        .map_err(|e| Failure::new(&AgentError::ClientSetup(e), Some(cfg)))?;
    GrpcRemote::connect(endpoint, &cfg.controller)
        .await
        .map_err(|e| Failure::new(&AgentError::Remote(e), Some(cfg)))
}

/// Opens the file cache in `state_dir/cache`, creating `state_dir` (0700) if needed.
pub fn open_cache(cfg: &AgentConfig) -> Result<Arc<dyn FileCache>, Failure> {
    create_state_dir(cfg).map_err(|e| Failure::new(&e, Some(cfg)))?;
    Ok(Arc::from(SledCache::open(&cfg.state_dir.join("cache"))))
}

fn create_state_dir(cfg: &AgentConfig) -> Result<(), AgentError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.state_dir)
        .map_err(|e| AgentError::io("cannot create state directory", &cfg.state_dir, e))
}

/// Where a restore or `ls` keeps the manifest's entries ([`crate::scratch`]): `state_dir`,
/// created (0700) if needed; `None` (memory) if it cannot be, with a warning.
pub fn scratch_dir(cfg: &AgentConfig) -> Option<PathBuf> {
    match create_state_dir(cfg) {
        Ok(()) => Some(cfg.state_dir.clone()),
        Err(e) => {
            tracing::warn!(error = %e, "the manifest's entries are kept in memory instead");
            None
        }
    }
}

/// Prints one JSON line on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode JSON output: {e}"),
    }
}

/// Human-readable byte counts (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
