//! One agent's control stream (`AgentService.Control`), from hello to disconnect.
//!
//! The agent's first message must be its [`pb::AgentHello`] (within [`HELLO_TIMEOUT`]); it is
//! validated, the stream is registered, and the agent's current effective policy
//! ([`super::initial_policy`]) is the first command it gets — also after every reconnect.
//! Then every message is checked against revocation before it is used: a revoked agent's stream
//! is closed with `UNAUTHENTICATED` on its next message (heartbeats come every
//! [`super::HEARTBEAT_MS`]). An agent silent for [`IDLE_HEARTBEATS`] heartbeat periods is
//! considered gone and its stream is closed. Run reports are routed to the waiting `lifeboatctl`
//! call; a missed scheduled run is recorded as a failed backup, so `snapshots list` and the RPO
//! assessment see it.

use std::time::Duration;

use lifeboat_common::clock::now_unix_ms;
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::agent_event::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::{info, warn};

use super::{COMMAND_QUEUE, initial_policy};
use crate::auth::AgentCtx;
use crate::catalog::failures::{self, FailureRow};
use crate::catalog::{agents, credentials};
use crate::error::ServiceError;
use crate::service::State;
use crate::wire::{self, SessionId};

/// How long the agent has to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Heartbeat periods of silence after which the stream is closed.
pub const IDLE_HEARTBEATS: u32 = 3;
/// Most sources one hello may announce.
pub const MAX_SOURCES: usize = 256;
/// Longest version string accepted.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest summary JSON relayed from a run report.
pub const MAX_SUMMARY_LEN: usize = 256 << 10;

/// Validates the hello (sizes, source names and kinds).
pub fn validate_hello(h: &pb::AgentHello) -> Result<(), ServiceError> {
    if h.version.len() > MAX_VERSION_LEN {
        return Err(ServiceError::invalid(format!(
            "hello: version is longer than {MAX_VERSION_LEN} bytes"
        )));
    }
    if h.sources.len() > MAX_SOURCES {
        return Err(ServiceError::invalid(format!(
            "hello: {} sources announced, at most {MAX_SOURCES} are accepted",
            h.sources.len()
        )));
    }
    for s in &h.sources {
        wire::source(&s.name).map_err(|e| ServiceError::invalid(format!("hello: {e}")))?;
        if !matches!(s.kind.as_str(), "files" | "nginx" | "mysql") {
            return Err(ServiceError::invalid(format!(
                "hello: source {:?} has kind {:?}; expected files, nginx or mysql",
                s.name, s.kind
            )));
        }
    }
    Ok(())
}

async fn hello(inbound: &mut Streaming<pb::AgentEvent>) -> Result<pb::AgentHello, ServiceError> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| {
            ServiceError::DeadlineExceeded(format!(
                "no hello within {} s of opening the control stream",
                HELLO_TIMEOUT.as_secs()
            ))
        })?;
    match first {
        Ok(Some(pb::AgentEvent {
            event: Some(Event::Hello(h)),
        })) => {
            validate_hello(&h)?;
            Ok(h)
        }
        Ok(Some(_)) => Err(ServiceError::invalid(
            "the first message of a control stream must be the agent's hello",
        )),
        Ok(None) => Err(ServiceError::invalid(
            "control stream closed before the hello",
        )),
        Err(s) => Err(ServiceError::invalid(format!(
            "control stream failed before the hello: {}",
            s.message()
        ))),
    }
}

/// Opens the stream: reads the hello, sends the policy, and serves the rest in a task.
pub async fn open(
    state: State,
    agent: AgentCtx,
    mut inbound: Streaming<pb::AgentEvent>,
) -> Result<ReceiverStream<Result<pb::ControllerCommand, Status>>, ServiceError> {
    let h = hello(&mut inbound).await?;
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let policy = initial_policy(&state, &agent, &h).await;
    let heartbeat = Duration::from_millis(policy.heartbeat_ms.max(1000));
    let first = pb::ControllerCommand {
        command: Some(pb::controller_command::Command::Policy(policy)),
    };
    tx.try_send(Ok(first))
        .map_err(|_| ServiceError::Internal("control queue refused the policy".into()))?;
    let name = agent.id.to_string();
    let (id, version) = (name.clone(), h.version.clone());
    state
        .catalog
        .run(move |c| agents::set_version(c, &id, &version, now_unix_ms()))
        .await?;
    // Registered before answering, so the agent is "connected" as soon as it has its policy.
    let conn = state
        .control
        .register(&name, &h, tx.clone(), now_unix_ms())?;
    tokio::spawn(async move {
        let _conn = conn;
        info!(agent = %name, version = %h.version, sources = h.sources.len(), "agent connected");
        match serve(&state, &agent, &mut inbound, heartbeat * IDLE_HEARTBEATS).await {
            Ok(why) => info!(agent = %name, why, "agent disconnected"),
            Err(e) => {
                warn!(agent = %name, error = %e, "control stream closed");
                let _ = tx.try_send(Err(e.into()));
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Serves the inbound half until the agent goes away, the controller shuts down, or an error.
async fn serve(
    state: &State,
    agent: &AgentCtx,
    inbound: &mut Streaming<pb::AgentEvent>,
    idle: Duration,
) -> Result<&'static str, ServiceError> {
    let shutdown = state.control.shutdown_token();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok("controller shutting down"),
            m = tokio::time::timeout(idle, inbound.message()) => m,
        };
        let ev = match msg {
            Err(_) => {
                return Err(ServiceError::DeadlineExceeded(format!(
                    "no heartbeat from agent {} for {} s; closing its control stream",
                    agent.id,
                    idle.as_secs()
                )));
            }
            Ok(Err(_)) => return Ok("stream broken"),
            Ok(Ok(None)) => return Ok("stream closed by the agent"),
            Ok(Ok(Some(ev))) => ev,
        };
        enrolled_and_seen(state, agent).await?;
        state.control.heard(agent.id.as_str(), now_unix_ms());
        match ev.event {
            Some(Event::Heartbeat(_)) | None => {}
            Some(Event::Run(r)) => relay(state, agent, r)?,
            Some(Event::Missed(m)) => missed(state, agent, m).await?,
            Some(Event::Hello(_)) => {
                return Err(ServiceError::invalid(
                    "a second hello on the same control stream; reconnect instead",
                ));
            }
        }
    }
}

/// Refuses a revoked agent; updates its last_seen.
async fn enrolled_and_seen(state: &State, agent: &AgentCtx) -> Result<(), ServiceError> {
    let id = agent.id.to_string();
    let now = now_unix_ms();
    let revoked = state
        .catalog
        .run(move |c| {
            let r = credentials::is_revoked(c, &id)?;
            if !r {
                agents::touch(c, &id, now)?;
            }
            Ok(r)
        })
        .await?;
    if revoked {
        return Err(ServiceError::Unauthenticated(format!(
            "agent {} has been revoked; its control stream is closed; an operator must enroll it again",
            agent.id
        )));
    }
    Ok(())
}

fn relay(state: &State, agent: &AgentCtx, mut r: pb::RunReport) -> Result<(), ServiceError> {
    if !r.source.is_empty() {
        wire::source(&r.source)?;
    }
    if r.command_id.len() > 64 {
        return Err(ServiceError::invalid("run report: command_id is too long"));
    }
    if r.summary_json.len() > MAX_SUMMARY_LEN {
        r.summary_json.clear();
    }
    r.error = failures::truncate_reason(&r.error);
    r.agent_id = agent.id.to_string();
    let phase = pb::RunPhase::try_from(r.phase).unwrap_or_default();
    if matches!(phase, pb::RunPhase::Succeeded | pb::RunPhase::Failed) {
        info!(agent = %agent.id, source = %r.source, command = %r.command_id, phase = ?phase, snapshot = %r.snapshot_id, "run finished");
    }
    let cmd = r.command_id.clone();
    if !state.control.report(agent.id.as_str(), r) && !cmd.is_empty() {
        tracing::debug!(agent = %agent.id, command = %cmd, "run report with no waiting call");
    }
    Ok(())
}

async fn missed(state: &State, agent: &AgentCtx, m: pb::MissedRun) -> Result<(), ServiceError> {
    let source = wire::source(&m.source)?;
    let reason = failures::truncate_reason(&format!(
        "missed scheduled backup (slot {}): {}",
        crate::ctl::output::time(m.slot_unix_ms),
        if m.reason.is_empty() {
            "no reason given"
        } else {
            &m.reason
        }
    ));
    let slot = m.slot_unix_ms;
    let row = FailureRow {
        id: SessionId::generate().as_str()[..20].to_owned(),
        agent: agent.id.to_string(),
        source,
        started_at: m.slot_unix_ms,
        finished_at: m.slot_unix_ms,
        reported_at: now_unix_ms(),
        reason,
    };
    let logged_source = row.source.clone();
    state
        .catalog
        .run(move |c| failures::insert(c, &row))
        .await?;
    // Logged once the failure row is committed (tests wait for this line).
    warn!(agent = %agent.id, source = %logged_source, slot_unix_ms = slot, "agent reported a missed scheduled backup; recorded as a failed backup");
    Ok(())
}
