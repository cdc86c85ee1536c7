//! `lifeboatctl stats [--json]`: storage usage per agent, per dedup group and in total.

use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::{GetStorageStatsRequest, StorageUsage};
use serde_json::{Value, json};

use super::{Ctx, Failure, output};
use crate::MAX_MESSAGE_BYTES;

/// Shown by `lifeboatctl stats --help`.
pub const DEFINITIONS: &str = "\
Definitions:
  logical   sum over snapshots of their plaintext size (a tree backed up twice counts twice)
  stored    total: bytes of all pack objects in the store (ciphertext + pack index);
            group: ciphertext bytes of the dedup group's chunks;
            agent: ciphertext bytes of the chunks the agent uploaded first within its group
            (a chunk another member uploaded first is credited to that member), so the agents
            of a group add up to the group
  ratio     logical / stored: what deduplication and compression save together
  chunks    stored chunks (total and group: all; agent: the ones it uploaded first)
Figures come from the catalog; reference segments and snapshot records (small) are not counted.";

#[derive(Debug, clap::Args)]
#[command(after_help = DEFINITIONS)]
pub struct Args {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// logical / stored, or None when nothing is stored.
pub fn ratio(logical: u64, stored: u64) -> Option<f64> {
    (stored > 0).then(|| logical as f64 / stored as f64)
}

fn usage_json(u: &StorageUsage, name_key: &str) -> Value {
    let mut v = json!({
        "snapshots": u.snapshots,
        "logical_bytes": u.logical_bytes,
        "stored_bytes": u.stored_bytes,
        "chunks": u.chunks,
        "dedup_ratio": ratio(u.logical_bytes, u.stored_bytes),
    });
    match name_key {
        "agent" => {
            v["agent"] = json!(u.name);
            v["dedup_group"] = json!(u.dedup_group);
        }
        "group" => {
            v["group"] = json!(u.name);
            v["agents"] = json!(u.agents);
        }
        _ => {
            v["packs"] = json!(u.packs);
            v["agents"] = json!(u.agents);
        }
    }
    v
}

fn ratio_text(u: &StorageUsage) -> String {
    ratio(u.logical_bytes, u.stored_bytes).map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

fn row(name: &str, group: &str, u: &StorageUsage) -> Vec<String> {
    vec![
        name.to_owned(),
        group.to_owned(),
        u.snapshots.to_string(),
        output::bytes(u.logical_bytes),
        output::bytes(u.stored_bytes),
        ratio_text(u),
        u.chunks.to_string(),
    ]
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES * 16);
    let r = match client.get_storage_stats(GetStorageStatsRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("GetStorageStats", &s).await),
    };
    let total = r.total.unwrap_or_default();
    if a.json {
        let v = json!({
            "total": usage_json(&total, "total"),
            "agents": r.agents.iter().map(|u| usage_json(u, "agent")).collect::<Vec<_>>(),
            "groups": r.groups.iter().map(|u| usage_json(u, "group")).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = r
        .agents
        .iter()
        .map(|u| row(&u.name, &u.dedup_group, u))
        .collect();
    rows.extend(
        r.groups
            .iter()
            .map(|u| row(&format!("group {}", u.name), &u.name, u)),
    );
    rows.push(row("TOTAL", "", &total));
    print!(
        "{}",
        output::table(
            &[
                "AGENT",
                "GROUP",
                "SNAPSHOTS",
                "LOGICAL",
                "STORED",
                "RATIO",
                "CHUNKS"
            ],
            &rows
        )
    );
    println!(
        "{} packs, {} chunks, {} snapshots, {} agents",
        total.packs, total.chunks, total.snapshots, total.agents
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_logical_over_stored() {
        assert_eq!(ratio(10, 0), None);
        assert_eq!(ratio(30, 10), Some(3.0));
        let u = StorageUsage {
            name: "web-01".into(),
            dedup_group: "web".into(),
            logical_bytes: 300,
            stored_bytes: 100,
            ..Default::default()
        };
        let v = usage_json(&u, "agent");
        assert_eq!(v["agent"], "web-01");
        assert_eq!(v["dedup_ratio"], 3.0);
        assert_eq!(ratio_text(&u), "3.00x");
    }
}
