//! Replication figures, computed from the catalog: what `lifeboatctl replication status` shows
//! (AdminService.ReplicationStatus) and what `/metrics` exports, so the two always agree.

use lifeboat_proto::v1 as pb;

use std::time::Duration;

use lifeboat_common::clock::now_unix_ms;

use super::queue;
use crate::catalog::{Catalog, CatalogError};
use crate::error::ServiceError;
use crate::service::State;

/// The longest a status call may wait for its condition.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

fn holds(wait: pb::ReplicationWait, r: &pb::ReplicationStatusResponse) -> bool {
    match wait {
        pb::ReplicationWait::None => true,
        pb::ReplicationWait::CaughtUp => r.pending_objects == 0,
        pb::ReplicationWait::Error => !r.last_error.is_empty(),
    }
}

/// The status, once the request's wait condition holds. The check is repeated after each copy
/// attempt of the worker (it bumps `State::replication_progress`), never on a timer; past
/// `timeout_ms` the answer is `DEADLINE_EXCEEDED` with the figures at that moment.
pub async fn report_when(
    state: &State,
    req: &pb::ReplicationStatusRequest,
) -> Result<pb::ReplicationStatusResponse, ServiceError> {
    let wait = pb::ReplicationWait::try_from(req.wait)
        .map_err(|_| ServiceError::invalid(format!("unknown wait condition {}", req.wait)))?;
    let timeout = Duration::from_millis(req.timeout_ms).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + timeout;
    // Subscribe before the first check, so that no progress between check and wait is missed.
    let mut progress = state.replication_progress.subscribe();
    let secondary = state.secondary.as_ref().map(|s| s.location().to_owned());
    loop {
        let r = report(&state.catalog, secondary.clone(), now_unix_ms()).await?;
        if holds(wait, &r) {
            return Ok(r);
        }
        if !r.configured {
            return Err(ServiceError::FailedPrecondition(
                "replication is not configured (no [secondary] store): nothing to wait for".into(),
            ));
        }
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    return Err(ServiceError::Internal("replication worker stopped".into()));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(ServiceError::DeadlineExceeded(format!(
                    "replication status: condition {} not met after {} ms ({} objects pending, last error: {})",
                    match wait {
                        pb::ReplicationWait::CaughtUp => "caught-up",
                        pb::ReplicationWait::Error => "error",
                        pb::ReplicationWait::None => "none",
                    },
                    timeout.as_millis(),
                    r.pending_objects,
                    if r.last_error.is_empty() { "none" } else { r.last_error.as_str() },
                )));
            }
        }
    }
}

/// Reads the queue's figures; `secondary` is the secondary's location (`None`: not configured).
pub async fn report(
    catalog: &Catalog,
    secondary: Option<String>,
    now_ms: i64,
) -> Result<pb::ReplicationStatusResponse, CatalogError> {
    let Some(secondary) = secondary else {
        return Ok(pb::ReplicationStatusResponse::default());
    };
    let (sum, newest) = catalog
        .run(|c| Ok((queue::summary(c)?, queue::newest_replicated(c)?)))
        .await?;
    let lag_ms = sum
        .oldest_pending_at
        .map_or(0, |t| u64::try_from(now_ms.saturating_sub(t)).unwrap_or(0));
    let (last_error_key, last_error, last_error_at_unix_ms) = sum.last_error.unwrap_or_default();
    Ok(pb::ReplicationStatusResponse {
        configured: true,
        secondary,
        pending_objects: sum.pending_objects,
        pending_bytes: sum.pending_bytes,
        lag_ms,
        replicated_objects: sum.replicated_objects,
        last_error,
        last_error_key,
        last_error_at_unix_ms,
        newest_replicated: newest
            .into_iter()
            .map(
                |(agent_id, source, snapshot_id, committed_at_unix_ms)| pb::ReplicatedSnapshot {
                    agent_id,
                    source,
                    snapshot_id,
                    committed_at_unix_ms,
                },
            )
            .collect(),
    })
}

/// The Prometheus text exposition of `r` (format 0.0.4).
pub fn prometheus_text(r: &pb::ReplicationStatusResponse) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    gauge(
        "lifeboat_replication_configured",
        "1 if a secondary object store is configured.",
        u8::from(r.configured).to_string(),
    );
    gauge(
        "lifeboat_replication_lag_seconds",
        "Age of the oldest object not yet copied to the secondary (0 when none is pending).",
        format!("{:.3}", r.lag_ms as f64 / 1000.0),
    );
    gauge(
        "lifeboat_replication_pending_objects",
        "Objects waiting to be copied to the secondary.",
        r.pending_objects.to_string(),
    );
    gauge(
        "lifeboat_replication_pending_bytes",
        "Bytes waiting to be copied to the secondary.",
        r.pending_bytes.to_string(),
    );
    gauge(
        "lifeboat_replication_replicated_objects",
        "Objects copied to the secondary.",
        r.replicated_objects.to_string(),
    );
    out.push_str(
        "# HELP lifeboat_replication_newest_replicated_timestamp_seconds Commit time of the newest snapshot restorable from the secondary, per agent and source.\n\
         # TYPE lifeboat_replication_newest_replicated_timestamp_seconds gauge\n",
    );
    for s in &r.newest_replicated {
        out.push_str(&format!(
            "lifeboat_replication_newest_replicated_timestamp_seconds{{agent=\"{}\",source=\"{}\"}} {:.3}\n",
            label(&s.agent_id),
            label(&s.source),
            s.committed_at_unix_ms as f64 / 1000.0
        ));
    }
    out
}

/// Escapes a label value (agent ids and source names are already restricted; this keeps the
/// exposition valid whatever they hold).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_gauge_and_escapes_labels() {
        let r = pb::ReplicationStatusResponse {
            configured: true,
            pending_objects: 3,
            pending_bytes: 4096,
            lag_ms: 1500,
            newest_replicated: vec![pb::ReplicatedSnapshot {
                agent_id: "web-01".into(),
                source: "we\"b".into(),
                snapshot_id: "s".into(),
                committed_at_unix_ms: 2_000,
            }],
            ..Default::default()
        };
        let t = prometheus_text(&r);
        assert!(
            t.contains("lifeboat_replication_lag_seconds 1.500\n"),
            "{t}"
        );
        assert!(
            t.contains("lifeboat_replication_pending_bytes 4096\n"),
            "{t}"
        );
        assert!(
            t.contains("lifeboat_replication_pending_objects 3\n"),
            "{t}"
        );
        assert!(
            t.contains("{agent=\"web-01\",source=\"we\\\"b\"} 2.000\n"),
            "{t}"
        );
    }
}
