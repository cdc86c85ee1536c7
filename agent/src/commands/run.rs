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
use crate::control::Link;
use crate::control::exec::Executor;
use crate::daemon;
use crate::enroll::renew::{needs_renewal, renew, validity};
use crate::error::AgentError;

/// How often the daemon checks whether its certificate is due for renewal.
pub const RENEW_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

fn renewal_due(cfg: &crate::config::AgentConfig) -> bool {
    match validity(&cfg.controller.cert) {
        Ok((nb, na)) => needs_renewal(nb, na, lifeboat_common::clock::now_unix_ms()),
        Err(e) => {
            warn!(error = %e, "cannot read the agent certificate to check its expiry");
            false
        }
    }
}

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
    let (tx, mut shutdown) = watch::channel(false);
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
    info!(sources = cfg.sources.len(), controller = %cfg.controller.address, "agent daemon started");
    // The control stream runs beside the scheduler for the daemon's whole life; it redials on
    // its own (and picks up a renewed certificate, since it reloads the PEM files each time).
    let link = Arc::new(Link::default());
    let exec = Arc::new(Executor {
        cfg: cfg.clone(),
        keys: keys.clone(),
        cache: cache.clone(),
        link: link.clone(),
    });
    let control = tokio::spawn(crate::control::run(
        cfg.clone(),
        exec,
        link.clone(),
        shutdown.clone(),
    ));
    // Each round runs with the certificate on disk; a due renewal ends the round (after the
    // backup in progress), renews, and starts a new one with the new certificate.
    let mut just_renewed = false;
    loop {
        let endpoint = GrpcRemote::endpoint(&cfg.controller)
            .map_err(|e| Failure::new(&AgentError::ClientSetup(e), Some(&cfg)))?;
        // Lazy: the daemon keeps trying while the controller is down.
        let remote = GrpcRemote::from_channel(endpoint.connect_lazy());
        // At most one renewal per round: a clock or lifetime that keeps the certificate "due"
        // must not turn into a renewal loop (the hourly check retries).
        if !just_renewed && renewal_due(&cfg) {
            match renew(&cfg.controller, &remote).await {
                Ok(_) => {
                    just_renewed = true;
                    continue;
                }
                Err(e) => warn!(error = %e, "certificate renewal failed; retrying later"),
            }
        }
        just_renewed = false;
        let (round_tx, round_rx) = watch::channel(false);
        let mut stop = shutdown.clone();
        let cfg2 = cfg.clone();
        let watcher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW_CHECK);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => if renewal_due(&cfg2) { break },
                }
            }
            let _ = round_tx.send(true);
        });
        let ctx = BackupContext {
            remote: &remote,
            keys: keys.clone(),
            zstd_level: cfg.zstd_level,
            cache: cache.clone(),
            opener: Arc::new(FsOpener),
            bandwidth: link.bandwidth(),
            progress: crate::backup::no_progress(),
            scratch_dir: cfg.state_dir.clone(),
        };
        daemon::run(&ctx, &cfg.sources, &link, round_rx).await;
        watcher.abort();
        if *shutdown.borrow_and_update() {
            break;
        }
    }
    if let Err(e) = control.await {
        warn!(error = %e, "control stream task ended abnormally");
    }
    info!("agent daemon stopped");
    Ok(exit::SUCCESS)
}
