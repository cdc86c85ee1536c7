//! The registry of live agent control streams (`AgentService.Control`).
//!
//! Every connected agent holds one long-lived stream it dialled itself (agents may sit behind
//! NAT). The registry maps the agent id to:
//! - a **bounded** sender of [`pb::ControllerCommand`]s ([`COMMAND_QUEUE`] deep): a stuck agent
//!   cannot make the controller buffer without limit; a full queue refuses the command with a
//!   clear error instead;
//! - what its hello announced (version, sources), when it connected and when it last spoke;
//! - the `lifeboatctl` calls waiting for the run reports of commands sent to it, by command id.
//!
//! Invariants and failure modes:
//! - One stream per agent: a new stream replaces the previous one (its sender is dropped, so the
//!   old stream ends). Each connection has a serial number, so the old stream's clean-up cannot
//!   unregister its successor.
//! - A waiter lives in its agent's entry: when the agent disconnects, the entry and with it every
//!   waiter's sender are dropped, so the waiting call learns at once that the run's fate is
//!   unknown ([`RunWaiter::next`] returns `None`).
//! - At shutdown [`Registry::close_all`] drops every entry: the streams end and the graceful
//!   shutdown is not held up by connections that never finish on their own.
//! - Everything is in memory: a restarted controller knows no agent until it reconnects
//!   (agents reconnect by themselves with backoff). The last announced version of each agent is
//!   kept after it disconnects (until restart) for `agent list`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lifeboat_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::ServiceError;

pub mod run;
pub mod stream;

/// Commands buffered per connected agent before sends are refused.
pub const COMMAND_QUEUE: usize = 16;
/// Run reports buffered per waiting `lifeboatctl` call.
pub const REPORT_QUEUE: usize = 64;
/// The heartbeat interval the controller asks for (AgentPolicy.heartbeat_ms).
pub const HEARTBEAT_MS: u64 = 15_000;
/// The built-in recovery point objective (the user's 15 minutes).
pub const DEFAULT_RPO_MS: u64 = 15 * 60 * 1000;

/// What the outbound half of a control stream carries.
pub type CommandTx = mpsc::Sender<Result<pb::ControllerCommand, Status>>;

/// The built-in policy for the sources of a hello, until stored policies exist: databases every
/// 5 minutes, files every 10, both well inside the 15-minute RPO so that one late or failed run
/// does not breach it.
pub fn default_policy(hello: &pb::AgentHello) -> pb::AgentPolicy {
    pb::AgentPolicy {
        sources: hello
            .sources
            .iter()
            .map(|s| pb::SourcePolicy {
                source: s.name.clone(),
                schedule: if s.kind == "mysql" {
                    "every 5m".into()
                } else {
                    "every 10m".into()
                },
                rpo_ms: DEFAULT_RPO_MS,
                bandwidth_bytes_per_sec: 0,
                nice: 0,
            })
            .collect(),
        heartbeat_ms: HEARTBEAT_MS,
    }
}

/// The policy a newly connected agent gets first: the stored policies resolved for its hello's
/// sources ([`crate::fleet::policy::effective_for`], which falls back to the built-in defaults
/// per field). If the catalog cannot be read, [`default_policy`] is sent (and logged) rather
/// than refusing the stream: the agent must keep a schedule either way.
pub async fn initial_policy(
    state: &crate::service::State,
    agent: &crate::auth::AgentCtx,
    hello: &pb::AgentHello,
) -> pb::AgentPolicy {
    let sources: Vec<(String, String)> = hello
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.kind.clone()))
        .collect();
    let (name, group) = (agent.id.to_string(), agent.group.clone());
    let found = state
        .catalog
        .run(move |c| crate::fleet::policy::effective_for(c, &name, &group, &sources))
        .await;
    match found {
        Ok(sources) => pb::AgentPolicy {
            sources,
            heartbeat_ms: HEARTBEAT_MS,
        },
        Err(e) => {
            tracing::warn!(agent = %agent.id, error = %e, "stored policies unreadable; sending the built-in defaults");
            default_policy(hello)
        }
    }
}

/// A connected agent as others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub version: String,
    pub sources: Vec<pb::HelloSource>,
    pub connected_since_ms: i64,
    pub last_heartbeat_ms: i64,
}

#[derive(Debug)]
struct Entry {
    conn: u64,
    tx: CommandTx,
    live: Live,
    waiters: HashMap<String, mpsc::Sender<pb::RunReport>>,
}

/// The live control streams; one per controller, shared by the handlers.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<HashMap<String, Entry>>,
    /// Last announced version per agent, kept after it disconnects.
    versions: Mutex<HashMap<String, String>>,
    next_conn: AtomicU64,
    shutdown: CancellationToken,
    /// Woken on every connect and disconnect ([`Registry::wait_connected`]).
    changed: tokio::sync::Notify,
}

/// Registration of one stream; unregisters it (and only it) when dropped.
#[derive(Debug)]
pub struct Connection {
    registry: Arc<Registry>,
    agent: String,
    conn: u64,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.registry.unregister(&self.agent, self.conn);
    }
}

/// A `lifeboatctl` call following one command's run reports.
#[derive(Debug)]
pub struct RunWaiter {
    rx: mpsc::Receiver<pb::RunReport>,
}

impl RunWaiter {
    /// The next report; `None` when the agent disconnected (or was replaced) before the end.
    pub async fn next(&mut self) -> Option<pb::RunReport> {
        self.rx.recv().await
    }
}

/// Why a command could not be queued for `agent`.
fn refused<T>(agent: &str, e: &mpsc::error::TrySendError<T>) -> ServiceError {
    match e {
        mpsc::error::TrySendError::Full(_) => ServiceError::ResourceExhausted(format!(
            "agent {agent} has {COMMAND_QUEUE} commands queued that it has not taken yet; \
             try again when it catches up"
        )),
        mpsc::error::TrySendError::Closed(_) => {
            ServiceError::FailedPrecondition(format!("agent {agent} just disconnected"))
        }
    }
}

fn poisoned() -> ServiceError {
    ServiceError::Internal("control registry lock poisoned".into())
}

impl Registry {
    /// Cancelled at shutdown: stream handlers end on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Registers `agent`'s new stream (replacing an older one) and returns the guard.
    pub fn register(
        self: &Arc<Self>,
        agent: &str,
        hello: &pb::AgentHello,
        tx: CommandTx,
        now_ms: i64,
    ) -> Result<Connection, ServiceError> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let live = Live {
            version: hello.version.clone(),
            sources: hello.sources.clone(),
            connected_since_ms: now_ms,
            last_heartbeat_ms: now_ms,
        };
        let old = self.entries.lock().map_err(|_| poisoned())?.insert(
            agent.to_owned(),
            Entry {
                conn,
                tx,
                live,
                waiters: HashMap::new(),
            },
        );
        if old.is_some() {
            tracing::info!(agent, "control stream replaced by a new connection");
        }
        self.versions
            .lock()
            .map_err(|_| poisoned())?
            .insert(agent.to_owned(), hello.version.clone());
        self.changed.notify_waiters();
        Ok(Connection {
            registry: Arc::clone(self),
            agent: agent.to_owned(),
            conn,
        })
    }

    fn unregister(&self, agent: &str, conn: u64) {
        if let Ok(mut e) = self.entries.lock()
            && e.get(agent).is_some_and(|x| x.conn == conn)
        {
            e.remove(agent);
        }
        self.changed.notify_waiters();
    }

    /// Returns once `agent` is connected (`want`) or not, woken by every connect and
    /// disconnect (no polling). Callers bound it with a timeout.
    pub async fn wait_connected(&self, agent: &str, want: bool) {
        loop {
            // Registered before the check, so a change in between still wakes us.
            let changed = self.changed.notified();
            if self.live(agent).is_some() == want {
                return;
            }
            changed.await;
        }
    }

    /// Drops every stream (shutdown).
    pub fn close_all(&self) {
        self.shutdown.cancel();
        if let Ok(mut e) = self.entries.lock() {
            e.clear();
        }
    }

    /// Records a heartbeat (or any message) from the agent.
    pub fn heard(&self, agent: &str, now_ms: i64) {
        if let Ok(mut e) = self.entries.lock()
            && let Some(x) = e.get_mut(agent)
        {
            x.live.last_heartbeat_ms = now_ms;
        }
    }

    /// The agent's live state, if it is connected.
    pub fn live(&self, agent: &str) -> Option<Live> {
        self.entries
            .lock()
            .ok()
            .and_then(|e| e.get(agent).map(|x| x.live.clone()))
    }

    /// Every connected agent.
    pub fn connected(&self) -> Vec<(String, Live)> {
        self.entries
            .lock()
            .map(|e| e.iter().map(|(k, v)| (k.clone(), v.live.clone())).collect())
            .unwrap_or_default()
    }

    /// The last version `agent` announced since this controller started ("" if none).
    pub fn version(&self, agent: &str) -> String {
        self.versions
            .lock()
            .ok()
            .and_then(|v| v.get(agent).cloned())
            .unwrap_or_default()
    }

    /// Sends a command to a connected agent; `None` when it is not connected.
    pub fn send(
        &self,
        agent: &str,
        cmd: pb::controller_command::Command,
    ) -> Result<Option<()>, ServiceError> {
        let e = self.entries.lock().map_err(|_| poisoned())?;
        let Some(x) = e.get(agent) else {
            return Ok(None);
        };
        let msg = pb::ControllerCommand { command: Some(cmd) };
        x.tx.try_send(Ok(msg)).map_err(|e| refused(agent, &e))?;
        Ok(Some(()))
    }

    /// Sends a command and registers a waiter for its reports, atomically (no report can
    /// arrive before the waiter exists). `None` when the agent is not connected.
    pub fn command(
        &self,
        agent: &str,
        command_id: &str,
        cmd: pb::controller_command::Command,
    ) -> Result<Option<RunWaiter>, ServiceError> {
        let mut e = self.entries.lock().map_err(|_| poisoned())?;
        let Some(x) = e.get_mut(agent) else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        x.waiters.insert(command_id.to_owned(), tx);
        let msg = pb::ControllerCommand { command: Some(cmd) };
        if let Err(e) = x.tx.try_send(Ok(msg)) {
            x.waiters.remove(command_id);
            return Err(refused(agent, &e));
        }
        Ok(Some(RunWaiter { rx }))
    }

    /// Forgets a waiter (its `lifeboatctl` call went away or got its final report).
    pub fn forget(&self, agent: &str, command_id: &str) {
        if let Ok(mut e) = self.entries.lock()
            && let Some(x) = e.get_mut(agent)
        {
            x.waiters.remove(command_id);
        }
    }

    /// Routes a run report from `agent` to the call waiting for it, if any. A report for an
    /// unknown command (a scheduled run, or a call that went away) is only logged by the caller.
    pub fn report(&self, agent: &str, report: pb::RunReport) -> bool {
        let Ok(mut e) = self.entries.lock() else {
            return false;
        };
        let Some(x) = e.get_mut(agent) else {
            return false;
        };
        let Some(w) = x.waiters.get(&report.command_id) else {
            return false;
        };
        match w.try_send(report) {
            Ok(()) => true,
            // A waiter that does not keep up loses progress reports, never the channel.
            Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(r)) => {
                x.waiters.remove(&r.command_id);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(v: &str) -> pb::AgentHello {
        pb::AgentHello {
            version: v.into(),
            sources: vec![
                pb::HelloSource {
                    name: "db".into(),
                    kind: "mysql".into(),
                },
                pb::HelloSource {
                    name: "web".into(),
                    kind: "files".into(),
                },
            ],
        }
    }

    #[test]
    fn default_policy_runs_databases_more_often_than_files_and_inside_the_rpo() {
        let p = default_policy(&hello("1"));
        assert_eq!(p.heartbeat_ms, HEARTBEAT_MS);
        assert_eq!(p.sources.len(), 2);
        assert_eq!(p.sources[0].schedule, "every 5m");
        assert_eq!(p.sources[1].schedule, "every 10m");
        for s in &p.sources {
            let gap = lifeboat_common::schedule::Schedule::parse(&s.schedule)
                .expect("parses")
                .longest_gap(0);
            assert!(gap.as_millis() < u128::from(s.rpo_ms), "{}", s.schedule);
        }
    }

    #[tokio::test]
    async fn commands_reach_the_agent_and_reports_reach_the_waiter() {
        let r = Arc::new(Registry::default());
        let (tx, mut rx) = mpsc::channel(COMMAND_QUEUE);
        let conn = r.register("web-01", &hello("0.1"), tx, 5).expect("reg");
        assert_eq!(r.live("web-01").expect("live").version, "0.1");
        let backup = pb::controller_command::Command::Backup(pb::BackupNow {
            command_id: "c1".into(),
            source: String::new(),
        });
        let mut w = r.command("web-01", "c1", backup).expect("ok").expect("on");
        assert!(matches!(
            rx.recv().await,
            Some(Ok(pb::ControllerCommand {
                command: Some(pb::controller_command::Command::Backup(_))
            }))
        ));
        let rep = pb::RunReport {
            command_id: "c1".into(),
            phase: pb::RunPhase::Started as i32,
            ..Default::default()
        };
        assert!(r.report("web-01", rep.clone()));
        assert_eq!(w.next().await, Some(rep));
        let other = pb::RunReport {
            command_id: "nobody".into(),
            ..Default::default()
        };
        assert!(!r.report("web-01", other));
        // Disconnect: the waiter learns the run's end is unknown; the version stays known.
        drop(conn);
        assert_eq!(w.next().await, None);
        assert!(r.live("web-01").is_none());
        assert_eq!(r.version("web-01"), "0.1");
        let none = pb::controller_command::Command::Backup(pb::BackupNow::default());
        assert!(r.command("web-01", "c2", none).expect("ok").is_none());
    }

    #[test]
    fn a_replaced_stream_does_not_unregister_its_successor_and_a_full_queue_refuses() {
        let r = Arc::new(Registry::default());
        let (tx1, _rx1) = mpsc::channel(1);
        let old = r.register("web-01", &hello("1"), tx1, 1).expect("reg");
        let (tx2, _rx2) = mpsc::channel(1);
        let _new = r.register("web-01", &hello("2"), tx2, 2).expect("reg");
        drop(old);
        assert_eq!(r.live("web-01").expect("still there").version, "2");
        let cmd = || pb::controller_command::Command::Policy(pb::AgentPolicy::default());
        assert_eq!(r.send("web-01", cmd()).expect("first"), Some(()));
        let e = r.send("web-01", cmd()).expect_err("full");
        assert!(
            matches!(&e, ServiceError::ResourceExhausted(m) if m.contains("web-01")),
            "{e}"
        );
        r.close_all();
        assert!(r.connected().is_empty());
        assert!(r.shutdown_token().is_cancelled());
    }
}
