//! `lifeboat-agent restore`: files (`--to DIR` or `--in-place`) or databases, chosen by the
//! snapshot's kind. After an in-place restore of nginx configuration (the source has an nginx
//! check, or a root under /etc/nginx) `nginx -t` runs; `--reload` reloads if it passed.
//!
//! Regions: `--region any` (default) reads from the primary object store and lets the
//! controller fall back to the secondary for chunks the primary fails (missing, unreachable,
//! damaged); `primary` never falls back; `secondary` reads only the secondary. The summary says
//! how many chunks the secondary served (text, and `region`, `chunks_read`,
//! `chunks_from_secondary` in `--json`), so a restore that survived a damaged or lost primary
//! says so. `bytes_read` (`--json`) is what the chunks weighed on the wire: sealed (compressed
//! and encrypted), before gRPC's and TLS's framing.

use std::time::Instant;

use lifeboat_common::exit;
use lifeboat_common::keys::DataKeys;
use lifeboat_common::manifest::EncodedManifest;
use lifeboat_proto::v1::Region;
use serde::Serialize;
use tracing::warn;

use super::{CmdResult, Failure, connect, data_keys, human_bytes, load_config, print_json};
use crate::cli::{Cli, RegionArg, RestoreArgs};
use crate::client::GrpcRemote;
use crate::config::{AgentConfig, NginxCheck, PathPatterns};
use crate::error::AgentError;
use crate::mysql::Server;
use crate::restore::database::{DbRestoreOptions, restore_databases};
use crate::restore::fetch::load_manifest;
use crate::restore::target::Target;
use crate::restore::{RestoreOptions, restore_manifest};

fn usage(message: String) -> Failure {
    Failure {
        message,
        code: exit::USAGE,
    }
}

pub async fn run(cli: &Cli, args: &RestoreArgs) -> CmdResult {
    let cfg = load_config(cli.config.as_deref())?;
    let keys = data_keys(&cfg)?;
    let remote = connect(&cfg).await?;
    let out = execute(&cfg, &keys, remote, args, &|_| {}).await?;
    if args.json {
        print_json(&out.json);
    } else {
        for l in &out.lines {
            println!("{l}");
        }
    }
    out.failure.map_or(Ok(exit::SUCCESS), Err)
}

/// What a finished restore produced: the `--json` summary, the human lines, and a failure to
/// report after them (files restored but `nginx -t` failed). Shared by the `restore` command
/// and the control stream's remote restores (`lifeboatctl restore --agent`).
#[derive(Debug)]
pub struct Outcome {
    pub snapshot_id: String,
    pub json: serde_json::Value,
    pub lines: Vec<String>,
    pub failure: Option<Failure>,
}

/// Restores as `args` say, with `remote` (already connected), without printing.
/// `on_manifest` sees the snapshot's manifest once it is loaded and verified (for progress).
pub async fn execute(
    cfg: &AgentConfig,
    keys: &DataKeys,
    remote: GrpcRemote,
    args: &RestoreArgs,
    on_manifest: &(dyn Fn(&EncodedManifest) + Send + Sync),
) -> Result<Outcome, Failure> {
    let mut remote = remote.in_region(match args.region {
        RegionArg::Any => Region::Any,
        RegionArg::Primary => Region::Primary,
        RegionArg::Secondary => Region::Secondary,
    });
    if let Some(from) = &args.from_agent {
        remote = remote.reading_from(from);
    }
    let fail = |e: AgentError| Failure::new(&e, Some(cfg));
    let started = Instant::now();
    let scratch = super::scratch_dir(cfg);
    let (info, manifest) = load_manifest(
        &remote,
        keys,
        &args.snapshot,
        &args.source,
        scratch.as_deref(),
    )
    .await
    .map_err(fail)?;
    on_manifest(&manifest);
    if manifest.header.kind == "mysql" {
        restore_db(cfg, &remote, keys, &manifest, args, &info.id)
            .await
            .map_err(fail)
    } else {
        restore_files(cfg, &remote, keys, manifest, args, &info.id, started).await
    }
}

fn to_json<T: Serialize>(report: &T, regions: RegionReport) -> serde_json::Value {
    serde_json::to_value(WithRegion { report, regions }).unwrap_or(serde_json::Value::Null)
}

async fn restore_db(
    cfg: &AgentConfig,
    remote: &GrpcRemote,
    keys: &DataKeys,
    m: &EncodedManifest,
    args: &RestoreArgs,
    snapshot: &str,
) -> Result<Outcome, AgentError> {
    if args.to.is_some() || args.in_place || args.delete || args.path.is_some() {
        return Err(AgentError::Invalid(format!(
            "snapshot {snapshot} is a database snapshot: --to, --in-place, --path and --delete do not apply; use --database, --as, --drop-existing, --users"
        )));
    }
    let mysql = cfg
        .source(&args.source)
        .ok()
        .and_then(|s| s.mysql.clone())
        .ok_or_else(|| {
            AgentError::Invalid(format!(
                "source {:?} is not a mysql source in {}: add it (kind = \"mysql\" with socket/defaults_file) so the agent knows how to reach the server",
                args.source,
                cfg.path.display()
            ))
        })?;
    let server = Server::new(&mysql)?;
    let opts = DbRestoreOptions {
        database: args.database.clone(),
        as_name: args.as_name.clone(),
        drop_existing: args.drop_existing,
        users: args.users || args.users_only,
        users_only: args.users_only,
    };
    let mut report = restore_databases(remote, keys, &server, m, &opts).await?;
    report.snapshot_id = snapshot.to_owned();
    let regions = RegionReport::of(remote, args.region);
    let mut lines = Vec::new();
    for d in &report.databases {
        lines.push(format!(
            "restored database {} into {}: {} tables, {} rows verified, {} loaded{}",
            d.name,
            d.into,
            d.tables,
            d.rows,
            human_bytes(d.bytes_loaded),
            if d.replaced {
                " (replaced the existing database)"
            } else {
                ""
            }
        ));
    }
    if report.users_restored {
        lines.push("users and grants restored".into());
        for u in &report.users_not_in_backup {
            lines.push(format!("  not in the backup (left as is): {u}"));
        }
    }
    lines.extend(regions.line());
    Ok(Outcome {
        snapshot_id: snapshot.to_owned(),
        json: to_json(&report, regions),
        lines,
        failure: None,
    })
}

async fn restore_files(
    cfg: &AgentConfig,
    remote: &GrpcRemote,
    keys: &DataKeys,
    m: EncodedManifest,
    args: &RestoreArgs,
    snapshot: &str,
    started: Instant,
) -> Result<Outcome, Failure> {
    let target = match (&args.to, args.in_place) {
        (Some(dir), false) => {
            let dir = std::path::absolute(dir)
                .map_err(|e| usage(format!("--to {}: {e}", dir.display())))?;
            Target::To(dir)
        }
        (None, true) => Target::InPlace,
        _ => return Err(usage("give exactly one of --to DIR or --in-place".into())),
    };
    if args.database.is_some()
        || args.as_name.is_some()
        || args.drop_existing
        || args.users
        || args.users_only
    {
        return Err(usage(
            "--database, --as, --drop-existing and --users apply to database snapshots only".into(),
        ));
    }
    if let Some(p) = &args.path
        && !p.is_absolute()
    {
        return Err(usage(format!(
            "--path {} must be an absolute original path",
            p.display()
        )));
    }
    let src = cfg.source(&args.source).ok();
    let excludes = match src {
        Some(s) => s.excludes.clone(),
        None => {
            warn!(source = %args.source, "source is not in this agent's config; --delete keeps no excluded paths");
            PathPatterns::default()
        }
    };
    let opts = RestoreOptions {
        source: args.source.clone(),
        snapshot: args.snapshot.clone(),
        target: target.clone(),
        path: args.path.clone(),
        delete: args.delete,
        excludes,
        scratch_dir: super::scratch_dir(cfg),
    };
    let has_nginx_conf =
        (0..m.header.roots.len()).any(|i| m.root_path(i as u32).starts_with("/etc/nginx"));
    let mut report = restore_manifest(remote, keys, m, &opts)
        .await
        .map_err(|e: AgentError| Failure::new(&e, Some(cfg)))?;
    report.snapshot_id = snapshot.to_owned();
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let check = src.and_then(|s| s.nginx.clone()).or_else(|| {
        has_nginx_conf.then(|| NginxCheck {
            command: "nginx".into(),
            conf: None,
            prefix: None,
        })
    });
    if let (Some(c), Target::InPlace) = (check, &target) {
        let reload = args.reload;
        report.nginx = tokio::task::spawn_blocking(move || crate::nginx::check(&c, reload))
            .await
            .ok();
    }
    let regions = RegionReport::of(remote, args.region);
    let mut lines = vec![format!(
        "restored snapshot {}: {} files written ({}), {} unchanged, {} dirs, {} symlinks, {} deleted, {} ms",
        report.snapshot_id,
        report.files_written,
        human_bytes(report.bytes_written),
        report.files_unchanged,
        report.dirs,
        report.symlinks,
        report.deleted,
        report.duration_ms
    )];
    lines.extend(regions.line());
    if let Some(n) = &report.nginx {
        lines.push(format!(
            "nginx -t: {}{}",
            if n.test_passed { "passed" } else { "FAILED" },
            if n.reloaded { "; nginx reloaded" } else { "" }
        ));
    }
    let failure = match &report.nginx {
        Some(n) if !n.test_passed => Some(Failure {
            message: format!(
                "files were restored, but `nginx -t` failed (nginx was not reloaded): {}",
                n.test_output
            ),
            code: exit::ERROR,
        }),
        _ => None,
    };
    Ok(Outcome {
        snapshot_id: snapshot.to_owned(),
        json: to_json(&report, regions),
        lines,
        failure,
    })
}

/// Which region served the chunks of a restore.
#[derive(Debug, Clone, Copy, Serialize)]
struct RegionReport {
    region: &'static str,
    chunks_read: u64,
    chunks_from_secondary: u64,
    bytes_read: u64,
}

impl RegionReport {
    fn of(remote: &GrpcRemote, region: RegionArg) -> Self {
        let read = remote.read_counts();
        RegionReport {
            region: region.as_str(),
            chunks_read: read.chunks,
            chunks_from_secondary: read.from_secondary,
            bytes_read: read.bytes,
        }
    }

    /// The summary line, or `None` when the primary served everything as usual.
    fn line(&self) -> Option<String> {
        let (n, of) = (self.chunks_from_secondary, self.chunks_read);
        match self.region {
            "secondary" => Some(format!(
                "{n} of {of} chunks served from the secondary region (--region secondary)"
            )),
            "primary" => Some(format!(
                "{of} chunks served from the primary region (--region primary, no fallback)"
            )),
            _ if n > 0 => Some(format!(
                "{n} of {of} chunks served from the secondary region (the primary failed for them; the controller logged each and queued repairs)"
            )),
            _ => None,
        }
    }
}

/// A restore report with the region figures beside its own fields (`--json`).
#[derive(Serialize)]
struct WithRegion<'a, T: Serialize> {
    #[serde(flatten)]
    report: &'a T,
    #[serde(flatten)]
    regions: RegionReport,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_lines_say_who_served_what() {
        let r = |region, chunks_read, chunks_from_secondary| RegionReport {
            region,
            chunks_read,
            chunks_from_secondary,
            bytes_read: 0,
        };
        assert_eq!(r("any", 12, 0).line(), None);
        let l = r("any", 312, 312).line().expect("line");
        assert!(
            l.starts_with("312 of 312 chunks served from the secondary region (the primary failed"),
            "{l}"
        );
        assert!(
            r("secondary", 5, 5)
                .line()
                .expect("line")
                .contains("--region secondary")
        );
        let j = serde_json::to_value(WithRegion {
            report: &serde_json::json!({"files_written": 3}),
            regions: r("any", 4, 1),
        })
        .expect("json");
        assert_eq!(j["files_written"], 3);
        assert_eq!(j["chunks_from_secondary"], 1);
        assert_eq!(j["region"], "any");
    }
}
