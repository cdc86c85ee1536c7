//! `lifeboat-agent ls`.

use lifeboat_common::clock::format_unix_ms;
use lifeboat_common::exit;
use lifeboat_common::manifest::{Entry, EntryKind};
use serde_json::json;

use super::{CmdResult, Failure, connect, data_keys, load_config, print_json};
use crate::cli::{Cli, LsArgs};
use crate::error::AgentError;
use crate::restore::{fetch, original_path};

pub async fn run(cli: &Cli, args: &LsArgs) -> CmdResult {
    let cfg = load_config(cli.config.as_deref())?;
    let keys = data_keys(&cfg)?;
    let remote = connect(&cfg).await?;
    let scratch = super::scratch_dir(&cfg);
    let (info, m) = fetch::load_manifest(
        &remote,
        &keys,
        &args.snapshot,
        &args.source,
        scratch.as_deref(),
    )
    .await
    .map_err(|e| Failure::new(&e, Some(&cfg)))?;
    // A large entry's list is left in the scratch file (only its length is printed).
    for listed in m.entries_with_lists() {
        let (e, list) = &listed.map_err(|source| {
            let e = AgentError::Manifest {
                snapshot: info.id.clone(),
                source,
            };
            Failure::new(&e, Some(&cfg))
        })?;
        let path = original_path(&m.header, e);
        if args.path.as_deref().is_some_and(|p| !path.starts_with(p)) {
            continue;
        }
        let target = (!e.symlink_target.is_empty())
            .then(|| String::from_utf8_lossy(&e.symlink_target).into_owned());
        if args.json {
            print_json(&json!({
                "path": path.display().to_string(),
                "type": kind_name(e),
                "mode": format!("{:04o}", e.mode),
                "uid": e.uid,
                "gid": e.gid,
                "size": e.size,
                "mtime_unix_sec": e.mtime_sec,
                "mtime_nsec": e.mtime_nsec,
                "mtime": format_unix_ms(e.mtime_sec.saturating_mul(1000)),
                "target": target,
                "chunks": list.len(),
            }));
        } else {
            let arrow = target.map(|t| format!(" -> {t}")).unwrap_or_default();
            println!(
                "{} {:04o} {:>5}:{:<5} {:>12} {} {}{arrow}",
                &kind_name(e)[..1],
                e.mode,
                e.uid,
                e.gid,
                e.size,
                format_unix_ms(e.mtime_sec.saturating_mul(1000)),
                path.display()
            );
        }
    }
    Ok(exit::SUCCESS)
}

fn kind_name(e: &Entry) -> &'static str {
    match e.entry_kind() {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Unspecified => "unknown",
    }
}
