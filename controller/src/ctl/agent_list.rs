//! `lifeboatctl agent list [--json]`.

use lifeboat_proto::v1::ListAgentsRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;

use super::{Ctx, Failure, output};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let res = client.list_agents(ListAgentsRequest {}).await;
    let agents = match res {
        Ok(r) => r,
        Err(s) => return Err(ctx.failure("ListAgents", &s).await),
    }
    .into_inner()
    .agents;
    if a.json {
        let v: Vec<_> = agents
            .iter()
            .map(|g| {
                json!({
                    "id": g.id,
                    "dedup_group": g.dedup_group,
                    "created_at_unix_ms": g.created_at_unix_ms,
                    "certificate_sha256": g.certificate_sha256,
                    "not_after_unix_ms": g.not_after_unix_ms,
                    "last_seen_unix_ms": g.last_seen_unix_ms,
                    "snapshots": g.snapshots,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|g| {
            vec![
                g.id.clone(),
                g.dedup_group.clone(),
                g.snapshots.to_string(),
                output::time(g.last_seen_unix_ms),
                output::time(g.not_after_unix_ms),
                g.certificate_sha256.chars().take(16).collect(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "AGENT",
                "GROUP",
                "SNAPSHOTS",
                "LAST SEEN",
                "CERT NOT AFTER",
                "CERT SHA256"
            ],
            &rows
        )
    );
    Ok(())
}
