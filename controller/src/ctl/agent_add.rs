//! `lifeboatctl agent add NAME --csr FILE [--group G] --out DIR`.

use std::path::PathBuf;

use lifeboat_proto::v1::AddAgentRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;

use super::{Ctx, Failure, output};
use crate::MAX_MESSAGE_BYTES;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's name (its id): 1-64 of a-z, 0-9, '.', '_', '-'.
    pub name: String,
    /// The CSR made by `lifeboat-agent init` (agent.csr).
    #[arg(long)]
    pub csr: PathBuf,
    /// Dedup group: agents in one group share chunks (default: a group of its own).
    #[arg(long)]
    pub group: Option<String>,
    /// Where to write agent.pem and ca.pem (usually the agent's directory).
    #[arg(long)]
    pub out: PathBuf,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let csr_pem = std::fs::read_to_string(&a.csr)
        .map_err(|e| Failure::error(format!("cannot read CSR {}: {e}", a.csr.display())))?;
    let mut client =
        AdminServiceClient::new(ctx.channel().await?).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let res = client
        .add_agent(AddAgentRequest {
            agent_id: a.name.clone(),
            csr_pem,
            dedup_group: a.group.clone().unwrap_or_default(),
        })
        .await;
    let r = match res {
        Ok(r) => r,
        Err(s) => return Err(ctx.failure("AddAgent", &s).await),
    }
    .into_inner();
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::error(format!("cannot create {}: {e}", a.out.display())))?;
    for (name, pem) in [("agent.pem", &r.certificate_pem), ("ca.pem", &r.ca_pem)] {
        let p = a.out.join(name);
        std::fs::write(&p, pem)
            .map_err(|e| Failure::error(format!("cannot write {}: {e}", p.display())))?;
    }
    println!("agent:     {}", r.agent_id);
    println!("group:     {}", a.group.as_deref().unwrap_or(&r.agent_id));
    println!("not after: {}", output::time(r.not_after_unix_ms));
    println!(
        "wrote {} and {}",
        a.out.join("agent.pem").display(),
        a.out.join("ca.pem").display()
    );
    Ok(())
}
