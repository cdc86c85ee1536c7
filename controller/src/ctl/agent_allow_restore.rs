//! `lifeboatctl agent allow-restore NEW --from OLD`: lets a replacement VM restore a lost VM's
//! snapshots (read only; agents stay isolated otherwise).

use lifeboat_proto::v1::AllowRestoreRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;

use super::{Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent that will restore (the replacement VM).
    pub name: String,
    /// The agent whose snapshots it may read (the lost VM).
    #[arg(long = "from", value_name = "OLD")]
    pub from: String,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let res = client
        .allow_restore(AllowRestoreRequest {
            agent_id: a.name.clone(),
            from_agent: a.from.clone(),
        })
        .await;
    if let Err(s) = res {
        return Err(ctx.failure("AllowRestore", &s).await);
    }
    println!(
        "agent {} may now restore the snapshots of agent {} (lifeboat-agent restore --from-agent {} ...)",
        a.name, a.from, a.from
    );
    Ok(())
}
