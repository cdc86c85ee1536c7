//! The per-agent limit on concurrent upload streams (`UploadChunks` and `CommitSnapshot`).
//!
//! Each open stream holds memory on the controller (a pack being built, up to
//! [`crate::pack::TARGET_PACK_BYTES`] plus one message; or a commit's reference batch), so one
//! agent, compromised or buggy, could otherwise exhaust the controller by opening streams in
//! parallel. The real agent opens one stream at a time per backup, and runs backups of its
//! sources one after another, so [`MAX_STREAMS_PER_AGENT`] leaves room for a retry overlapping a
//! stream the controller has not yet seen end.
//!
//! A stream over the limit is refused at once with `RESOURCE_EXHAUSTED` naming the agent and the
//! limit; nothing is queued. The count is in memory: a restart drops every stream anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::ServiceError;

/// Most `UploadChunks` plus `CommitSnapshot` streams one agent may have open at once.
pub const MAX_STREAMS_PER_AGENT: usize = 4;

/// Counts open streams per agent.
#[derive(Debug)]
pub struct StreamLimiter {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
    /// Woken on every open and close, for [`StreamLimiter::wait_until`].
    changed: tokio::sync::Notify,
}

impl Default for StreamLimiter {
    fn default() -> Self {
        StreamLimiter::new(MAX_STREAMS_PER_AGENT)
    }
}

impl StreamLimiter {
    pub fn new(max: usize) -> Self {
        StreamLimiter {
            max,
            open: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Opens a stream for `agent`, or refuses it when the agent already has `max` open. The
    /// returned permit closes the stream when dropped.
    pub fn open(self: &Arc<Self>, agent: &str, rpc: &str) -> Result<StreamPermit, ServiceError> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| ServiceError::Internal("stream limiter lock poisoned".into()))?;
        let n = open.entry(agent.to_owned()).or_insert(0);
        if *n >= self.max {
            tracing::warn!(agent, rpc, limit = self.max, "concurrent stream limit hit");
            return Err(ServiceError::ResourceExhausted(format!(
                "agent {agent} already has {} upload/commit streams open, the limit is {}; \
                 {rpc} refused: wait for the others to finish (is another backup of this agent \
                 running?)",
                *n, self.max
            )));
        }
        *n += 1;
        drop(open);
        self.changed.notify_waiters();
        Ok(StreamPermit {
            limiter: Arc::clone(self),
            agent: agent.to_owned(),
        })
    }

    /// Streams `agent` has open now.
    pub fn open_for(&self, agent: &str) -> usize {
        self.open
            .lock()
            .map(|o| o.get(agent).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Returns once `agent` has exactly `n` streams open, woken by each open and close (no
    /// polling). Used by tests and diagnostics to observe the limiter; bound it with a timeout.
    pub async fn wait_until(&self, agent: &str, n: usize) {
        loop {
            // Registered before the check, so a change between the check and the await wakes us.
            let changed = self.changed.notified();
            if self.open_for(agent) == n {
                return;
            }
            changed.await;
        }
    }
}

/// One open stream; dropping it (the handler returning, or the client going away) closes it.
#[derive(Debug)]
pub struct StreamPermit {
    limiter: Arc<StreamLimiter>,
    agent: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limiter.open.lock()
            && let Some(n) = open.get_mut(&self.agent)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.agent);
            }
        }
        self.limiter.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_agent_separately_and_frees_on_drop() {
        let l = Arc::new(StreamLimiter::new(2));
        let a1 = l.open("web-01", "UploadChunks").expect("first");
        let a2 = l.open("web-01", "CommitSnapshot").expect("second");
        let e = l.open("web-01", "UploadChunks").expect_err("third");
        assert!(
            matches!(&e, ServiceError::ResourceExhausted(m)
            if m.contains("web-01") && m.contains("limit is 2")),
            "{e}"
        );
        let status: tonic::Status = e.into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let _b = l.open("db-01", "UploadChunks").expect("another agent");
        drop(a1);
        assert_eq!(l.open_for("web-01"), 1);
        let _a3 = l.open("web-01", "UploadChunks").expect("freed");
        drop(a2);
        drop(_a3);
        assert_eq!(l.open_for("web-01"), 0);
    }
}
