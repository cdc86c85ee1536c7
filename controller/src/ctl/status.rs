//! `lifeboatctl status [--json]`: the fleet's RPO compliance, one row per (agent, source).
//!
//! Columns: agent, source, last success, age of the newest snapshot, objective, age of the
//! newest snapshot restorable from the secondary, state (`ok`, `at_risk`, `breached`; coloured
//! only when stdout is a terminal), last error. The numbers are the controller's, computed at
//! its clock (`now_unix_ms` in JSON), the same as `/metrics`.

use std::io::IsTerminal;

use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;

use super::{Ctx, Failure, output};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A short human duration: `45s`, `4m12s`, `3h05m`, `2d04h`.
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn coloured(state: &str, tty: bool) -> String {
    let code = match state {
        "ok" => "32",
        "at_risk" => "33",
        "breached" => "31",
        _ => return state.to_owned(),
    };
    if tty {
        format!("\x1b[{code}m{state}\x1b[0m")
    } else {
        state.to_owned()
    }
}

fn source_json(s: &pb::SourceStatus) -> serde_json::Value {
    json!({
        "agent": s.agent_id,
        "source": s.source,
        "last_success_unix_ms": s.last_success_unix_ms,
        "age_ms": s.age_ms,
        "objective_ms": s.objective_ms,
        "state": s.state,
        "replicated_age_ms": s.replicated_age_ms,
        "replicated_state": s.replicated_state,
        "last_error": s.last_error,
        "connected": s.connected,
        "last_seen_unix_ms": s.last_seen_unix_ms,
    })
}

/// The table rows (state coloured when `tty`).
pub fn rows(r: &pb::FleetStatusResponse, tty: bool) -> Vec<Vec<String>> {
    r.sources
        .iter()
        .map(|s| {
            let never = s.last_success_unix_ms == 0;
            let replicated = match (s.replicated_state.as_str(), s.replicated_age_ms) {
                ("", _) => "-".to_owned(),
                (_, a) if a < 0 => "none".to_owned(),
                (_, a) => duration(a),
            };
            vec![
                s.agent_id.clone(),
                s.source.clone(),
                if never {
                    "never".into()
                } else {
                    output::time(s.last_success_unix_ms)
                },
                if never {
                    "-".into()
                } else {
                    duration(s.age_ms)
                },
                duration(i64::try_from(s.objective_ms).unwrap_or(i64::MAX)),
                replicated,
                coloured(&s.state, tty),
                if s.last_error.is_empty() {
                    "-".into()
                } else {
                    s.last_error.clone()
                },
            ]
        })
        .collect()
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let mut client = AdminServiceClient::new(ctx.channel().await?);
    let r = match client.fleet_status(pb::FleetStatusRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("FleetStatus", &s).await),
    };
    if a.json {
        let v = json!({
            "now_unix_ms": r.now_unix_ms,
            "secondary_configured": r.secondary_configured,
            "sources": r.sources.iter().map(source_json).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    if r.sources.is_empty() {
        println!("no sources known yet: no agent has backed up or reported a failure");
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    print!(
        "{}",
        output::table(
            &[
                "AGENT",
                "SOURCE",
                "LAST SUCCESS",
                "AGE",
                "OBJECTIVE",
                "REPLICATED AGE",
                "STATE",
                "LAST ERROR"
            ],
            &rows(&r, tty)
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_plain_off_a_terminal_and_durations_are_short() {
        assert_eq!(duration(45_000), "45s");
        assert_eq!(duration(252_000), "4m12s");
        assert_eq!(duration(3 * 3_600_000 + 300_000), "3h05m");
        let r = pb::FleetStatusResponse {
            sources: vec![pb::SourceStatus {
                agent_id: "db-01".into(),
                source: "db".into(),
                objective_ms: 900_000,
                state: "breached".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let plain = rows(&r, false);
        assert_eq!(plain[0][2], "never");
        assert_eq!(plain[0][6], "breached");
        assert_eq!(plain[0][5], "-", "no secondary");
        assert!(rows(&r, true)[0][6].contains("\x1b[31m"));
    }
}
