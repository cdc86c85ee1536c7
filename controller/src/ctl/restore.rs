//! `lifeboatctl restore --agent A --source S [--snapshot ID] [--to DIR | --in-place]
//! [--as DB] [--delete] [--drop-existing] [--json]`: ask a connected agent to restore one of
//! its snapshots and follow the run ([`super::run_follow`]). The agent decrypts and verifies;
//! the controller only relays the command and the reports.

use std::path::PathBuf;

use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::{RestoreNow, RunRestoreRequest};

use super::{Ctx, Failure, run_follow};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 restored and verified; 1 failed, agent offline or unknown; 4 controller unreachable; 5 certificate refused."
)]
pub struct Args {
    /// The agent that restores (it must be running `lifeboat-agent run` and connected).
    #[arg(long, value_name = "AGENT")]
    pub agent: String,
    /// The source whose snapshot is restored.
    #[arg(long, value_name = "NAME")]
    pub source: String,
    /// A snapshot id or unique prefix (default: the latest).
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// Files: restore under this absolute directory on the agent's host.
    #[arg(long, value_name = "DIR", conflicts_with = "in_place")]
    pub to: Option<PathBuf>,
    /// Files: restore to the original paths.
    #[arg(long)]
    pub in_place: bool,
    /// Files: remove entries that are not in the snapshot.
    #[arg(long)]
    pub delete: bool,
    /// Databases: load into this database name instead of the original.
    #[arg(long = "as", value_name = "DB")]
    pub as_name: Option<String>,
    /// Databases: replace an existing database (only after the restored copy is verified).
    #[arg(long)]
    pub drop_existing: bool,
    /// Print every run report as one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    if let Some(t) = &a.to
        && !t.is_absolute()
    {
        return Err(Failure {
            code: lifeboat_common::exit::USAGE,
            message: format!(
                "--to {}: give an absolute path (it is a directory on the agent's host)",
                t.display()
            ),
        });
    }
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let req = RunRestoreRequest {
        agent_id: a.agent.clone(),
        restore: Some(RestoreNow {
            command_id: String::new(),
            source: a.source.clone(),
            snapshot: a.snapshot.clone().unwrap_or_default(),
            target: a
                .to
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            in_place: a.in_place,
            delete: a.delete,
            database_as: a.as_name.clone().unwrap_or_default(),
            drop_existing: a.drop_existing,
        }),
    };
    let stream = match client.run_restore(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("RunRestore", &s).await),
    };
    run_follow::follow(ctx, "RunRestore", stream, a.json).await
}
