//! Runs the controller's commands with the same code as the CLI: `BackupNow` through
//! [`crate::backup::backup_source`], `RestoreNow` through [`crate::commands::restore::execute`].
//!
//! Each run sends STARTED, then (restores) PROGRESS once the manifest is loaded and verified
//! (entries and bytes to restore) and about once a second with the chunks read so far (in the
//! report's summary JSON, `stage` says which), and finally SUCCEEDED or FAILED with the JSON summary the CLI prints with `--json`. A
//! backup of every source reports each source, then a final report with an empty source (the
//! one `lifeboatctl backup --agent A` without `--source` waits for). Runs hold the link's run
//! lock, so a commanded run never overlaps a scheduled backup.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::keys::DataKeys;
use lifeboat_proto::v1 as pb;

use super::Link;
use crate::backup::read::FsOpener;
use crate::backup::{BackupContext, backup_source};
use crate::cache::FileCache;
use crate::cli::{RegionArg, RestoreArgs};
use crate::client::GrpcRemote;
use crate::commands::Failure;
use crate::config::AgentConfig;

/// How often a restore reports progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What a command needs: the config, the data keys, the file cache and the link.
pub struct Executor {
    pub cfg: AgentConfig,
    pub keys: DataKeys,
    pub cache: Arc<dyn FileCache>,
    pub link: Arc<Link>,
}

fn report(cmd: &str, kind: pb::RunKind, source: &str, phase: pb::RunPhase) -> pb::RunReport {
    pb::RunReport {
        command_id: cmd.to_owned(),
        source: source.to_owned(),
        kind: kind as i32,
        phase: phase as i32,
        at_unix_ms: now_unix_ms(),
        ..Default::default()
    }
}

impl Executor {
    /// Runs a `BackupNow` and reports it.
    pub async fn backup(self: Arc<Self>, remote: GrpcRemote, b: pb::BackupNow) {
        let kind = pb::RunKind::Backup;
        let sources: Vec<_> = if b.source.is_empty() {
            self.cfg.sources.clone()
        } else {
            self.cfg
                .sources
                .iter()
                .filter(|s| s.name == b.source)
                .cloned()
                .collect()
        };
        let link = &self.link;
        link.report(report(
            &b.command_id,
            kind,
            &b.source,
            pb::RunPhase::Started,
        ));
        if sources.is_empty() {
            let mut r = report(&b.command_id, kind, &b.source, pb::RunPhase::Failed);
            r.error = format!("no source {:?} in {}", b.source, self.cfg.path.display());
            link.report(r);
            return;
        }
        let _one = link.run_lock.lock().await;
        let ctx = BackupContext {
            remote: &remote,
            keys: self.keys.clone(),
            zstd_level: self.cfg.zstd_level,
            cache: self.cache.clone(),
            opener: Arc::new(FsOpener),
            bandwidth: link.bandwidth(),
            progress: {
                let (link, cmd) = (self.link.clone(), b.command_id.clone());
                Arc::new(move |p: &crate::backup::BackupProgress| {
                    let mut r =
                        report(&cmd, pb::RunKind::Backup, &p.source, pb::RunPhase::Progress);
                    r.bytes_done = p.bytes_done;
                    r.bytes_total = p.bytes_total;
                    link.report(r);
                })
            },
            scratch_dir: self.cfg.state_dir.clone(),
        };
        let (mut summaries, mut failed) = (Vec::new(), 0usize);
        for src in &sources {
            if b.source.is_empty() {
                link.report(report(
                    &b.command_id,
                    kind,
                    &src.name,
                    pb::RunPhase::Started,
                ));
            }
            tracing::info!(source = %src.name, command = %b.command_id, "backup requested by the controller");
            let r = match backup_source(&ctx, src).await {
                Ok(rep) => {
                    let mut r = report(&b.command_id, kind, &src.name, pb::RunPhase::Succeeded);
                    r.snapshot_id = rep.snapshot_id.clone();
                    r.bytes_done = rep.bytes_read;
                    r.bytes_total = rep.logical_bytes;
                    r.files_done = rep.files;
                    let json = serde_json::to_value(&rep).unwrap_or_default();
                    r.summary_json = json.to_string();
                    summaries.push(json);
                    r
                }
                Err(e) => {
                    failed += 1;
                    let f = Failure::new(&e, Some(&self.cfg));
                    tracing::error!(source = %src.name, error = %f.message, "commanded backup failed");
                    let mut r = report(&b.command_id, kind, &src.name, pb::RunPhase::Failed);
                    r.error = f.message;
                    r
                }
            };
            link.report(r);
        }
        if b.source.is_empty() {
            let phase = if failed == 0 {
                pb::RunPhase::Succeeded
            } else {
                pb::RunPhase::Failed
            };
            let mut r = report(&b.command_id, kind, "", phase);
            if failed > 0 {
                r.error = format!("{failed} of {} sources failed", sources.len());
            }
            r.summary_json = serde_json::Value::Array(summaries).to_string();
            link.report(r);
        }
    }

    /// Runs a `RestoreNow` and reports it.
    pub async fn restore(self: Arc<Self>, remote: GrpcRemote, r: pb::RestoreNow) {
        let kind = pb::RunKind::Restore;
        let link = self.link.clone();
        link.report(report(
            &r.command_id,
            kind,
            &r.source,
            pb::RunPhase::Started,
        ));
        let args = match restore_args(&r) {
            Ok(a) => a,
            Err(e) => {
                let mut f = report(&r.command_id, kind, &r.source, pb::RunPhase::Failed);
                f.error = e;
                link.report(f);
                return;
            }
        };
        let _one = link.run_lock.lock().await;
        tracing::info!(source = %r.source, command = %r.command_id, "restore requested by the controller");
        let counts = remote.clone();
        let (cmd, source) = (r.command_id.clone(), r.source.clone());
        let on_manifest = {
            let link = link.clone();
            move |m: &lifeboat_common::manifest::EncodedManifest| {
                let mut p = report(&cmd, kind, &source, pb::RunPhase::Progress);
                p.bytes_total = m.logical_bytes();
                p.summary_json = serde_json::json!({
                    "stage": "manifest loaded and verified",
                    "entries_total": m.len(),
                    "bytes_total": p.bytes_total,
                })
                .to_string();
                link.report(p);
            }
        };
        let run =
            crate::commands::restore::execute(&self.cfg, &self.keys, remote, &args, &on_manifest);
        tokio::pin!(run);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        let outcome = loop {
            tokio::select! {
                o = &mut run => break o,
                _ = tick.tick() => {
                    let mut p = report(&r.command_id, kind, &r.source, pb::RunPhase::Progress);
                    p.summary_json = serde_json::json!({
                        "stage": "restoring",
                        "chunks_read": counts.read_counts().chunks,
                    })
                    .to_string();
                    link.report(p);
                }
            }
        };
        let fin = match outcome {
            Ok(o) => {
                let phase = if o.failure.is_none() {
                    pb::RunPhase::Succeeded
                } else {
                    pb::RunPhase::Failed
                };
                let mut f = report(&r.command_id, kind, &r.source, phase);
                f.snapshot_id = o.snapshot_id;
                f.summary_json = o.json.to_string();
                f.error = o.failure.map(|x| x.message).unwrap_or_default();
                f
            }
            Err(e) => {
                let mut f = report(&r.command_id, kind, &r.source, pb::RunPhase::Failed);
                f.error = e.message;
                f
            }
        };
        link.report(fin);
    }
}

/// The `restore` command line a `RestoreNow` stands for. A target must be absolute: the
/// agent's working directory means nothing to the operator who sent it.
pub fn restore_args(r: &pb::RestoreNow) -> Result<RestoreArgs, String> {
    let to = match r.target.as_str() {
        "" => None,
        t if PathBuf::from(t).is_absolute() => Some(PathBuf::from(t)),
        t => return Err(format!("restore target {t:?} must be an absolute path")),
    };
    Ok(RestoreArgs {
        source: r.source.clone(),
        snapshot: if r.snapshot.is_empty() {
            "latest".into()
        } else {
            r.snapshot.clone()
        },
        to,
        in_place: r.in_place,
        path: None,
        delete: r.delete,
        json: true,
        database: None,
        as_name: (!r.database_as.is_empty()).then(|| r.database_as.clone()),
        drop_existing: r.drop_existing,
        users: false,
        users_only: false,
        from_agent: None,
        reload: false,
        region: RegionArg::Any,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_now_maps_to_the_cli_arguments() {
        let r = pb::RestoreNow {
            command_id: "c".into(),
            source: "web".into(),
            snapshot: String::new(),
            target: "/srv/restore".into(),
            ..Default::default()
        };
        let a = restore_args(&r).expect("args");
        assert_eq!(a.snapshot, "latest");
        assert_eq!(a.to.as_deref(), Some(std::path::Path::new("/srv/restore")));
        assert!(!a.in_place && a.as_name.is_none());
        let rel = pb::RestoreNow {
            target: "restore".into(),
            ..r
        };
        assert!(
            restore_args(&rel)
                .expect_err("relative")
                .contains("absolute")
        );
    }
}
