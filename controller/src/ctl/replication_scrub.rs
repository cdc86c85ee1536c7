//! `lifeboatctl replication scrub [--sample N] [--json]`: read back a random sample of
//! replicated objects from the secondary and check them.
//!
//! Exit codes: 0 every object read back matched; 1 damage found (each damaged or missing object
//! is listed and re-queued for copying from the primary; `replication status --wait caught-up`
//! then waits for the repair), or replication is not configured, or the secondary could not be
//! read; 4/5 as for every command.

use lifeboat_proto::v1::ScrubSecondaryRequest;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;

use super::{Ctx, Failure, output};

const ABOUT: &str = "\
Copies are checked against the size the secondary reports; the scrub reads objects back and
checks their BLAKE3 against what the controller recorded. A missing or damaged object is logged,
counted on /metrics (lifeboat_replication_scrub_damaged_total) and re-queued for copying from the
primary. The controller also scrubs by itself every [secondary] scrub_interval.

Exit status: 0 clean; 1 damage found and re-queued (or replication not configured, or the
secondary unreadable).";

#[derive(Debug, clap::Args)]
#[command(after_help = ABOUT)]
pub struct Args {
    /// How many replicated objects to read back (default: the controller's scrub_sample).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub sample: Option<u32>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let req = ScrubSecondaryRequest {
        sample: a.sample.unwrap_or(0),
    };
    let r = match client.scrub_secondary(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("ScrubSecondary", &s).await),
    };
    if a.json {
        let v = json!({
            "configured": r.configured,
            "checked": r.checked,
            "checked_bytes": r.checked_bytes,
            "damaged": r.damaged_keys,
        });
        println!("{v}");
    } else if r.configured {
        println!(
            "scrub: {} objects read back from the secondary ({}), {} damaged or missing",
            r.checked,
            output::bytes(r.checked_bytes),
            r.damaged_keys.len()
        );
        for k in &r.damaged_keys {
            println!("  re-queued for copying: {k}");
        }
    }
    if !r.configured {
        return Err(Failure::error(
            "replication is not configured (add a [secondary] store to controller.toml): nothing to scrub",
        ));
    }
    if !r.damaged_keys.is_empty() {
        return Err(Failure::error(format!(
            "{} objects in the secondary were missing or damaged; they are re-queued for copying from the primary (`lifeboatctl replication status --wait caught-up` waits for the repair)",
            r.damaged_keys.len()
        )));
    }
    Ok(())
}
