//! The policy's CPU niceness, so backups yield to the VM's production work.
//!
//! The agent exists to back up, so the whole process (and the dump tools it starts, which
//! inherit it) runs at the highest `nice` any source's policy asks for. Niceness only goes up:
//! lowering it needs privileges an agent should not use for this, and a policy that lowers it
//! takes effect at the agent's next start. Applied with `renice` (util-linux, always on Debian)
//! rather than a libc call, keeping the agent free of `unsafe`.

use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use lifeboat_proto::v1 as pb;
use tracing::{info, warn};

/// The niceness applied so far (0 at start).
static APPLIED: AtomicI32 = AtomicI32::new(0);

/// The niceness a policy asks for: the highest of its sources', clamped to 0..=19.
pub fn wanted(policy: &pb::AgentPolicy) -> i32 {
    policy
        .sources
        .iter()
        .map(|s| s.nice.clamp(0, 19))
        .max()
        .unwrap_or(0)
}

/// Raises this process's niceness to what `policy` asks, if higher than what is applied.
pub fn apply(policy: &pb::AgentPolicy) {
    let want = wanted(policy);
    if want <= APPLIED.load(Ordering::Relaxed) {
        return;
    }
    let pid = std::process::id().to_string();
    match Command::new("renice")
        .args(["-n", &want.to_string(), "-p", &pid])
        .output()
    {
        Ok(out) if out.status.success() => {
            APPLIED.store(want, Ordering::Relaxed);
            info!(
                nice = want,
                "CPU niceness raised by the controller's policy"
            );
        }
        Ok(out) => warn!(
            nice = want,
            error = %String::from_utf8_lossy(&out.stderr).trim(),
            "renice refused; backups keep the current CPU priority"
        ),
        Err(e) => {
            warn!(nice = want, error = %e, "cannot run renice; backups keep the current CPU priority")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_source_niceness_is_wanted_and_clamped() {
        let src = |nice| pb::SourcePolicy {
            nice,
            ..Default::default()
        };
        let p = pb::AgentPolicy {
            sources: vec![src(5), src(12), src(40)],
            heartbeat_ms: 0,
        };
        assert_eq!(wanted(&p), 19);
        let p = pb::AgentPolicy {
            sources: vec![src(-5), src(3)],
            heartbeat_ms: 0,
        };
        assert_eq!(wanted(&p), 3);
        assert_eq!(wanted(&pb::AgentPolicy::default()), 0);
    }
}
