//! The `lifeboat-agent` command line (clap derive). The subcommands and flags are a contract
//! used by operators, scripts and the end-to-end tests: change them only compatibly.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "Examples:
  lifeboat-agent init --name web-01 --dir /etc/lifeboat --controller https://dr.example.com:7443
  lifeboat-agent enroll --token-file /run/lifeboat.token --dir /etc/lifeboat --name web-01
  lifeboat-agent --config /etc/lifeboat/agent.toml renew
  lifeboat-agent --config /etc/lifeboat/agent.toml key recover
  lifeboat-agent --config /etc/lifeboat/agent.toml backup
  lifeboat-agent --config /etc/lifeboat/agent.toml backup --source web --json
  lifeboat-agent --config /etc/lifeboat/agent.toml run
  lifeboat-agent --config /etc/lifeboat/agent.toml snapshots --source web
  lifeboat-agent --config /etc/lifeboat/agent.toml ls --source web /var/www/html
  lifeboat-agent --config /etc/lifeboat/agent.toml restore --source web --to /srv/restore
  lifeboat-agent --config /etc/lifeboat/agent.toml restore --source web --in-place --delete
  lifeboat-agent --config /etc/lifeboat/agent.toml restore --source nginx --in-place --reload
  lifeboat-agent --config /etc/lifeboat/agent.toml restore --source db
  lifeboat-agent --config /etc/lifeboat/agent.toml restore --source db --database shop --as shop_check
  lifeboat-agent --config /etc/lifeboat/agent.toml restore --source db --database shop --drop-existing --users
  lifeboat-agent --config /etc/lifeboat/agent.toml restore --from-agent old-vm --source db
  lifeboat-agent cpu-check --path /var/www";

fn after_help() -> String {
    format!("{EXAMPLES}\n\n{}", lifeboat_common::exit::HELP_TABLE)
}

/// Lifeboat agent: backs up this VM's files to the Lifeboat controller and restores them.
#[derive(Debug, Parser)]
#[command(name = "lifeboat-agent", version, about, after_help = after_help())]
pub struct Cli {
    /// The agent's config file (agent.toml).
    #[arg(
        long,
        global = true,
        env = "LIFEBOAT_AGENT_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Log as JSON lines on stderr.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this agent's key pair, CSR and a commented agent.toml in DIR.
    Init(InitArgs),
    /// Back up each source (or one) now.
    Backup(BackupArgs),
    /// Run as a daemon: back up each source every `interval` until SIGTERM/SIGINT.
    Run,
    /// List this agent's snapshots.
    Snapshots(SnapshotsArgs),
    /// List the entries of a snapshot.
    Ls(LsArgs),
    /// Restore a snapshot to a directory or in place.
    Restore(RestoreArgs),
    /// Join a controller with a join token: key made here, certificate written to DIR.
    Enroll(EnrollArgs),
    /// Renew this agent's certificate now (the daemon also renews by itself).
    Renew,
    /// The fleet master key: recover it from the controller's escrow with the passphrase.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Measure this machine's CPU ceiling for backups: chunk, hash, compress and encrypt the
    /// files under --path on one core (nothing sent, nothing written) and print MB/s per core
    /// and for all cores. No config needed.
    CpuCheck(crate::commands::cpu_check::CpuCheckArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Fetch the escrowed master key over this agent's mTLS identity, unwrap it with the
    /// passphrase (from the terminal, or --passphrase-file) and write `master_key` (0600).
    Recover(KeyRecoverArgs),
}

#[derive(Debug, Args)]
pub struct KeyRecoverArgs {
    /// Read the passphrase from the first line of FILE instead of the terminal. Never pass a
    /// passphrase on the command line.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// File holding the join token ('-': stdin). Without it, LIFEBOAT_JOIN_TOKEN is read.
    /// The token is never accepted as a command-line argument (it would show in `ps`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Directory for agent.key, agent.pem, ca.pem and agent.toml (created with mode 0700).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The agent's name; may be omitted when the token names the agent.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The agent's name (its id in the fleet): 1-64 of a-z, 0-9, '.', '_', '-'.
    #[arg(long)]
    pub name: String,
    /// Directory for agent.key, agent.csr and agent.toml (created with mode 0700).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The controller's address, e.g. https://dr.example.com:7443.
    #[arg(long, value_name = "URL")]
    pub controller: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Back up only this source.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Limit uploads to this rate, e.g. 10MiB/s or 500KB/s (under `run`, the controller's
    /// policy sets it per source).
    #[arg(long, value_name = "RATE", value_parser = lifeboat_common::rate::parse_bytes_per_sec)]
    pub bandwidth: Option<u64>,
    /// Print one JSON object per source on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only this source's snapshots.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Print one JSON object per snapshot on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[arg(long, value_name = "NAME")]
    pub source: String,
    /// A snapshot id, a unique prefix of one, or "latest".
    #[arg(long, value_name = "ID", default_value = "latest")]
    pub snapshot: String,
    /// Only this original absolute path and below.
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Print one JSON object per entry on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("where").args(["to", "in_place"])))]
pub struct RestoreArgs {
    #[arg(long, value_name = "NAME")]
    pub source: String,
    /// A snapshot id, a unique prefix of one, or "latest".
    #[arg(long, value_name = "ID", default_value = "latest")]
    pub snapshot: String,
    /// Restore each root /a/b to DIR/a/b.
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Restore to the original paths.
    #[arg(long)]
    pub in_place: bool,
    /// Only this original absolute path and below.
    #[arg(long, value_name = "SUBPATH")]
    pub path: Option<PathBuf>,
    /// Remove entries under each restored root (or --path) that are not in the snapshot,
    /// except paths matching the source's excludes.
    #[arg(long)]
    pub delete: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Databases: restore only this database of the snapshot.
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// Databases: load into this new database name (with --database when the snapshot has several).
    #[arg(long = "as", value_name = "NEW_NAME")]
    pub as_name: Option<String>,
    /// Databases: replace an existing database (only after the restored copy is verified).
    #[arg(long)]
    pub drop_existing: bool,
    /// Databases: also restore users and grants (unknown users are reported, never removed).
    #[arg(long)]
    pub users: bool,
    /// Databases: restore only users and grants, no database.
    #[arg(long, conflicts_with_all = ["database", "as_name", "drop_existing"])]
    pub users_only: bool,
    /// Read the snapshots of another agent (a lost VM); needs `lifeboatctl agent allow-restore`.
    #[arg(long, value_name = "AGENT")]
    pub from_agent: Option<String>,
    /// nginx: reload nginx after an in-place restore if `nginx -t` passed.
    #[arg(long)]
    pub reload: bool,
    /// Which region's object store serves the chunks: any (the primary, falling back to the
    /// secondary for chunks the primary fails), primary (no fallback), secondary (only the
    /// secondary: a drill of losing the primary region).
    #[arg(long, value_enum, default_value = "any")]
    pub region: RegionArg,
}

/// `restore --region`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegionArg {
    Any,
    Primary,
    Secondary,
}

impl RegionArg {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionArg::Any => "any",
            RegionArg::Primary => "primary",
            RegionArg::Secondary => "secondary",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_parses_the_contract() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "lifeboat-agent",
            "--config",
            "a.toml",
            "restore",
            "--source",
            "web",
            "--to",
            "/r",
            "--delete",
            "--json",
        ])
        .expect("parse");
        let Command::Restore(r) = c.command else {
            panic!("restore expected")
        };
        assert_eq!(
            (r.snapshot.as_str(), r.delete, r.json),
            ("latest", true, true)
        );
        assert!(
            Cli::try_parse_from(["lifeboat-agent", "restore", "--source", "db", "--as", "x"])
                .is_ok()
        );
        assert!(
            Cli::try_parse_from([
                "lifeboat-agent",
                "restore",
                "--source",
                "w",
                "--to",
                "/r",
                "--in-place"
            ])
            .is_err()
        );
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("certificate refused"), "{help}");
    }
}
