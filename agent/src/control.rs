//! The agent's control stream: one long-lived, mutually authenticated gRPC stream the agent
//! dials out to the controller (agents may sit behind NAT), started by `lifeboat-agent run`.
//!
//! - On connect the agent sends its [`pb::AgentHello`] (version, sources with their kind); the
//!   controller answers with the agent's [`pb::AgentPolicy`], kept in memory in [`Link`] for the
//!   scheduler ([`crate::daemon`]), which falls back to the config until one arrives.
//! - Heartbeats go out at the policy's `heartbeat_ms` (default [`DEFAULT_HEARTBEAT`]).
//! - Commands (`BackupNow`, `RestoreNow`) run through the same backup and restore code as the
//!   CLI ([`exec`]), one run at a time with scheduled backups ([`Link::run_lock`]), and stream
//!   run reports STARTED / PROGRESS / SUCCEEDED|FAILED with the JSON summary.
//! - A lost stream is redialled with exponential backoff and jitter ([`reconnect_delay`], 1 s
//!   doubling to 60 s; reset after a connection that got its policy). Scheduled backups go on
//!   meanwhile; slots missed entirely are queued ([`Link::missed`]) and reported on reconnect.
//! - Failure modes: a revoked agent's stream is closed by the controller on its next message
//!   (the daemon keeps redialling with backoff; every call is refused until it is re-enrolled);
//!   reports of a run whose stream dropped are lost (the controller tells the waiting
//!   `lifeboatctl` the outcome is unknown; the snapshot, if committed, is listed as usual).

pub mod exec;
pub mod nice;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::agent_event::Event;
use lifeboat_proto::v1::agent_service_client::AgentServiceClient;
use lifeboat_proto::v1::controller_command::Command;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::client::GrpcRemote;
use crate::config::{AgentConfig, SourceConfig, SourceKind};

/// The heartbeat interval until the controller's policy says otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// First reconnect delay.
pub const FIRST_RECONNECT: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
pub const MAX_RECONNECT: Duration = Duration::from_secs(60);
/// Missed slots kept while the controller is unreachable (the oldest are dropped beyond it).
pub const MAX_MISSED: usize = 256;
/// Events queued towards the controller on one connection.
pub const OUTBOX: usize = 64;
/// The agent's version, sent in its hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the control stream shares with the scheduler: the pushed policy, the current
/// connection's outbox, missed slots waiting to be reported, and the run lock.
#[derive(Debug)]
pub struct Link {
    policy: watch::Sender<Option<pb::AgentPolicy>>,
    outbox: Mutex<Option<mpsc::Sender<pb::AgentEvent>>>,
    missed: Mutex<VecDeque<pb::MissedRun>>,
    agent_id: Mutex<Option<String>>,
    /// Held by every backup or restore, scheduled or commanded: one run at a time.
    pub run_lock: tokio::sync::Mutex<()>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            policy: watch::channel(None).0,
            outbox: Mutex::new(None),
            missed: Mutex::new(VecDeque::new()),
            agent_id: Mutex::new(None),
            run_lock: tokio::sync::Mutex::new(()),
        }
    }
}

impl Link {
    /// The last policy the controller pushed (`None` until one arrives; kept while
    /// disconnected).
    pub fn policy(&self) -> Option<pb::AgentPolicy> {
        self.policy.borrow().clone()
    }

    /// The pushed policy of one source.
    pub fn source_policy(&self, source: &str) -> Option<pb::SourcePolicy> {
        self.policy
            .borrow()
            .as_ref()
            .and_then(|p| p.sources.iter().find(|s| s.source == source).cloned())
    }

    /// The upload limit for backups: each source's pushed `bandwidth_bytes_per_sec`, read when
    /// a backup starts (0, unlimited, until a policy arrives).
    pub fn bandwidth(self: &Arc<Self>) -> crate::backup::Bandwidth {
        let link = self.clone();
        Arc::new(move |source| {
            link.source_policy(source)
                .map_or(0, |p| p.bandwidth_bytes_per_sec)
        })
    }

    /// Changes whenever a policy arrives.
    pub fn subscribe(&self) -> watch::Receiver<Option<pb::AgentPolicy>> {
        self.policy.subscribe()
    }

    /// Stores a pushed policy (also used by tests).
    pub fn set_policy(&self, p: pb::AgentPolicy) {
        self.policy.send_replace(Some(p));
    }

    /// The agent id the controller knows us by, once a connection told it.
    pub fn agent_id(&self) -> Option<String> {
        self.agent_id.lock().ok().and_then(|a| a.clone())
    }

    /// Whether a control stream is up now.
    pub fn connected(&self) -> bool {
        self.outbox
            .lock()
            .map(|o| o.as_ref().is_some_and(|t| !t.is_closed()))
            .unwrap_or(false)
    }

    /// Sends an event on the current connection; `false` if there is none or it is full.
    pub fn send(&self, event: Event) -> bool {
        let tx = self.outbox.lock().ok().and_then(|o| o.clone());
        tx.is_some_and(|t| t.try_send(pb::AgentEvent { event: Some(event) }).is_ok())
    }

    /// Reports a run (best effort: lost while disconnected).
    pub fn report(&self, r: pb::RunReport) {
        self.send(Event::Run(r));
    }

    /// Queues a missed slot; sent now if connected, else on reconnect.
    pub fn missed(&self, m: pb::MissedRun) {
        if let Ok(mut q) = self.missed.lock() {
            if q.len() >= MAX_MISSED {
                q.pop_front();
            }
            q.push_back(m);
        }
        self.flush_missed();
    }

    /// Missed slots not yet delivered.
    pub fn pending_missed(&self) -> usize {
        self.missed.lock().map(|q| q.len()).unwrap_or(0)
    }

    fn flush_missed(&self) {
        let Ok(mut q) = self.missed.lock() else {
            return;
        };
        while let Some(m) = q.front().cloned() {
            if !self.send(Event::Missed(m)) {
                break;
            }
            q.pop_front();
        }
    }
}

/// The delay before reconnect attempt `attempt` (1-based): 1 s doubling to 60 s, then a random
/// 50–100 % of it so that a restarted controller is not hit by the whole fleet at once.
pub fn reconnect_delay(attempt: u32, random: u32) -> Duration {
    let shift = attempt.saturating_sub(1).min(16);
    let full = FIRST_RECONNECT
        .saturating_mul(1 << shift)
        .min(MAX_RECONNECT);
    let frac = 50 + u64::from(random % 51);
    Duration::from_millis(u64::try_from(full.as_millis()).unwrap_or(u64::MAX) * frac / 100)
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    lifeboat_common::keys::fill_random(&mut b);
    u32::from_le_bytes(b)
}

/// The hello kind of a source: "mysql", "nginx" (a file tree with an nginx check) or "files".
pub fn hello_kind(s: &SourceConfig) -> &'static str {
    match (s.kind, &s.nginx) {
        (SourceKind::Mysql, _) => "mysql",
        (_, Some(_)) => "nginx",
        _ => "files",
    }
}

/// The hello for this agent's config.
pub fn hello(cfg: &AgentConfig) -> pb::AgentHello {
    pb::AgentHello {
        version: VERSION.to_owned(),
        sources: cfg
            .sources
            .iter()
            .map(|s| pb::HelloSource {
                name: s.name.clone(),
                kind: hello_kind(s).to_owned(),
            })
            .collect(),
    }
}

/// Keeps the control stream up until `shutdown` turns true.
pub async fn run(
    cfg: AgentConfig,
    exec: Arc<exec::Executor>,
    link: Arc<Link>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut attempt = 0u32;
    loop {
        let outcome = tokio::select! {
            r = session(&cfg, &exec, &link) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if let Ok(mut o) = link.outbox.lock() {
            *o = None;
        }
        match outcome {
            Ok(true) => attempt = 1,
            Ok(false) => attempt += 1,
            Err(e) => {
                attempt += 1;
                warn!(error = %e, attempt, "control stream lost; reconnecting with backoff");
            }
        }
        let delay = reconnect_delay(attempt, random_u32());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// One connection: hello, then commands until the stream ends. `Ok(true)` when the connection
/// got a policy (a healthy connection that later ended: reconnect quickly).
async fn session(
    cfg: &AgentConfig,
    exec: &Arc<exec::Executor>,
    link: &Arc<Link>,
) -> Result<bool, String> {
    let endpoint = GrpcRemote::endpoint(&cfg.controller).map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let remote = GrpcRemote::from_channel(channel.clone());
    if link.agent_id().is_none() {
        let me = remote.who_am_i().await.map_err(|e| e.to_string())?;
        if let Ok(mut a) = link.agent_id.lock() {
            *a = Some(me.agent_id);
        }
    }
    let (tx, rx) = mpsc::channel(OUTBOX);
    let hello = pb::AgentEvent {
        event: Some(Event::Hello(hello(cfg))),
    };
    tx.try_send(hello).map_err(|e| e.to_string())?;
    let mut client = AgentServiceClient::new(channel);
    let mut inbound = client
        .control(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("Control refused: {}", s.message()))?
        .into_inner();
    if let Ok(mut o) = link.outbox.lock() {
        *o = Some(tx.clone());
    }
    let mut got_policy = false;
    let mut beat = heartbeat_timer(link);
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = beat.tick() => {
                let hb = Event::Heartbeat(pb::Heartbeat { sent_at_unix_ms: now_unix_ms() });
                if !link.send(hb) {
                    warn!("control outbox full; heartbeat skipped");
                }
                link.flush_missed();
                continue;
            }
        };
        let cmd = match msg {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(got_policy),
            Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
        };
        match cmd.command {
            Some(Command::Policy(p)) => {
                let first = !got_policy;
                got_policy = true;
                info!(
                    sources = p.sources.len(),
                    heartbeat_ms = p.heartbeat_ms,
                    "policy received from the controller"
                );
                nice::apply(&p);
                link.set_policy(p);
                beat = heartbeat_timer(link);
                if first {
                    info!("control stream connected");
                    link.flush_missed();
                }
            }
            Some(Command::Backup(b)) => {
                tokio::spawn(exec::Executor::backup(exec.clone(), remote.clone(), b));
            }
            Some(Command::Restore(r)) => {
                tokio::spawn(exec::Executor::restore(exec.clone(), remote.clone(), r));
            }
            None => warn!("empty command from the controller ignored"),
        }
    }
}

fn heartbeat_timer(link: &Link) -> tokio::time::Interval {
    let every = link
        .policy()
        .map(|p| p.heartbeat_ms)
        .filter(|&ms| ms >= 1000)
        .map_or(DEFAULT_HEARTBEAT, Duration::from_millis);
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_doubles_is_capped_and_jittered() {
        assert_eq!(reconnect_delay(1, 50), Duration::from_secs(1));
        assert_eq!(reconnect_delay(1, 0), Duration::from_millis(500));
        assert_eq!(reconnect_delay(2, 50), Duration::from_secs(2));
        assert_eq!(reconnect_delay(7, 50), Duration::from_secs(60));
        assert_eq!(reconnect_delay(40, 50), Duration::from_secs(60));
        for r in 0..200 {
            let d = reconnect_delay(3, r);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
                "{d:?}"
            );
        }
    }

    #[test]
    fn missed_slots_wait_for_a_connection_and_are_bounded() {
        let link = Link::default();
        for i in 0..(MAX_MISSED + 3) {
            link.missed(pb::MissedRun {
                source: "web".into(),
                slot_unix_ms: i as i64,
                reason: "controller unreachable".into(),
            });
        }
        assert_eq!(link.pending_missed(), MAX_MISSED);
        let (tx, mut rx) = mpsc::channel(OUTBOX);
        *link.outbox.lock().expect("lock") = Some(tx);
        assert!(link.connected());
        link.flush_missed();
        let first = rx.try_recv().expect("sent");
        assert!(
            matches!(first.event, Some(Event::Missed(m)) if m.slot_unix_ms == 3),
            "the oldest were dropped"
        );
        assert!(link.pending_missed() < MAX_MISSED);
    }

    #[test]
    fn policy_is_kept_per_source() {
        let link = Link::default();
        assert!(link.source_policy("db").is_none());
        link.set_policy(pb::AgentPolicy {
            sources: vec![pb::SourcePolicy {
                source: "db".into(),
                schedule: "every 5m".into(),
                ..Default::default()
            }],
            heartbeat_ms: 2000,
        });
        assert_eq!(link.source_policy("db").expect("db").schedule, "every 5m");
        assert!(link.source_policy("web").is_none());
    }
}
