//! Following a remote run (`lifeboatctl backup|restore --agent A`): the agent's run reports as
//! NDJSON (`--json`, one object per report, on stdout) or as progress lines on stderr when it is
//! a terminal, and the final result on stdout.
//!
//! Exit codes: 0 the run succeeded (or, with `--no-wait`, the agent accepted it); 3 a backup
//! committed a partial snapshot; 1 the run failed, the agent disconnected before it finished,
//! or the agent is offline / unknown; 4/5 as for every command.

use std::io::IsTerminal;

use lifeboat_common::exit;
use lifeboat_proto::v1::{RunKind, RunPhase, RunReport};
use serde_json::{Value, json};
use tonic::Streaming;

use super::{Ctx, Failure};

fn phase_name(p: i32) -> &'static str {
    match RunPhase::try_from(p) {
        Ok(RunPhase::Started) => "started",
        Ok(RunPhase::Progress) => "progress",
        Ok(RunPhase::Succeeded) => "succeeded",
        Ok(RunPhase::Failed) => "failed",
        _ => "unknown",
    }
}

fn kind_name(k: i32) -> &'static str {
    match RunKind::try_from(k) {
        Ok(RunKind::Backup) => "backup",
        Ok(RunKind::Restore) => "restore",
        _ => "unknown",
    }
}

/// One report as a JSON object (the NDJSON line of `--json`).
pub fn report_json(r: &RunReport) -> Value {
    let summary: Value = serde_json::from_str(&r.summary_json).unwrap_or(Value::Null);
    json!({
        "agent": r.agent_id,
        "command_id": r.command_id,
        "source": r.source,
        "kind": kind_name(r.kind),
        "phase": phase_name(r.phase),
        "snapshot_id": r.snapshot_id,
        "bytes_done": r.bytes_done,
        "bytes_total": r.bytes_total,
        "files_done": r.files_done,
        "error": r.error,
        "at_unix_ms": r.at_unix_ms,
        "summary": summary,
    })
}

/// The human line of one report.
pub fn report_line(r: &RunReport) -> String {
    let who = if r.source.is_empty() {
        r.agent_id.clone()
    } else {
        format!("{}/{}", r.agent_id, r.source)
    };
    let what = kind_name(r.kind);
    match RunPhase::try_from(r.phase) {
        Ok(RunPhase::Started) => format!("{who}: {what} started"),
        Ok(RunPhase::Progress) => {
            let v: Value = serde_json::from_str(&r.summary_json).unwrap_or(Value::Null);
            let stage = v.get("stage").and_then(Value::as_str).unwrap_or("running");
            match v.get("chunks_read").and_then(Value::as_u64) {
                Some(n) => format!("{who}: {what} {stage}, {n} chunks read"),
                None if r.bytes_total > 0 => {
                    format!("{who}: {what} {stage}, {} bytes to go", r.bytes_total)
                }
                None => format!("{who}: {what} {stage}"),
            }
        }
        Ok(RunPhase::Succeeded) if !r.snapshot_id.is_empty() => {
            let verb = if r.kind == RunKind::Restore as i32 {
                "restored and verified"
            } else {
                "committed"
            };
            format!("{who}: {what} succeeded: snapshot {} {verb}", r.snapshot_id)
        }
        Ok(RunPhase::Succeeded) => format!("{who}: {what} succeeded"),
        Ok(RunPhase::Failed) => format!("{who}: {what} FAILED: {}", r.error),
        _ => format!("{who}: {what}: unknown phase {}", r.phase),
    }
}

/// Follows the stream to its end; returns the exit code or the failure.
pub async fn follow(
    ctx: &Ctx,
    rpc: &str,
    mut stream: Streaming<RunReport>,
    json: bool,
) -> Result<(), Failure> {
    let tty = std::io::stderr().is_terminal();
    let mut last: Option<RunReport> = None;
    loop {
        let r = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(s) => return Err(ctx.failure(rpc, &s).await),
        };
        let terminal = matches!(
            RunPhase::try_from(r.phase),
            Ok(RunPhase::Succeeded | RunPhase::Failed)
        );
        if json {
            println!("{}", report_json(&r));
        } else if terminal {
            println!("{}", report_line(&r));
        } else if tty {
            eprintln!("{}", report_line(&r));
        }
        last = Some(r);
    }
    let Some(last) = last else {
        return Err(Failure::error(format!(
            "{rpc}: the controller ended the run's stream without any report"
        )));
    };
    match RunPhase::try_from(last.phase) {
        Ok(RunPhase::Failed) => Err(Failure::error(format!(
            "{} of agent {} failed: {}",
            kind_name(last.kind),
            last.agent_id,
            last.error
        ))),
        Ok(RunPhase::Succeeded) if partial(&last) => Err(Failure {
            code: exit::PARTIAL,
            message: format!(
                "agent {} committed a partial snapshot: some inputs were unreadable (see the summary)",
                last.agent_id
            ),
        }),
        _ => Ok(()),
    }
}

/// Whether a backup's summary (one report, or an array for every source) says partial.
fn partial(r: &RunReport) -> bool {
    let v: Value = serde_json::from_str(&r.summary_json).unwrap_or(Value::Null);
    let one = |x: &Value| x.get("partial").and_then(Value::as_bool).unwrap_or(false);
    match &v {
        Value::Array(a) => a.iter().any(one),
        x => one(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_render_as_lines_and_json() {
        let r = RunReport {
            agent_id: "web-01".into(),
            source: "web".into(),
            kind: RunKind::Backup as i32,
            phase: RunPhase::Succeeded as i32,
            snapshot_id: "abc".into(),
            summary_json: r#"{"partial":true,"files":3}"#.into(),
            ..Default::default()
        };
        assert_eq!(
            report_line(&r),
            "web-01/web: backup succeeded: snapshot abc committed"
        );
        let j = report_json(&r);
        assert_eq!(j["phase"], "succeeded");
        assert_eq!(j["summary"]["files"], 3);
        assert!(partial(&r));
        let f = RunReport {
            phase: RunPhase::Failed as i32,
            error: "disk full".into(),
            summary_json: String::new(),
            ..r
        };
        assert!(report_line(&f).ends_with("backup FAILED: disk full"));
        assert!(!partial(&f));
    }
}
