//! `lifeboat-agent restore`.

use lifeboat_common::exit;
use tracing::warn;

use super::{CmdResult, Failure, connect, data_keys, human_bytes, load_config, print_json};
use crate::cli::{Cli, RestoreArgs};
use crate::config::Excludes;
use crate::error::AgentError;
use crate::restore::target::Target;
use crate::restore::{RestoreOptions, restore};

pub async fn run(cli: &Cli, args: &RestoreArgs) -> CmdResult {
    let cfg = load_config(cli.config.as_deref())?;
    let usage = |message: String| Failure {
        message,
        code: exit::USAGE,
    };
    let target = match (&args.to, args.in_place) {
        (Some(dir), false) => {
            let dir = std::path::absolute(dir)
                .map_err(|e| usage(format!("--to {}: {e}", dir.display())))?;
            Target::To(dir)
        }
        (None, true) => Target::InPlace,
        _ => return Err(usage("give exactly one of --to DIR or --in-place".into())),
    };
    if let Some(p) = &args.path
        && !p.is_absolute()
    {
        return Err(usage(format!(
            "--path {} must be an absolute original path",
            p.display()
        )));
    }
    let excludes = match cfg.source(&args.source) {
        Ok(s) => s.excludes.clone(),
        Err(_) => {
            warn!(source = %args.source, "source is not in this agent's config; --delete keeps no excluded paths");
            Excludes::default()
        }
    };
    let keys = data_keys(&cfg)?;
    let remote = connect(&cfg).await?;
    let opts = RestoreOptions {
        source: args.source.clone(),
        snapshot: args.snapshot.clone(),
        target,
        path: args.path.clone(),
        delete: args.delete,
        excludes,
    };
    let report = restore(&remote, &keys, &opts)
        .await
        .map_err(|e: AgentError| Failure::new(&e, Some(&cfg)))?;
    if args.json {
        print_json(&report);
    } else {
        println!(
            "restored snapshot {}: {} files written ({}), {} unchanged, {} dirs, {} symlinks, {} deleted, {} ms",
            report.snapshot_id,
            report.files_written,
            human_bytes(report.bytes_written),
            report.files_unchanged,
            report.dirs,
            report.symlinks,
            report.deleted,
            report.duration_ms
        );
    }
    Ok(exit::SUCCESS)
}
