//! `lifeboatctl storage orphans [--json] [--limit N]`: objects in the store that the catalog
//! does not know (left by a crash before the catalog transaction). Read-only.

use lifeboat_proto::v1::ListOrphansRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;

use super::{Ctx, Failure, output};
use crate::MAX_MESSAGE_BYTES;

const ABOUT: &str = "\
Scans packs/, refs/, snapshots/ and probe/ in the object store and lists the objects the catalog
does not know: leftovers of a crash between an upload and its catalog transaction, or of a
start-up probe that could not delete. They are harmless (nothing references them); nothing is
deleted here (garbage collection removes them). An upload running during the scan can show its
newest objects here: run the command again to tell them apart.";

#[derive(Debug, clap::Args)]
#[command(after_help = ABOUT)]
pub struct OrphansArgs {
    /// List at most this many orphans (counts always cover all of them; at most 10000).
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn orphans(ctx: &Ctx, a: OrphansArgs) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES * 16);
    let r = match client
        .list_orphans(ListOrphansRequest { limit: a.limit })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("ListOrphans", &s).await),
    };
    if a.json {
        let v = json!({
            "orphans": r.orphans.iter().map(|o| json!({"key": o.key, "size": o.size})).collect::<Vec<_>>(),
            "orphan_count": r.orphan_count,
            "orphan_bytes": r.orphan_bytes,
            "objects_scanned": r.objects_scanned,
            "truncated": r.truncated,
        });
        println!("{v}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r
        .orphans
        .iter()
        .map(|o| vec![o.key.clone(), output::bytes(o.size)])
        .collect();
    if !rows.is_empty() {
        print!("{}", output::table(&["KEY", "SIZE"], &rows));
    }
    println!(
        "{} orphaned objects ({}) among {} scanned{}",
        r.orphan_count,
        output::bytes(r.orphan_bytes),
        r.objects_scanned,
        if r.truncated {
            "; list truncated, use --limit or --json"
        } else {
            ""
        }
    );
    Ok(())
}
