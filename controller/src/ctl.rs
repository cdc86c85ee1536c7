//! `lifeboatctl`: the admin CLI. One subcommand per file under `ctl/`, each a thin `run()` over
//! library calls. Failures carry their exit code ([`Failure`]): 4 unreachable, 5 certificate
//! refused, 1 other errors (clap exits with 2 on usage errors).

pub mod agent_add;
pub mod agent_allow_restore;
pub mod agent_list;
pub mod agent_revoke;
pub mod backup;
pub mod forget;
pub mod gc;
pub mod key_escrow;
pub mod key_init;
pub mod key_paper;
pub mod output;
pub mod policy;
pub mod replication;
pub mod replication_deletes;
pub mod replication_scrub;
pub mod restore;
pub mod run_follow;
pub mod snapshots_list;
pub mod snapshots_show;
pub mod stats;
pub mod status;
pub mod storage;
pub mod token_create;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lifeboat_common::exit;
use tonic::transport::Channel;

use crate::client;
use crate::config::{CtlConfig, ENV_ADDRESS};

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn error(message: impl Into<String>) -> Self {
        Failure {
            code: exit::ERROR,
            message: message.into(),
        }
    }

    /// A failed call: the message says what failed and the code is classified.
    pub fn call(what: &str, status: &tonic::Status) -> Self {
        let code = client::classify(status);
        let hint = match code {
            exit::CERTIFICATE_REFUSED => {
                "; the controller refused the admin certificate: check cert/key/ca in lifeboatctl.toml"
            }
            exit::UNREACHABLE => "; is lifeboat-controller running and the address right?",
            _ => "",
        };
        Failure {
            code,
            message: format!("{what} failed: {}{hint}", client::describe(status)),
        }
    }
}

impl From<client::ClientError> for Failure {
    fn from(e: client::ClientError) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "lifeboatctl",
    version,
    about = "Administer a Lifeboat controller: enroll agents, list agents and snapshots, create the fleet master key.",
    after_help = lifeboat_common::exit::HELP_TABLE
)]
pub struct Cli {
    /// Config file (address, CA, admin certificate and key).
    #[arg(
        long,
        env = "LIFEBOATCTL_CONFIG",
        default_value = "lifeboatctl.toml",
        global = true
    )]
    pub config: PathBuf,
    /// Controller address, e.g. https://controller:7443 (overrides the config and LIFEBOAT_ADDRESS).
    #[arg(long, global = true)]
    pub address: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll and list agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// The fleet master key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// List and inspect snapshots.
    #[command(subcommand)]
    Snapshots(SnapshotsCommand),
    /// Apply retention rules: show (--dry-run) or forget the snapshots they do not keep.
    Forget(forget::Args),
    /// Garbage collection now: condemn unreferenced chunks, sweep earlier condemned ones, delete
    /// dead packs, forgotten snapshots' objects and orphans (--dry-run: count only).
    Gc(gc::Args),
    /// Storage usage: logical and stored bytes, dedup ratio, objects; per agent, group, total.
    Stats(stats::Args),
    /// Inspect the object store.
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Replication to the secondary object store.
    #[command(subcommand)]
    Replication(ReplicationCommand),
    /// Join tokens for enrolling agents.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Backup policies: schedule, RPO objective, bandwidth limit, niceness.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// RPO compliance of every agent and source.
    Status(status::Args),
    /// Ask a connected agent to back up now, and follow the run.
    Backup(backup::Args),
    /// Ask a connected agent to restore a snapshot, and follow the run.
    Restore(restore::Args),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Set fields of the policy of a scope (and optionally one source).
    Set(policy::SetArgs),
    /// Show the stored policies (and an agent's effective policy).
    Show(policy::ShowArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token (printed once on stdout).
    Create(token_create::Args),
}

#[derive(Debug, Subcommand)]
pub enum ReplicationCommand {
    /// Lag, pending objects and bytes, last error, newest snapshot restorable from the secondary.
    Status(replication::StatusArgs),
    /// Read back a random sample of replicated objects; re-queue missing or damaged ones (exit 1).
    Scrub(replication_scrub::Args),
    /// Deletes waiting for their delay before they reach the secondary.
    Deletes(replication_deletes::Args),
}

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// List objects the catalog does not know (crash leftovers; harmless, nothing is deleted).
    Orphans(storage::OrphansArgs),
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Sign an agent's CSR: writes DIR/agent.pem and DIR/ca.pem.
    Add(agent_add::Args),
    /// List enrolled agents.
    List(agent_list::Args),
    /// Let agent NAME read (restore) the snapshots of agent OLD: a replacement VM.
    AllowRestore(agent_allow_restore::Args),
    /// Revoke agent NAME's certificate: its next call, and any upload in progress, is refused.
    Revoke(agent_revoke::Args),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create the fleet master key file locally and escrow it under a passphrase (the key itself
    /// is never sent to the controller; only the passphrase-wrapped envelope is).
    Init(key_init::Args),
    /// Escrow an existing master key and/or the controller's CA under a passphrase.
    Escrow(key_escrow::Args),
    /// Print the master key as checksummed text for an offline paper copy.
    Export(key_paper::ExportArgs),
    /// Read a paper copy back into a key file (a mistyped character is located).
    Import(key_paper::ImportArgs),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List snapshots (all agents, or one).
    List(snapshots_list::Args),
    /// Show one snapshot by id or unique id prefix.
    Show(snapshots_show::Args),
}

/// What subcommands need to reach the controller.
#[derive(Debug)]
pub struct Ctx {
    pub config: PathBuf,
    pub address: Option<String>,
}

impl Ctx {
    /// Turns a failed call into a [`Failure`]. A transport failure right after connecting may be
    /// the controller refusing our certificate (TLS 1.3 reports it late): probe to tell.
    pub async fn failure(&self, what: &str, status: &tonic::Status) -> Failure {
        let mut f = Failure::call(what, status);
        if f.code == exit::UNREACHABLE
            && let Ok(cfg) = self.load()
            && let (Ok(ca), Ok(cert), Ok(key)) = (
                std::fs::read(&cfg.ca),
                std::fs::read(&cfg.cert),
                std::fs::read(&cfg.key),
            )
            && let Some(why) =
                client::probe_refusal(&cfg.address, &cfg.server_name, &ca, &cert, &key).await
        {
            f = Failure {
                code: exit::CERTIFICATE_REFUSED,
                message: format!(
                    "{what} failed: the controller refused the admin certificate ({why}); check cert/key/ca in {}",
                    self.config.display()
                ),
            };
        }
        f
    }

    fn load(&self) -> Result<CtlConfig, Failure> {
        let mut cfg = CtlConfig::load(&self.config).map_err(|e| {
            Failure::error(format!(
                "{e} (pass --config FILE or set LIFEBOATCTL_CONFIG; `lifeboat-controller init` writes lifeboatctl.toml)"
            ))
        })?;
        if let Ok(a) = std::env::var(ENV_ADDRESS)
            && !a.is_empty()
        {
            cfg.address = a;
        }
        if let Some(a) = &self.address {
            cfg.address = a.clone();
        }
        Ok(cfg)
    }

    /// Loads the config (flag > env LIFEBOAT_ADDRESS > file for the address) and connects.
    pub async fn channel(&self) -> Result<Channel, Failure> {
        Ok(client::connect(&self.load()?).await?)
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Ctx {
        config: cli.config,
        address: cli.address,
    };
    match cli.command {
        Command::Agent(AgentCommand::Add(a)) => agent_add::run(&ctx, a).await,
        Command::Agent(AgentCommand::List(a)) => agent_list::run(&ctx, a).await,
        Command::Agent(AgentCommand::AllowRestore(a)) => agent_allow_restore::run(&ctx, a).await,
        Command::Key(KeyCommand::Init(a)) => key_init::run(&ctx, a).await,
        Command::Key(KeyCommand::Escrow(a)) => key_escrow::run(&ctx, a).await,
        Command::Key(KeyCommand::Export(a)) => key_paper::export(a),
        Command::Key(KeyCommand::Import(a)) => key_paper::import(a),
        Command::Snapshots(SnapshotsCommand::List(a)) => snapshots_list::run(&ctx, a).await,
        Command::Snapshots(SnapshotsCommand::Show(a)) => snapshots_show::run(&ctx, a).await,
        Command::Stats(a) => stats::run(&ctx, a).await,
        Command::Forget(a) => forget::run(&ctx, a).await,
        Command::Gc(a) => gc::run(&ctx, a).await,
        Command::Storage(StorageCommand::Orphans(a)) => storage::orphans(&ctx, a).await,
        Command::Token(TokenCommand::Create(a)) => token_create::run(&ctx, a).await,
        Command::Agent(AgentCommand::Revoke(a)) => agent_revoke::run(&ctx, a).await,
        Command::Policy(PolicyCommand::Set(a)) => policy::set(&ctx, a).await,
        Command::Policy(PolicyCommand::Show(a)) => policy::show(&ctx, a).await,
        Command::Status(a) => status::run(&ctx, a).await,
        Command::Backup(a) => backup::run(&ctx, a).await,
        Command::Restore(a) => restore::run(&ctx, a).await,
        Command::Replication(ReplicationCommand::Status(a)) => replication::status(&ctx, a).await,
        Command::Replication(ReplicationCommand::Scrub(a)) => replication_scrub::run(&ctx, a).await,
        Command::Replication(ReplicationCommand::Deletes(a)) => {
            replication_deletes::run(&ctx, a).await
        }
    }
}
