//! `AdminService.RunBackup` / `RunRestore`: send a command to a connected agent and follow its
//! run reports back to the `lifeboatctl` call.
//!
//! The call's stream ends after the final report of the requested source (SUCCEEDED or FAILED;
//! for a backup of every source, the agent's final report has an empty source), or right after
//! STARTED with `no_wait`. If the agent disconnects first, the call gets a FAILED report saying
//! the outcome is unknown and how to check it. An agent that is not connected is refused with
//! `FAILED_PRECONDITION` naming it and when it was last seen (never `UNAVAILABLE`: that would
//! read as "controller unreachable").

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::ids::AgentId;
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::controller_command::Command;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{Live, RunWaiter};
use crate::catalog::agents;
use crate::error::ServiceError;
use crate::service::State;
use crate::wire::{self, SessionId};

/// What a RunBackup/RunRestore call streams back.
pub type Reports = ReceiverStream<Result<pb::RunReport, Status>>;

fn agent_id(s: &str) -> Result<String, ServiceError> {
    Ok(AgentId::new(s)
        .map_err(|e| ServiceError::invalid(format!("agent_id: {e}")))?
        .to_string())
}

/// The agent's live state, or an error naming it and when it was last seen.
async fn connected(state: &State, agent: &str) -> Result<Live, ServiceError> {
    if let Some(l) = state.control.live(agent) {
        return Ok(l);
    }
    let name = agent.to_owned();
    let row = state
        .catalog
        .run(move |c| Ok(agents::list(c)?.into_iter().find(|a| a.id == name)))
        .await?;
    let Some(row) = row else {
        return Err(ServiceError::NotFound(format!(
            "agent {agent} is not enrolled (see `lifeboatctl agent list`)"
        )));
    };
    let seen = if row.last_seen == 0 {
        "it has never connected".to_owned()
    } else {
        let ago = (now_unix_ms() - row.last_seen).max(0) / 1000;
        format!(
            "last seen {} ({ago} s ago)",
            crate::ctl::output::time(row.last_seen)
        )
    };
    Err(ServiceError::FailedPrecondition(format!(
        "agent {agent} is not connected to the controller ({seen}); check that `lifeboat-agent run` is running on it and can reach the controller"
    )))
}

fn has_source(agent: &str, live: &Live, source: &str) -> Result<(), ServiceError> {
    if source.is_empty() || live.sources.iter().any(|s| s.name == source) {
        return Ok(());
    }
    let names: Vec<&str> = live.sources.iter().map(|s| s.name.as_str()).collect();
    Err(ServiceError::NotFound(format!(
        "agent {agent} has no source {source:?} (it announced: {})",
        names.join(", ")
    )))
}

fn command_id() -> String {
    SessionId::generate().as_str()[..16].to_owned()
}

/// Starts a backup on a connected agent.
pub async fn run_backup(state: &State, r: pb::RunBackupRequest) -> Result<Reports, ServiceError> {
    let agent = agent_id(&r.agent_id)?;
    let source = match r.source.as_str() {
        "" => String::new(),
        s => wire::source(s)?,
    };
    let live = connected(state, &agent).await?;
    has_source(&agent, &live, &source)?;
    let id = command_id();
    let cmd = Command::Backup(pb::BackupNow {
        command_id: id.clone(),
        source: source.clone(),
    });
    let waiter = send(state, &agent, &id, cmd).await?;
    tracing::info!(agent = %agent, source = %source, command = %id, "backup requested");
    Ok(follow(state, agent, id, source, waiter, r.no_wait))
}

/// Starts a restore on a connected agent.
pub async fn run_restore(state: &State, r: pb::RunRestoreRequest) -> Result<Reports, ServiceError> {
    let agent = agent_id(&r.agent_id)?;
    let mut restore = r
        .restore
        .ok_or_else(|| ServiceError::invalid("restore: missing"))?;
    let source = wire::source(&restore.source)?;
    if restore.in_place && !restore.target.is_empty() {
        return Err(ServiceError::invalid(
            "restore: give a target directory or in_place, not both",
        ));
    }
    let live = connected(state, &agent).await?;
    has_source(&agent, &live, &source)?;
    let id = command_id();
    restore.command_id = id.clone();
    let waiter = send(state, &agent, &id, Command::Restore(restore)).await?;
    tracing::info!(agent = %agent, source = %source, command = %id, "restore requested");
    Ok(follow(state, agent, id, source, waiter, false))
}

async fn send(
    state: &State,
    agent: &str,
    id: &str,
    cmd: Command,
) -> Result<RunWaiter, ServiceError> {
    match state.control.command(agent, id, cmd)? {
        Some(w) => Ok(w),
        // Disconnected between the check and the send: answer as for an offline agent.
        None => Err(connected(state, agent).await.err().unwrap_or_else(|| {
            ServiceError::FailedPrecondition(format!("agent {agent} just disconnected"))
        })),
    }
}

fn terminal(r: &pb::RunReport) -> bool {
    matches!(
        pb::RunPhase::try_from(r.phase),
        Ok(pb::RunPhase::Succeeded | pb::RunPhase::Failed)
    )
}

/// Relays the waiter's reports to the call until the requested source's final report.
fn follow(
    state: &State,
    agent: String,
    id: String,
    source: String,
    mut waiter: RunWaiter,
    no_wait: bool,
) -> Reports {
    let (tx, rx) = mpsc::channel(16);
    let registry = state.control.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = tx.closed() => break,
                r = waiter.next() => r,
            };
            let Some(mut r) = next else {
                let lost = pb::RunReport {
                    command_id: id.clone(),
                    source: source.clone(),
                    phase: pb::RunPhase::Failed as i32,
                    error: format!(
                        "agent {agent} disconnected before the run finished; its outcome is unknown: check `lifeboatctl snapshots list --agent {agent}` once it is back"
                    ),
                    at_unix_ms: now_unix_ms(),
                    agent_id: agent.clone(),
                    ..Default::default()
                };
                let _ = tx.send(Ok(lost)).await;
                break;
            };
            r.agent_id = agent.clone();
            let end = (terminal(&r) && r.source == source)
                || (no_wait && r.phase == pb::RunPhase::Started as i32);
            if tx.send(Ok(r)).await.is_err() || end {
                break;
            }
        }
        registry.forget(&agent, &id);
    });
    ReceiverStream::new(rx)
}
