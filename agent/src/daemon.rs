//! `lifeboat-agent run`: backs up each source on its schedule, the first time at start.
//!
//! The schedule of a source is the one the controller pushed over the control stream
//! ([`crate::control::Link`], a [`Schedule`] spec such as `every 5m`), or else the config's
//! `interval`. Slots are wall-clock (UTC) times, so a restarted agent and the controller judging
//! missed runs agree on them. The agent keeps its schedule while the controller is unreachable:
//! it spools nothing locally, so a failed backup is retried with exponential backoff (30 s,
//! 1 min, 2 min, … capped at the gap between slots) within its slot; when the next slot comes
//! before a retry would, the slot is *missed*: it is queued as a [`pb::MissedRun`] that the
//! control stream reports (on reconnect if need be), and the agent moves on to the next slot.
//! A new policy re-plans sources that are not retrying.
//!
//! Shutdown (the watch turning `true`) ends the loop; a backup in progress is abandoned before
//! its commit (its future is dropped), so no partial snapshot is committed. Chunks it uploaded
//! are durable and found by the next run's `HaveChunks`.

use std::time::Duration;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::schedule::{Schedule, seed_for};
use lifeboat_proto::v1 as pb;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::backup::{BackupContext, backup_source};
use crate::config::SourceConfig;
use crate::control::Link;
use crate::remote::Remote;

/// First retry delay after a failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);

/// The delay before the next attempt after `failures` consecutive failures.
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << shift).min(interval)
}

/// The schedule of `src`: the pushed one if it parses, else every `interval`.
pub fn schedule_of(src: &SourceConfig, link: &Link) -> Schedule {
    link.source_policy(&src.name)
        .and_then(|p| match Schedule::parse(&p.schedule) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(source = %src.name, error = %e, "pushed schedule ignored; using the config interval");
                None
            }
        })
        .unwrap_or(Schedule::Every {
            period: src.interval,
            jitter: Duration::ZERO,
        })
}

/// Where one source stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The slot the next attempt serves.
    pub slot_ms: i64,
    /// When the next attempt runs.
    pub due_ms: i64,
    pub failures: u32,
}

fn next_slot(s: &Schedule, after_ms: i64, seed: u64) -> i64 {
    // `None` only for a cron spec that never matches, which parsing refuses; an hour is safe.
    s.next_after(after_ms, seed).unwrap_or(after_ms + 3_600_000)
}

/// After a success at `now`: the next slot.
pub fn after_success(s: &Schedule, now: i64, seed: u64) -> Plan {
    let slot = next_slot(s, now, seed);
    Plan {
        slot_ms: slot,
        due_ms: slot,
        failures: 0,
    }
}

/// After a failure at `now`: a retry within the slot, or (`Some(slot)`) the slot is missed and
/// the plan moves to the next slot after `now`.
pub fn after_failure(s: &Schedule, p: &Plan, now: i64, seed: u64) -> (Plan, Option<i64>) {
    let failures = p.failures + 1;
    let following = next_slot(s, p.slot_ms, seed);
    let gap = Duration::from_millis(u64::try_from(following - p.slot_ms).unwrap_or(0).max(1));
    let retry = now + i64::try_from(backoff(failures, gap).as_millis()).unwrap_or(i64::MAX);
    if retry < following {
        return (
            Plan {
                slot_ms: p.slot_ms,
                due_ms: retry,
                failures,
            },
            None,
        );
    }
    let slot = next_slot(s, now, seed);
    (
        Plan {
            slot_ms: slot,
            due_ms: slot,
            failures,
        },
        Some(p.slot_ms),
    )
}

fn run_report(source: &str, phase: pb::RunPhase) -> pb::RunReport {
    pb::RunReport {
        source: source.to_owned(),
        kind: pb::RunKind::Backup as i32,
        phase: phase as i32,
        at_unix_ms: now_unix_ms(),
        ..Default::default()
    }
}

/// Runs until `shutdown` becomes true.
pub async fn run<R: Remote>(
    ctx: &BackupContext<'_, R>,
    sources: &[SourceConfig],
    link: &Link,
    mut shutdown: watch::Receiver<bool>,
) {
    let now = now_unix_ms();
    let mut plans: Vec<Plan> = vec![
        Plan {
            slot_ms: now,
            due_ms: now,
            failures: 0,
        };
        sources.len()
    ];
    let mut ran = vec![false; sources.len()];
    let mut policy = link.subscribe();
    loop {
        let seed = seed_for(&link.agent_id().unwrap_or_default());
        let Some((i, due)) = plans
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.due_ms))
            .min_by_key(|x| x.1)
        else {
            return;
        };
        let src = &sources[i];
        let wait = Duration::from_millis(u64::try_from(due - now_unix_ms()).unwrap_or(0));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
            r = policy.changed() => {
                if r.is_ok() {
                    let now = now_unix_ms();
                    for (j, s) in sources.iter().enumerate() {
                        if ran[j] && plans[j].failures == 0 {
                            plans[j] = after_success(&schedule_of(s, link), now, seed);
                        }
                    }
                    info!("schedule re-planned with the controller's policy");
                } else {
                    // The link is gone (cannot happen while we hold it); keep the current plan.
                    policy = link.subscribe();
                }
                continue;
            }
        }
        link.report(run_report(&src.name, pb::RunPhase::Started));
        let result = tokio::select! {
            r = async {
                let _one = link.run_lock.lock().await;
                backup_source(ctx, src).await
            } => r,
            _ = shutdown.wait_for(|s| *s) => {
                warn!(source = %src.name, "shutdown during a backup: abandoned before commit, nothing partial was committed");
                return;
            }
        };
        ran[i] = true;
        let sched = schedule_of(src, link);
        let now = now_unix_ms();
        match result {
            Ok(report) => {
                plans[i] = after_success(&sched, now, seed);
                if report.partial {
                    warn!(source = %src.name, snapshot = %report.snapshot_id, unreadable = report.unreadable.len(), "backup committed but partial: some inputs were unreadable");
                }
                let mut r = run_report(&src.name, pb::RunPhase::Succeeded);
                r.snapshot_id = report.snapshot_id.clone();
                r.summary_json = serde_json::to_string(&report).unwrap_or_default();
                link.report(r);
                info!(source = %src.name, schedule = %sched, next_in_s = (plans[i].due_ms - now) / 1000, "next backup scheduled");
            }
            Err(e) => {
                let (plan, missed) = after_failure(&sched, &plans[i], now, seed);
                plans[i] = plan;
                let mut r = run_report(&src.name, pb::RunPhase::Failed);
                r.error = e.to_string();
                link.report(r);
                error!(source = %src.name, error = %e, exit_class = ?e.class(), failures = plans[i].failures, retry_in_s = (plans[i].due_ms - now) / 1000, "backup failed; will retry");
                if let Some(slot) = missed {
                    warn!(source = %src.name, slot_unix_ms = slot, "scheduled slot missed; it will be reported to the controller");
                    link.missed(pb::MissedRun {
                        source: src.name.clone(),
                        slot_unix_ms: slot,
                        reason: e.to_string(),
                    });
                }
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

    #[test]
    fn failures_retry_within_the_slot_then_report_it_missed() {
        let s = Schedule::parse("every 5m").expect("spec");
        let min = 60_000;
        let p = after_success(&s, 0, 0);
        assert_eq!(p.slot_ms, 5 * min);
        // Fails at the slot: retried after 30 s, still the same slot.
        let (p1, missed) = after_failure(&s, &p, 5 * min, 0);
        assert_eq!(missed, None);
        assert_eq!(
            (p1.slot_ms, p1.due_ms, p1.failures),
            (5 * min, 5 * min + 30_000, 1)
        );
        // Keeps failing: backoff 1, 2 min; then the next retry would pass the next slot.
        let (p2, _) = after_failure(&s, &p1, p1.due_ms, 0);
        let (p3, _) = after_failure(&s, &p2, p2.due_ms, 0);
        assert_eq!(p3.slot_ms, 5 * min);
        let (p4, missed) = after_failure(&s, &p3, p3.due_ms, 0);
        assert_eq!(missed, Some(5 * min), "{p3:?} -> {p4:?}");
        assert_eq!(p4.slot_ms, 10 * min);
        assert_eq!(p4.due_ms, 10 * min);
        // A success resets the failures.
        assert_eq!(after_success(&s, p4.due_ms, 0).failures, 0);
    }

    #[test]
    fn a_pushed_schedule_wins_over_the_config_interval() {
        let link = Link::default();
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["ca.pem", "a.pem", "a.key", "k"] {
            std::fs::write(dir.path().join(f), "x").expect("write");
        }
        let p = dir.path().join("agent.toml");
        std::fs::write(
            &p,
            "state_dir = \"s\"\nmaster_key = \"k\"\n[controller]\naddress = \"https://127.0.0.1:1\"\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [\"/srv\"]\ninterval = \"1h\"\n",
        )
        .expect("config");
        let cfg = crate::config::AgentConfig::load(&p).expect("load");
        let src = &cfg.sources[0];
        let every = |secs| Schedule::Every {
            period: Duration::from_secs(secs),
            jitter: Duration::ZERO,
        };
        assert_eq!(schedule_of(src, &link), every(3600));
        link.set_policy(pb::AgentPolicy {
            sources: vec![pb::SourcePolicy {
                source: "web".into(),
                schedule: "every 10m".into(),
                ..Default::default()
            }],
            heartbeat_ms: 15_000,
        });
        assert_eq!(schedule_of(src, &link), every(600));
    }
}
