//! `lifeboat-controller`: `init` a controller directory, `serve` it; after losing the host,
//! `recover-ca`, `rebuild-catalog` from the bucket and `issue-certs`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lifeboat_controller::config::{ControllerConfig, DEFAULT_LISTEN, ENV_LISTEN};
use lifeboat_controller::{init, rebuild, server};
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
    /// Recover the CA (ca.pem, ca.key) of a lost controller from its escrow in the object store.
    /// The only controller-side command that ever handles the escrow passphrase.
    #[command(
        after_help = "Example (new controller directory, primary region lost):\n  lifeboat-controller recover-ca --config /var/lib/lifeboat/controller.toml --region secondary"
    )]
    RecoverCa {
        /// controller.toml (its [store]/[secondary] and tls ca_cert/ca_key paths are used).
        #[arg(long)]
        config: PathBuf,
        /// Read the passphrase from the first line of FILE instead of the terminal.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Which object store to read the escrow from.
        #[arg(long, value_enum, default_value = "primary")]
        region: lifeboat_controller::recover_ca::Region,
    },
    /// Issue what a rebuilt controller lacks around a recovered CA: the server certificate
    /// (when missing) and, with --admin-out, a new admin certificate recorded in the catalog.
    #[command(
        after_help = "Example (controller host lost; after recover-ca and rebuild-catalog):\n  lifeboat-controller issue-certs --config /var/lib/lifeboat/controller.toml --san backup.example.com --admin-out /root/lifeboat-admin"
    )]
    IssueCerts {
        /// controller.toml (its tls paths and catalog are used).
        #[arg(long)]
        config: PathBuf,
        /// Extra name or IP address for a new server certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Write a new admin certificate, key, CA copy and lifeboatctl.toml into DIR.
        #[arg(long, value_name = "DIR")]
        admin_out: Option<PathBuf>,
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
    /// Recreate the catalog from the bucket alone (stop the controller first).
    #[command(
        after_help = "Example:\n  lifeboat-controller rebuild-catalog --config /var/lib/lifeboat/controller.toml --region secondary"
    )]
    RebuildCatalog {
        /// controller.toml (names the catalog path and the stores)
        #[arg(long)]
        config: PathBuf,
        /// Which store to rebuild from.
        #[arg(long, value_enum, default_value = "primary")]
        region: RegionArg,
        /// Move an existing catalog aside (kept as <catalog>.replaced-<time>) instead of refusing.
        #[arg(long)]
        force: bool,
        /// Print the report as JSON on stdout (the summary still goes to stderr).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RegionArg {
    Primary,
    Secondary,
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
        Command::RecoverCa {
            config,
            passphrase_file,
            region,
        } => run_recover_ca(&config, passphrase_file.as_deref(), region),
        Command::RebuildCatalog {
            config,
            region,
            force,
            json,
        } => run_rebuild(&config, region, force, json),
        Command::IssueCerts {
            config,
            sans,
            admin_out,
        } => run_issue_certs(&config, &sans, admin_out.as_deref()),
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
        "  2. Create the fleet key:   lifeboatctl key init --out master.key   (escrowed under a passphrase; keep a paper copy offline: key export --paper)"
    );
    println!("  3. On each VM:             lifeboat-agent init --name NAME --dir /etc/lifeboat");
    println!(
        "  4. Enroll it:              lifeboatctl --config {d}/lifeboatctl.toml agent add NAME --csr agent.csr --out DIR"
    );
    println!("  Keep {d}/ca.key and {d}/admin.key secret; back up the whole directory.");
    Ok(())
}

fn run_issue_certs(
    config: &std::path::Path,
    sans: &[String],
    admin_out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let cfg = ControllerConfig::load(config)?;
    let r = lifeboat_controller::issue_certs::issue(&cfg, sans, admin_out)?;
    match r.server {
        Some(p) => println!("issued a new server certificate: {}", p.display()),
        None => println!(
            "kept the existing server certificate: {}",
            cfg.cert.display()
        ),
    }
    if let (Some(dir), Some(fp)) = (r.admin_dir, r.admin_fingerprint) {
        println!(
            "issued a new admin certificate in {} (sha256 {fp}); use: lifeboatctl --config {}/lifeboatctl.toml",
            dir.display(),
            dir.display()
        );
    }
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
        lifeboat_controller::registry::backfill::run(prepared.state())
            .await
            .context("start-up backfill of the replication queue")?;
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

fn run_recover_ca(
    config: &std::path::Path,
    passphrase_file: Option<&std::path::Path>,
    region: lifeboat_controller::recover_ca::Region,
) -> anyhow::Result<()> {
    use lifeboat_common::escrow::passphrase;
    let cfg = ControllerConfig::load(config)?;
    let source = match passphrase_file {
        Some(f) => passphrase::Source::File(f),
        None => passphrase::Source::Terminal {
            prompt: "Escrow passphrase: ",
            confirm: false,
        },
    };
    let pass = passphrase::read(source)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let r = rt.block_on(lifeboat_controller::recover_ca::recover_ca(
        &cfg, region, pass,
    ))?;
    let what = if r.wrote {
        "recovered"
    } else {
        "already in place, identical:"
    };
    println!(
        "CA {what} {} and {} from escrow {}",
        cfg.ca_cert.display(),
        cfg.ca_key.display(),
        r.object_key
    );
    println!("CA sha256 fingerprint: {}", r.fingerprint);
    Ok(())
}

fn run_rebuild(
    config: &std::path::Path,
    region: RegionArg,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = ControllerConfig::load(config)?;
    let opts = rebuild::Options {
        region: match region {
            RegionArg::Primary => rebuild::Region::Primary,
            RegionArg::Secondary => rebuild::Region::Secondary,
        },
        force,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(rebuild::run(&cfg, &opts))?;
    eprintln!("{}", rebuild::summary(&report));
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &report).context("stdout")?;
        writeln!(out).context("stdout")?;
    }
    Ok(())
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
