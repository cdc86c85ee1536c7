//! `lifeboatctl snapshots list [--agent A] [--source S] [--json]`.

use lifeboat_proto::v1::AdminListSnapshotsRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;

use super::snapshots_show::snapshot_json;
use super::{Ctx, Failure, output};
use crate::MAX_MESSAGE_BYTES;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this agent's snapshots.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only this source's snapshots.
    #[arg(long)]
    pub source: Option<String>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES * 16);
    let res = client
        .list_snapshots(AdminListSnapshotsRequest {
            agent_id: a.agent.unwrap_or_default(),
            source: a.source.unwrap_or_default(),
        })
        .await;
    let snaps = match res {
        Ok(r) => r,
        Err(s) => return Err(ctx.failure("ListSnapshots", &s).await),
    }
    .into_inner()
    .snapshots;
    if a.json {
        let v: Vec<_> = snaps.iter().map(snapshot_json).collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            let st = s.stats.unwrap_or_default();
            vec![
                s.id.clone(),
                s.agent_id.clone(),
                s.source.clone(),
                output::time(s.committed_at_unix_ms),
                st.files.to_string(),
                output::bytes(st.logical_bytes),
                output::bytes(s.stored_bytes),
                if st.unreadable > 0 {
                    "partial".into()
                } else {
                    "ok".into()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "SNAPSHOT",
                "AGENT",
                "SOURCE",
                "COMMITTED",
                "FILES",
                "SIZE",
                "STORED",
                "STATUS"
            ],
            &rows
        )
    );
    Ok(())
}
