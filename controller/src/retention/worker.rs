//! The retention worker: a named task (`retention-worker`) started by `serve` when
//! `[retention]` sets at least one rule, stopped by its cancellation token.
//!
//! Every `interval` (the first run one interval after start-up, so a restart loop cannot forget
//! more often than configured) it applies the default rules to every (agent, source) group
//! ([`super::apply`], not a dry run) and logs each forgotten snapshot. A failed run is logged and
//! retried at the next interval; nothing is half-applied because the forget is one transaction.
//! With no rule configured the worker is not started: nothing is ever forgotten by default.

use lifeboat_common::clock::now_unix_ms;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::Outcome;
use crate::catalog::{Catalog, CatalogError};
use crate::config::RetentionSettings;

/// Applies `settings.rules` once, now, to every group; logs what it forgot.
pub async fn run_once(
    catalog: &Catalog,
    settings: &RetentionSettings,
) -> Result<Outcome, CatalogError> {
    let rules = settings.rules;
    let now = now_unix_ms();
    let outcome = catalog
        .run(move |c| super::apply(c, None, None, &rules, false, now))
        .await?;
    for g in &outcome.groups {
        for id in g.removed() {
            info!(agent = %g.agent, source = %g.source, snapshot = %id, "snapshot forgotten by retention");
        }
    }
    info!(
        groups = outcome.groups.len(),
        forgotten = outcome.forgotten,
        "retention applied"
    );
    Ok(outcome)
}

/// Starts the worker unless no rule is configured; returns whether it started.
pub fn spawn(catalog: Catalog, settings: RetentionSettings, shutdown: CancellationToken) -> bool {
    if settings.rules.is_empty() {
        info!("retention: no [retention] rules configured; every snapshot is kept");
        return false;
    }
    let span = tracing::info_span!("retention-worker");
    tokio::spawn(
        async move {
            info!(
                interval_secs = settings.interval.as_secs(),
                "retention worker started"
            );
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(settings.interval) => {}
                }
                if let Err(e) = run_once(&catalog, &settings).await {
                    warn!(error = %e, "retention run failed; retrying at the next interval");
                }
            }
            info!("retention worker stopped");
        }
        .instrument(span),
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::snapshots::{self, SnapshotRow};
    use crate::catalog::{Catalog, agents};
    use crate::retention::rules::Rules;

    fn row(id: &str, source: &str, at: i64) -> SnapshotRow {
        SnapshotRow::sample(id, "a", source, at)
    }

    #[tokio::test]
    async fn run_once_forgets_per_group_and_keeps_the_newest() {
        let cat = Catalog::open_in_memory().expect("open");
        cat.run_blocking(|c| {
            agents::insert(
                c,
                &agents::AgentRow {
                    id: "a".into(),
                    dedup_group: "a".into(),
                    cert_sha256: "f".into(),
                    not_after: 0,
                    created_at: 0,
                    last_seen: 0,
                    snapshots: 0,
                },
            )?;
            for (i, at) in [1_000, 2_000, 3_000].into_iter().enumerate() {
                snapshots::insert(c, &row(&format!("0{i}"), "web", at), &[])?;
            }
            snapshots::insert(c, &row("10", "db", 500), &[])?;
            Ok(())
        })
        .expect("seed");
        let settings = RetentionSettings {
            rules: Rules {
                last: 2,
                ..Rules::default()
            },
            ..RetentionSettings::default()
        };
        let out = run_once(&cat, &settings).await.expect("run");
        assert_eq!(out.forgotten, 1);
        let left: Vec<String> = cat
            .run_blocking(|c| snapshots::list(c, Some("a"), None))
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, ["10", "01", "02"], "db keeps its only snapshot");
        assert_eq!(run_once(&cat, &settings).await.expect("again").forgotten, 0);
        assert!(!spawn(
            cat,
            RetentionSettings::default(),
            CancellationToken::new()
        ));
    }
}
