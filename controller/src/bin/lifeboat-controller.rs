//! `lifeboat-controller`: `init` a controller directory, `serve` it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lifeboat_controller::config::{ControllerConfig, DEFAULT_LISTEN, ENV_LISTEN};
use lifeboat_controller::{init, server};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "lifeboat-controller",
    version,
    about = "Lifeboat controller: receives encrypted backups from agents over mTLS gRPC.",
    after_help = lifeboat_common::exit::HELP_TABLE
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a controller directory: CA, certificates, catalog, objects/, configs.
    #[command(
        after_help = "Example:\n  lifeboat-controller init --dir /var/lib/lifeboat --san backup.example.com"
    )]
    Init {
        /// The directory to create (refuses one that is already initialized).
        #[arg(long)]
        dir: PathBuf,
        /// The address to serve on (written to controller.toml).
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: String,
        /// Extra name or IP address for the server certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Serve agents and lifeboatctl. Prints `LISTENING <addr>` once ready.
    Serve {
        /// controller.toml
        #[arg(long)]
        config: PathBuf,
        /// Listen address (overrides LIFEBOAT_LISTEN and the config file).
        #[arg(long)]
        listen: Option<String>,
        /// Prometheus /metrics listen address (plain HTTP; overrides metrics_listen).
        /// Printed as `METRICS <addr>` before `LISTENING <addr>`.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
}

fn main() -> ExitCode {
    lifeboat_common::tls::install_crypto_provider();
    lifeboat_common::telemetry::init("info", false);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { dir, listen, sans } => run_init(&dir, &listen, &sans),
        Command::Serve {
            config,
            listen,
            metrics_listen,
        } => run_serve(&config, listen, metrics_listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(lifeboat_common::exit::ERROR as u8)
        }
    }
}

fn run_init(dir: &std::path::Path, listen: &str, sans: &[String]) -> anyhow::Result<()> {
    let r = init::init(dir, listen, sans)?;
    let d = r.dir.display();
    println!("Initialized a Lifeboat controller in {d}");
    println!("  admin certificate sha256: {}", r.admin_fingerprint);
    println!();
    println!("Next steps:");
    println!("  1. Start the controller:   lifeboat-controller serve --config {d}/controller.toml");
    println!(
        "  2. Create the fleet key:   lifeboatctl key init --out master.key   (keep a copy offline!)"
    );
    println!("  3. On each VM:             lifeboat-agent init --name NAME --dir /etc/lifeboat");
    println!(
        "  4. Enroll it:              lifeboatctl --config {d}/lifeboatctl.toml agent add NAME --csr agent.csr --out DIR"
    );
    println!("  Keep {d}/ca.key and {d}/admin.key secret; back up the whole directory.");
    Ok(())
}

fn run_serve(
    config: &std::path::Path,
    listen_flag: Option<String>,
    metrics_flag: Option<String>,
) -> anyhow::Result<()> {
    let cfg = ControllerConfig::load(config)?;
    let metrics_listen = metrics_flag.unwrap_or_else(|| cfg.metrics_listen.clone());
    let listen = listen_flag
        .or_else(|| std::env::var(ENV_LISTEN).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| cfg.listen.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let mut prepared = server::prepare(&cfg)?;
        prepared.probe_store(&cfg).await?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr().context("listener address")?;
        let metrics = tokio::net::TcpListener::bind(&metrics_listen)
            .await
            .with_context(|| format!("cannot listen on {metrics_listen} for /metrics (metrics_listen, --metrics-listen)"))?;
        let metrics_addr = metrics.local_addr().context("metrics listener address")?;
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        tokio::spawn(prepared.metrics().serve(metrics, shutdown.clone()));
        tracing::info!(addr = %addr, "controller serving");
        let mut out = std::io::stdout().lock();
        writeln!(out, "METRICS {metrics_addr}").context("stdout")?;
        writeln!(out, "LISTENING {addr}").context("stdout")?;
        out.flush().context("stdout")?;
        drop(out);
        prepared.run(listener, shutdown).await?;
        Ok(())
    })
}

async fn watch_signals(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
    token.cancel();
}
