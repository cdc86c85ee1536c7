use super::*;
use crate::catalog::failures::{self, FailureRow};
use crate::catalog::policies::PolicyRow;
use crate::catalog::snapshots::{self, SnapshotRow};
use crate::catalog::{Catalog, agents};

const MIN: i64 = 60_000;

fn snapshot(id: &str, agent: &str, source: &str, at: i64) -> SnapshotRow {
    SnapshotRow::sample(id, agent, source, at)
}

/// Two agents: "web" with a db snapshot at 10 min and a later failure, "old" revoked.
pub(crate) fn seeded() -> Catalog {
    let cat = Catalog::open_in_memory().expect("open");
    cat.run_blocking(|c| {
        for (id, fp) in [("web", "f1"), ("old", "f2")] {
            agents::insert(
                c,
                &agents::AgentRow {
                    id: id.into(),
                    dedup_group: "g".into(),
                    cert_sha256: fp.into(),
                    not_after: 0,
                    created_at: 0,
                    last_seen: 7,
                    snapshots: 0,
                },
            )?;
        }
        c.execute("UPDATE agents SET revoked_at = 1 WHERE id = 'old'", [])?;
        c.execute("UPDATE agents SET last_seen = 7", [])?;
        snapshots::insert(c, &snapshot("01", "web", "db", 10 * MIN), &[])?;
        snapshots::insert(c, &snapshot("02", "old", "db", 10 * MIN), &[])?;
        failures::insert(
            c,
            &FailureRow {
                id: "x".into(),
                agent: "web".into(),
                source: "db".into(),
                started_at: 11 * MIN,
                finished_at: 12 * MIN,
                reported_at: 12 * MIN,
                reason: "mysqldump exited with status 2".into(),
            },
        )?;
        crate::catalog::policies::upsert(
            c,
            &PolicyRow {
                scope: "agent:web".into(),
                source: "etc".into(),
                rpo_ms: Some(5 * MIN),
                ..Default::default()
            },
        )?;
        Ok(())
    })
    .expect("seed");
    cat
}

#[test]
fn status_judges_every_known_source_of_live_agents() {
    let cat = seeded();
    let s = cat
        .run_blocking(|c| collect(c, 20 * MIN, false, &NoPresence))
        .expect("collect");
    let names: Vec<_> = s
        .sources
        .iter()
        .map(|r| (r.compliance.agent.as_str(), r.compliance.source.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("web", "db"), ("web", "etc")],
        "revoked agent left out"
    );
    let db = &s.sources[0];
    assert_eq!(
        db.compliance.state,
        RpoState::AtRisk,
        "failure after success"
    );
    assert_eq!(db.compliance.age_ms, Some(10 * MIN));
    assert_eq!(db.last_seen_ms, 7);
    let etc = &s.sources[1];
    assert_eq!(etc.compliance.objective_ms, 5 * MIN, "agent+source policy");
    assert_eq!(etc.compliance.state, RpoState::Breached, "never backed up");
    assert_eq!(db.last_duration_ms, Some(0));
    let text = prometheus_text(&s);
    for line in [
        "lifeboat_backup_last_success_timestamp_seconds{agent=\"web\",source=\"db\"} 600.000",
        "lifeboat_backup_last_run_success{agent=\"web\",source=\"db\"} 0",
        "lifeboat_rpo_seconds{agent=\"web\",source=\"db\"} 600.000",
        "lifeboat_rpo_objective_seconds{agent=\"web\",source=\"etc\"} 300.000",
        "lifeboat_rpo_breached{agent=\"web\",source=\"etc\"} 1",
        "lifeboat_backup_duration_seconds{agent=\"web\",source=\"db\"} 0.000",
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "{line} missing in\n{text}"
        );
    }
    assert!(
        !text.contains("lifeboat_rpo_seconds{agent=\"web\",source=\"etc\"}"),
        "no age before the first snapshot: {text}"
    );
    assert!(
        !text.contains("lifeboat_agent_connected{"),
        "unknown presence: no series"
    );
    let pb = to_pb(&s);
    assert_eq!(pb.sources[0].state, "at_risk");
    assert_eq!(pb.sources[0].last_error, "mysqldump exited with status 2");
    assert_eq!(pb.sources[1].last_success_unix_ms, 0);
    // Forgetting the only snapshot removes the success.
    cat.run_blocking(|c| {
        c.execute("UPDATE snapshots SET forgotten_at = 1 WHERE id = '01'", [])?;
        Ok(())
    })
    .expect("forget");
    let s = cat
        .run_blocking(|c| collect(c, 20 * MIN, false, &NoPresence))
        .expect("collect");
    assert_eq!(s.sources[0].last_success_ms, None);
    assert_eq!(s.sources[0].compliance.state, RpoState::Breached);
}

#[test]
fn a_fleet_of_fifty_agents_is_judged_in_one_pass() {
    let cat = Catalog::open_in_memory().expect("open");
    cat.run_blocking(|c| {
        for i in 0..50 {
            let id = format!("host-{i:02}");
            agents::insert(
                c,
                &agents::AgentRow {
                    id: id.clone(),
                    dedup_group: "fleet".into(),
                    cert_sha256: format!("fp{i}"),
                    not_after: 0,
                    created_at: 0,
                    last_seen: 0,
                    snapshots: 0,
                },
            )?;
            // Even hosts backed up recently, odd ones long ago.
            let at = if i % 2 == 0 { 19 * MIN } else { MIN };
            for src in ["db", "www"] {
                snapshots::insert(c, &snapshot(&format!("{id}-{src}"), &id, src, at), &[])?;
            }
        }
        Ok(())
    })
    .expect("seed");
    let s = cat
        .run_blocking(|c| collect(c, 20 * MIN, false, &NoPresence))
        .expect("collect");
    assert_eq!(s.sources.len(), 100);
    let breached = s
        .sources
        .iter()
        .filter(|r| r.compliance.state == RpoState::Breached)
        .count();
    assert_eq!(breached, 50, "the 25 stale hosts, two sources each");
}
