//! `lifeboat-agent run`: backs up each source every `interval`, the first time at start.
//!
//! A failed backup is retried with exponential backoff (30 s, 1 min, 2 min, … capped at the
//! source's interval). Shutdown (the watch turning `true`) ends the loop; a backup in progress
//! is abandoned before its commit (its future is dropped), so no partial snapshot is committed.
//! Chunks it uploaded are durable and found by the next run's `HaveChunks`.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::backup::{BackupContext, backup_source};
use crate::config::SourceConfig;
use crate::remote::Remote;

/// First retry delay after a failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);

/// The delay before the next attempt after `failures` consecutive failures.
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << shift).min(interval)
}

/// Runs until `shutdown` becomes true.
pub async fn run<R: Remote>(
    ctx: &BackupContext<'_, R>,
    sources: &[SourceConfig],
    mut shutdown: watch::Receiver<bool>,
) {
    let now = Instant::now();
    let mut due: Vec<Instant> = vec![now; sources.len()];
    let mut failures: Vec<u32> = vec![0; sources.len()];
    loop {
        let Some((i, &when)) = due.iter().enumerate().min_by_key(|(_, t)| **t) else {
            return;
        };
        let src = &sources[i];
        tokio::select! {
            _ = tokio::time::sleep_until(when) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let result = tokio::select! {
            r = backup_source(ctx, src) => r,
            _ = shutdown.wait_for(|s| *s) => {
                warn!(source = %src.name, "shutdown during a backup: abandoned before commit, nothing partial was committed");
                return;
            }
        };
        match result {
            Ok(report) => {
                failures[i] = 0;
                due[i] = Instant::now() + src.interval;
                if report.partial {
                    warn!(source = %src.name, snapshot = %report.snapshot_id, unreadable = report.unreadable.len(), "backup committed but partial: some inputs were unreadable");
                }
                info!(source = %src.name, next_in_s = src.interval.as_secs(), "next backup scheduled");
            }
            Err(e) => {
                failures[i] += 1;
                let delay = backoff(failures[i], src.interval);
                due[i] = Instant::now() + delay;
                error!(source = %src.name, error = %e, exit_class = ?e.class(), failures = failures[i], retry_in_s = delay.as_secs(), "backup failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped_by_the_interval() {
        let hour = Duration::from_secs(3600);
        assert_eq!(backoff(1, hour), Duration::from_secs(30));
        assert_eq!(backoff(2, hour), Duration::from_secs(60));
        assert_eq!(backoff(3, hour), Duration::from_secs(120));
        assert_eq!(backoff(50, hour), hour);
        assert_eq!(backoff(1, Duration::from_secs(10)), Duration::from_secs(10));
    }
}
