//! The alert worker: a named task (`alert-worker`) started by `serve`, stopped by its
//! cancellation token.
//!
//! At start-up and then every `[alerts] interval` it judges the fleet ([`super::status`]) at the
//! fleet clock's now ([`super::clock`]), compares with the persisted last alerted states
//! ([`super::alerts::evaluate`], `alert_state`), and in one place ([`run_once`]) persists the new
//! states and logs each alert (warn when firing, info when resolved). The alerts then go to the
//! webhook sender, a second task delivering them one by one, in order, with retries.
//!
//! Failure modes:
//! - the state is persisted before the webhook is tried: a crash in between loses that webhook
//!   (the log line was written) but never repeats an alert after a restart;
//! - a restart recomputes everything from the catalog: a condition still firing stays silent, a
//!   condition that cleared while the controller was down sends its recovery;
//! - a full webhook queue (a receiver down for long) drops the alert with an error log rather
//!   than buffer without limit;
//! - a catalog error skips the round (logged); the next interval tries again.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use super::alerts::{self, Alert};
use super::status::{self, Presence};
use super::webhook::Webhook;
use crate::catalog::{Catalog, CatalogError, alert_state};
use crate::config::AlertSettings;

/// Alerts waiting for the webhook sender.
pub const WEBHOOK_QUEUE: usize = 1024;

/// Judges the fleet at `now_ms`, persists the alerted states and logs each alert; returns them.
pub async fn run_once(
    catalog: &Catalog,
    now_ms: i64,
    started_ms: i64,
    secondary_configured: bool,
    presence: Arc<dyn Presence>,
) -> Result<Vec<Alert>, CatalogError> {
    let alerts = catalog
        .run(move |c| {
            let s = status::collect(c, now_ms, secondary_configured, presence.as_ref())?;
            let observed = alerts::observe(&s, started_ms);
            let last = alert_state::load(c)?;
            let (alerts, next) = alerts::evaluate(&last, &observed, now_ms);
            alert_state::store(c, &next, now_ms)?;
            Ok(alerts)
        })
        .await?;
    for a in &alerts {
        let condition = alert_state::condition_name(a.condition);
        if a.firing {
            warn!(agent = %a.agent, source = %a.source, condition, detail = %a.detail, "alert firing");
        } else {
            info!(agent = %a.agent, source = %a.source, condition, detail = %a.detail, "alert resolved");
        }
    }
    Ok(alerts)
}

/// What the worker needs.
pub struct AlertWorker {
    pub catalog: Catalog,
    pub settings: AlertSettings,
    pub secondary_configured: bool,
    pub presence: Arc<dyn Presence>,
}

impl AlertWorker {
    /// Starts the worker (and the webhook sender when one is configured).
    pub fn spawn(self, shutdown: CancellationToken) {
        let webhook = match &self.settings.webhook {
            None => None,
            Some(w) => match Webhook::new(&w.url, w.secret.clone()) {
                Ok(hook) => Some(spawn_sender(hook, shutdown.clone())),
                Err(e) => {
                    error!(error = %e, "alert webhook disabled: fix [alerts] webhook_url");
                    None
                }
            },
        };
        super::clock::announce();
        let span = tracing::info_span!("alert-worker");
        tokio::spawn(self.run(webhook, shutdown).instrument(span));
    }

    async fn run(self, webhook: Option<mpsc::Sender<Alert>>, shutdown: CancellationToken) {
        info!(
            interval_secs = self.settings.interval.as_secs(),
            webhook = self.settings.webhook.is_some(),
            "alert worker started"
        );
        let started = super::clock::now_ms();
        loop {
            let now = super::clock::now_ms();
            match run_once(
                &self.catalog,
                now,
                started,
                self.secondary_configured,
                self.presence.clone(),
            )
            .await
            {
                Ok(alerts) => forward(webhook.as_ref(), alerts),
                Err(e) => warn!(error = %e, "alert round failed; retrying at the next interval"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
        info!("alert worker stopped");
    }
}

fn forward(webhook: Option<&mpsc::Sender<Alert>>, alerts: Vec<Alert>) {
    let Some(tx) = webhook else { return };
    for a in alerts {
        if let Err(e) = tx.try_send(a) {
            error!(error = %e, "alert webhook queue is full; alert dropped (it was logged)");
        }
    }
}

fn spawn_sender(hook: Webhook, shutdown: CancellationToken) -> mpsc::Sender<Alert> {
    let (tx, mut rx) = mpsc::channel::<Alert>(WEBHOOK_QUEUE);
    let span = tracing::info_span!("alert-webhook");
    tokio::spawn(
        async move {
            loop {
                let alert = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    a = rx.recv() => match a { Some(a) => a, None => break },
                };
                if let Err(e) = hook.deliver(&alert, &shutdown).await {
                    error!(agent = %alert.agent, source = %alert.source, error = %e, "alert webhook not delivered");
                }
            }
        }
        .instrument(span),
    );
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::alerts::Condition;
    use crate::fleet::status::NoPresence;

    const MIN: i64 = 60_000;

    #[tokio::test]
    async fn rounds_alert_once_and_a_restart_repeats_nothing() {
        let cat = crate::fleet::status::tests::seeded();
        let p: Arc<dyn Presence> = Arc::new(NoPresence);
        let first = run_once(&cat, 20 * MIN, 0, false, p.clone())
            .await
            .expect("round");
        let mut fired: Vec<_> = first
            .iter()
            .map(|a| (a.source.as_str(), a.condition, a.firing))
            .collect();
        fired.sort();
        assert_eq!(
            fired,
            vec![
                ("db", Condition::BackupFailing, true),
                ("etc", Condition::RpoBreached, true)
            ]
        );
        assert!(
            run_once(&cat, 21 * MIN, 0, false, p.clone())
                .await
                .expect("round")
                .is_empty()
        );
        // A "restart": only the catalog survives.
        let again = run_once(&cat, 22 * MIN, 0, false, p.clone())
            .await
            .expect("round");
        assert!(again.is_empty(), "{again:?}");
        // The db source breaches at 25 min (objective 15 min from its snapshot at 10 min).
        let later = run_once(&cat, 26 * MIN, 0, false, p).await.expect("round");
        assert_eq!(later.len(), 1, "{later:?}");
        assert_eq!(
            (later[0].condition, later[0].firing),
            (Condition::RpoBreached, true)
        );
    }
}
