//! `lifeboatctl forget [--agent A] [--source S] [--keep-last N …] [--keep-within 30d]
//! [--dry-run] [--json]`: applies retention rules on the controller (the `Forget` RPC) and
//! prints, per (agent, source), every snapshot with keep/remove and the rules that keep it.
//!
//! Without any rule the command is refused (a forgotten flag must not silently do nothing);
//! `--allow-empty-rules` asks for the keep-everything plan explicitly. Forgetting hides the
//! snapshots at once; their space is freed later by GC.

use std::time::Duration;

use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
use lifeboat_proto::v1::{ForgetGroup, ForgetRequest, ForgetResponse, RetentionRules};
use serde_json::json;

use super::{Ctx, Failure, output};
use crate::MAX_MESSAGE_BYTES;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this agent's snapshots (default: every agent).
    #[arg(long)]
    pub agent: Option<String>,
    /// Only this source's snapshots (default: every source).
    #[arg(long)]
    pub source: Option<String>,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours (UTC) that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days (UTC) that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months (UTC) that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years (UTC) that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot within this duration of the source's newest snapshot (e.g. 30d).
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub keep_within: Option<Duration>,
    /// Show what would be kept and removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Accept an empty rule set (keeps everything: only lists the plan).
    #[arg(long)]
    pub allow_empty_rules: bool,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = lifeboat_common::clock::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

impl Args {
    fn rules(&self) -> RetentionRules {
        RetentionRules {
            keep_last: self.keep_last.unwrap_or(0),
            keep_hourly: self.keep_hourly.unwrap_or(0),
            keep_daily: self.keep_daily.unwrap_or(0),
            keep_weekly: self.keep_weekly.unwrap_or(0),
            keep_monthly: self.keep_monthly.unwrap_or(0),
            keep_yearly: self.keep_yearly.unwrap_or(0),
            keep_within_ms: self
                .keep_within
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<(), Failure> {
    let rules = a.rules();
    if rules == RetentionRules::default() && !a.allow_empty_rules {
        return Err(Failure {
            code: lifeboat_common::exit::USAGE,
            message: "forget needs at least one rule (--keep-last, --keep-hourly, --keep-daily, \
                      --keep-weekly, --keep-monthly, --keep-yearly, --keep-within); \
                      --allow-empty-rules only lists the snapshots"
                .into(),
        });
    }
    let mut client = AdminServiceClient::new(ctx.channel().await?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES * 16);
    let res = client
        .forget(ForgetRequest {
            agent_id: a.agent.clone().unwrap_or_default(),
            source: a.source.clone().unwrap_or_default(),
            rules: Some(rules),
            dry_run: a.dry_run,
            allow_empty_rules: a.allow_empty_rules,
        })
        .await;
    let r = match res {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(ctx.failure("Forget", &s).await),
    };
    if a.json {
        println!("{}", to_json(&r));
    } else {
        print!("{}", to_text(&r));
    }
    Ok(())
}

fn removed(g: &ForgetGroup) -> usize {
    g.decisions.iter().filter(|d| !d.keep).count()
}

/// The human output: a table per group, then a summary line.
pub fn to_text(r: &ForgetResponse) -> String {
    let mut out = String::new();
    for g in &r.groups {
        let rm = removed(g);
        out.push_str(&format!(
            "agent {} source {}: keep {}, remove {}\n",
            g.agent_id,
            g.source,
            g.decisions.len() - rm,
            rm
        ));
        let rows: Vec<Vec<String>> = g
            .decisions
            .iter()
            .map(|d| {
                let (id, at) = d
                    .snapshot
                    .as_ref()
                    .map_or(("?".into(), 0), |s| (s.id.clone(), s.committed_at_unix_ms));
                vec![
                    id,
                    output::time(at),
                    if d.keep { "keep" } else { "remove" }.into(),
                    d.reasons.join(", "),
                ]
            })
            .collect();
        out.push_str(&output::table(
            &["SNAPSHOT", "COMMITTED", "ACTION", "REASONS"],
            &rows,
        ));
        out.push('\n');
    }
    let total: usize = r.groups.iter().map(removed).sum();
    if r.dry_run {
        out.push_str(&format!(
            "dry run: {total} snapshot(s) would be forgotten; nothing was changed\n"
        ));
    } else {
        out.push_str(&format!(
            "forgot {} snapshot(s); GC frees their space later\n",
            r.forgotten
        ));
    }
    out
}

/// The `--json` output.
pub fn to_json(r: &ForgetResponse) -> serde_json::Value {
    let groups: Vec<_> = r
        .groups
        .iter()
        .map(|g| {
            let snaps: Vec<_> = g
                .decisions
                .iter()
                .map(|d| {
                    let s = d.snapshot.clone().unwrap_or_default();
                    json!({
                        "id": s.id,
                        "committed_at_unix_ms": s.committed_at_unix_ms,
                        "committed_at": output::time(s.committed_at_unix_ms),
                        "action": if d.keep { "keep" } else { "remove" },
                        "reasons": d.reasons,
                    })
                })
                .collect();
            json!({"agent": g.agent_id, "source": g.source, "snapshots": snaps})
        })
        .collect();
    json!({"dry_run": r.dry_run, "forgotten": r.forgotten, "groups": groups})
}

#[cfg(test)]
mod tests {
    use lifeboat_proto::v1::{ForgetDecision, Snapshot};

    use super::*;

    fn response(dry_run: bool) -> ForgetResponse {
        let d = |id: &str, at: i64, keep: bool, reasons: &[&str]| ForgetDecision {
            snapshot: Some(Snapshot {
                id: id.into(),
                committed_at_unix_ms: at,
                ..Default::default()
            }),
            keep,
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        };
        ForgetResponse {
            groups: vec![ForgetGroup {
                agent_id: "web-01".into(),
                source: "web".into(),
                decisions: vec![
                    d("bbbb", 1_000, true, &["last", "newest"]),
                    d("aaaa", 0, false, &[]),
                ],
            }],
            forgotten: if dry_run { 0 } else { 1 },
            dry_run,
        }
    }

    #[test]
    fn text_and_json_show_every_decision() {
        let t = to_text(&response(true));
        assert!(
            t.starts_with("agent web-01 source web: keep 1, remove 1\n"),
            "{t}"
        );
        assert!(
            t.contains("bbbb      1970-01-01T00:00:01Z  keep    last, newest"),
            "{t}"
        );
        assert!(t.contains("aaaa      never                 remove"), "{t}");
        assert!(t.ends_with("dry run: 1 snapshot(s) would be forgotten; nothing was changed\n"));
        assert!(
            to_text(&response(false))
                .ends_with("forgot 1 snapshot(s); GC frees their space later\n")
        );
        let j = to_json(&response(false));
        assert_eq!(j["forgotten"], 1);
        assert_eq!(j["groups"][0]["snapshots"][0]["reasons"][1], "newest");
        assert_eq!(j["groups"][0]["snapshots"][1]["action"], "remove");
    }
}
