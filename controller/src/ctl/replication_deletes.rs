//! `lifeboatctl replication deletes [--run-due] [--json]`: deletes waiting for their delay before they reach
//! the secondary, and — with `[secondary] deletes = false` — deletes the controller will never run
//! itself (`MANUAL`: for an operator's job or a bucket lifecycle rule).

use lifeboat_proto::v1::ListDelayedDeletesRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;

use super::{Ctx, Failure, output};
use crate::MAX_MESSAGE_BYTES;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run the deletes that are due now (the controller otherwise runs them every minute),
    /// then list what is left.
    #[arg(long)]
    pub run_due: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES * 16);
    let r = match client
        .list_delayed_deletes(ListDelayedDeletesRequest { run_due: a.run_due })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("ListDelayedDeletes", &s).await),
    };
    if a.json {
        let v: Vec<_> = r
            .deletes
            .iter()
            .map(|d| {
                json!({
                    "key": d.key,
                    "enqueued_at_unix_ms": d.enqueued_at_unix_ms,
                    "not_before_unix_ms": d.not_before_unix_ms,
                    "manual": d.manual,
                })
            })
            .collect();
        let mut out = json!({ "deletes": v });
        if a.run_due {
            out["deleted"] = json!(r.deleted);
            out["cancelled"] = json!(r.cancelled);
            out["failed"] = json!(r.failed);
        }
        println!("{out}");
        return Ok(());
    }
    if a.run_due {
        println!(
            "ran the due deletes: {} deleted, {} cancelled (in the primary again), {} failed (retried in a minute)",
            r.deleted, r.cancelled, r.failed
        );
    }
    if r.deletes.is_empty() {
        println!("no delayed deletes");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r
        .deletes
        .iter()
        .map(|d| {
            vec![
                d.key.clone(),
                output::time(d.enqueued_at_unix_ms),
                output::time(d.not_before_unix_ms),
                if d.manual { "manual" } else { "controller" }.into(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["KEY", "QUEUED", "NOT BEFORE", "DONE BY"], &rows)
    );
    if r.deletes.iter().any(|d| d.manual) {
        println!(
            "\nThe secondary's credentials cannot delete ([secondary] deletes = false): delete these keys there with an operator's job or a lifecycle rule once NOT BEFORE has passed."
        );
    }
    Ok(())
}
