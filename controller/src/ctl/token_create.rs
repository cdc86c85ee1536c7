//! `lifeboatctl token create [--agent NAME] [--group G] [--ttl 1h] [--uses N] [--name-prefix P]`:
//! prints a join token on stdout (its only appearance; the controller keeps only a hash).

use lifeboat_proto::v1::CreateJoinTokenRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;

use super::{Ctx, Failure, output};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent name the token enrolls (or re-enrolls, keeping its history). Default: the agent
    /// chooses with `lifeboat-agent enroll --name`.
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Dedup group of the enrolled agent (default: a group of its own).
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Lifetime of the token, e.g. 15m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = lifeboat_common::clock::parse_duration)]
    pub ttl: std::time::Duration,
    /// How many agents may enroll with it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Without --agent: enrolled names must start with this.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub name_prefix: String,
    /// The controller address written into the token (default: the address lifeboatctl uses).
    #[arg(long, value_name = "URL")]
    pub controller_address: Option<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let address = match a.controller_address {
        Some(addr) => addr,
        None => ctx.load()?.address,
    };
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let res = client
        .create_join_token(CreateJoinTokenRequest {
            agent_id: a.agent.unwrap_or_default(),
            dedup_group: a.group.unwrap_or_default(),
            ttl_seconds: a.ttl.as_secs().max(1),
            uses: a.uses,
            name_prefix: a.name_prefix,
            address,
        })
        .await;
    let r = match res {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("CreateJoinToken", &s).await),
    };
    println!("{}", r.token);
    eprintln!(
        "join token valid until {}; give it to the VM in a file or LIFEBOAT_JOIN_TOKEN (never on a command line): lifeboat-agent enroll --token-file FILE --dir DIR",
        output::time(r.expires_at_unix_ms)
    );
    Ok(())
}
