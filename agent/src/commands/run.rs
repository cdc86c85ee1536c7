//! `lifeboat-agent run`: the daemon.

use std::sync::Arc;

use lifeboat_common::exit;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{CmdResult, Failure, data_keys, load_config, open_cache};
use crate::backup::BackupContext;
use crate::backup::read::FsOpener;
use crate::cli::Cli;
use crate::client::GrpcRemote;
use crate::daemon;
use crate::error::AgentError;

pub async fn run(cli: &Cli) -> CmdResult {
    let cfg = load_config(cli.config.as_deref())?;
    if cfg.sources.is_empty() {
        return Err(Failure {
            message: format!("no [[source]] is configured in {}", cfg.path.display()),
            code: exit::ERROR,
        });
    }
    let keys = data_keys(&cfg)?;
    let cache = open_cache(&cfg)?;
    let endpoint = GrpcRemote::endpoint(&cfg.controller)
        .map_err(|e| Failure::new(&AgentError::ClientSetup(e), Some(&cfg)))?;
    // Lazy: the daemon keeps trying while the controller is down.
    let remote = GrpcRemote::from_channel(endpoint.connect_lazy());
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure {
        message: format!("cannot listen for SIGTERM: {e}"),
        code: exit::ERROR,
    })?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; stopping"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received; stopping"),
        }
        if tx.send(true).is_err() {
            warn!("daemon loop already gone at shutdown");
        }
    });
    let ctx = BackupContext {
        remote: &remote,
        keys,
        zstd_level: cfg.zstd_level,
        cache,
        opener: Arc::new(FsOpener),
    };
    info!(sources = cfg.sources.len(), controller = %cfg.controller.address, "agent daemon started");
    daemon::run(&ctx, &cfg.sources, rx).await;
    info!("agent daemon stopped");
    Ok(exit::SUCCESS)
}
