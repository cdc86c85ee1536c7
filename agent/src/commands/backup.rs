//! `lifeboat-agent backup`.

use std::sync::Arc;

use lifeboat_common::exit;
use tracing::error;

use super::{
    CmdResult, Failure, connect, data_keys, human_bytes, load_config, open_cache, print_json,
};
use crate::backup::read::FsOpener;
use crate::backup::{BackupContext, BackupReport, backup_source};
use crate::cli::{BackupArgs, Cli};

pub async fn run(cli: &Cli, args: &BackupArgs) -> CmdResult {
    let cfg = load_config(cli.config.as_deref())?;
    let sources: Vec<_> = match &args.source {
        Some(name) => vec![
            cfg.source(name)
                .map_err(|e| Failure::new(&e.into(), None))?
                .clone(),
        ],
        None => cfg.sources.clone(),
    };
    if sources.is_empty() {
        return Err(Failure {
            message: format!("no [[source]] is configured in {}", cfg.path.display()),
            code: exit::ERROR,
        });
    }
    let keys = data_keys(&cfg)?;
    let cache = open_cache(&cfg)?;
    let remote = connect(&cfg).await?;
    let ctx = BackupContext {
        remote: &remote,
        keys,
        zstd_level: cfg.zstd_level,
        cache,
        opener: Arc::new(FsOpener),
        bandwidth: {
            let rate = args.bandwidth.unwrap_or(0);
            Arc::new(move |_| rate)
        },
        progress: terminal_progress(args.json),
        scratch_dir: cfg.state_dir.clone(),
    };
    let mut code = exit::SUCCESS;
    let mut failure: Option<Failure> = None;
    for src in &sources {
        match backup_source(&ctx, src).await {
            Ok(report) => {
                if report.partial && code == exit::SUCCESS {
                    code = exit::PARTIAL;
                }
                if args.json {
                    print_json(&report)
                } else {
                    print_human(&report)
                }
            }
            Err(e) => {
                let f = Failure::new(&e, Some(&cfg));
                error!(source = %src.name, error = %f.message, "backup failed");
                if failure.is_none() {
                    failure = Some(f);
                }
            }
        }
    }
    failure.map_or(Ok(code), Err)
}

fn print_human(r: &BackupReport) {
    println!(
        "{}: snapshot {} committed: {} files ({} read, {}), {} dirs, {} symlinks, {} total; {} new chunks, {} uploaded, {} ms",
        r.source,
        r.snapshot_id,
        r.files,
        r.files_read,
        human_bytes(r.bytes_read),
        r.dirs,
        r.symlinks,
        human_bytes(r.logical_bytes),
        r.new_chunks,
        human_bytes(r.uploaded_bytes),
        r.duration_ms
    );
    if r.partial {
        println!(
            "{}: PARTIAL: {} inputs could not be read:",
            r.source,
            r.unreadable.len()
        );
        for u in &r.unreadable {
            println!("  {}: {}", u.path, u.error);
        }
    }
}

/// On a terminal (and without `--json`), one self-overwriting progress line on stderr.
fn terminal_progress(json: bool) -> crate::backup::Progress {
    use std::io::{IsTerminal, Write};
    if json || !std::io::stderr().is_terminal() {
        return crate::backup::no_progress();
    }
    Arc::new(|p: &crate::backup::BackupProgress| {
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let total = if p.bytes_total > 0 {
            format!(" of {:.1} MiB", mib(p.bytes_total))
        } else {
            String::new()
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{}: {:.1} MiB{total} chunked, {:.1} MiB uploaded   ",
            p.source,
            mib(p.bytes_done),
            mib(p.uploaded_bytes)
        );
        let _ = err.flush();
    })
}
