//! `lifeboatctl backup --agent A [--source S] [--wait|--no-wait] [--json]`: ask a connected
//! agent to back up now and follow the run ([`super::run_follow`]).

use lifeboat_proto::v1::RunBackupRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;

use super::{Ctx, Failure, run_follow};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 succeeded; 3 partial snapshot; 1 failed, agent offline or unknown; 4 controller unreachable; 5 certificate refused."
)]
pub struct Args {
    /// The agent to back up (it must be running `lifeboat-agent run` and connected).
    #[arg(long, value_name = "AGENT")]
    pub agent: String,
    /// Only this source (default: every source of the agent).
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Follow the run to its end (the default).
    #[arg(long, conflicts_with = "no_wait")]
    pub wait: bool,
    /// Return as soon as the agent has started the backup.
    #[arg(long)]
    pub no_wait: bool,
    /// Print every run report as one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let req = RunBackupRequest {
        agent_id: a.agent.clone(),
        source: a.source.clone().unwrap_or_default(),
        no_wait: a.no_wait,
    };
    let stream = match client.run_backup(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("RunBackup", &s).await),
    };
    run_follow::follow(ctx, "RunBackup", stream, a.json).await
}
