//! `lifeboatctl agent revoke NAME`: the agent's next call (or next upload message) is refused.

use lifeboat_proto::v1::RevokeAgentRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;

use super::{Ctx, Failure, output};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent to cut off.
    pub name: String,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let res = client
        .revoke_agent(RevokeAgentRequest {
            agent_id: a.name.clone(),
        })
        .await;
    let r = match res {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("RevokeAgent", &s).await),
    };
    println!(
        "agent {} revoked at {}; its snapshots are kept. To let it back in: lifeboatctl token create --agent {}",
        a.name,
        output::time(r.revoked_at_unix_ms),
        a.name
    );
    Ok(())
}
