//! Issue 5, test 3: the controller killed in the middle of replication at seeded points. At
//! every kill point, no snapshot record is in the secondary unless every object it references
//! is there too (ordering); after a clean restart replication resumes and completes with
//! every object byte-identical in both regions.
//!
//! Kill points: the `replication.before_copy=K:abort` failpoint aborts the process (as SIGKILL
//! would: no destructor, no flush) at the K-th copy attempt of that run, while up to three
//! other copies are in flight. K is drawn from a seeded generator, bounded by what is still
//! pending, so the run is reproducible (`LIFEBOAT_TEST_SEED`) and cannot wait forever.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use lifeboat_integration_tests::process::master_key;
use lifeboat_integration_tests::regions;
use lifeboat_integration_tests::tree::{Rng, walk, write_data};
use lifeboat_integration_tests::{Agent, Controller};

fn pending(catalog: &Path) -> u64 {
    let c = rusqlite::Connection::open(catalog).unwrap();
    let n: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM replication_queue WHERE done_at IS NULL AND op = 'copy'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    n as u64
}

/// Every snapshot record present in the secondary has all its dependencies there (as the
/// controller recorded them at commit, `replication_deps`). Returns the records checked.
fn assert_records_after_their_objects(catalog: &Path, secondary: &Path) -> usize {
    let c = rusqlite::Connection::open(catalog).unwrap();
    let mut stmt = c
        .prepare("SELECT record_key, dep_key FROM replication_deps ORDER BY record_key")
        .unwrap();
    let deps: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut records = std::collections::BTreeSet::new();
    for (record, dep) in &deps {
        if secondary.join(record).is_file() {
            records.insert(record.clone());
            assert!(
                secondary.join(dep).is_file(),
                "{record} reached the secondary before {dep}, which it references"
            );
        }
    }
    records.len()
}

#[test]
fn killed_mid_replication_at_seeded_points_resumes_in_order() {
    let seed = std::env::var("LIFEBOAT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    eprintln!("LIFEBOAT_TEST_SEED={seed}");
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = t.join("controller");
    let secondary = t.join("region-2");
    regions::init(&dir);
    regions::local_secondary(&dir, &secondary);

    // Several backups while every copy fails: the queue fills with packs, reference segments,
    // records (each waiting on its objects) and registry objects.
    let mut ctl = Controller::serve_with_env(
        &dir,
        &[("LIFEBOAT_FAILPOINTS", "replication.before_copy=error")],
    );
    let key = t.join("fleet-master.key");
    master_key(&ctl, &key);
    let www = t.join("www");
    fs::create_dir(&www).unwrap();
    let sources = format!(
        "[[source]]\nname = \"web\"\nkind = \"files\"\npaths = [{:?}]\n",
        www.to_str().unwrap()
    );
    let agent = Agent::enroll(&ctl, &t.join("vm"), "web-01", None, &key, &sources);
    for i in 0..5u64 {
        write_data(&www.join(format!("f{i}.bin")), 2 << 20, 100 + i, false);
        agent.backup("web");
    }
    ctl.stop();
    let catalog = dir.join("catalog.db");
    let mut left = pending(&catalog);
    assert!(left >= 15, "{left} objects pending");

    let mut kills = 0;
    let mut records_seen_mid_way = 0;
    while left >= 2 && kills < 12 {
        let k = 2 + rng.below(left.min(8) - 1);
        ctl = Controller::serve_with_env(
            &dir,
            &[(
                "LIFEBOAT_FAILPOINTS",
                &format!("replication.before_copy={k}:abort"),
            )],
        );
        let status = ctl.wait_exit().expect("exit status");
        assert!(
            !status.success(),
            "kill point {k} did not stop the controller"
        );
        kills += 1;
        let checked = assert_records_after_their_objects(&catalog, &secondary);
        records_seen_mid_way = records_seen_mid_way.max(checked);
        let now = pending(&catalog);
        eprintln!("kill {kills} at copy {k}: {left} → {now} pending, {checked} records checked");
        assert!(now <= left, "the queue never grows across a crash");
        left = now;
    }
    assert!(kills >= 2, "at least two kill points were exercised");
    assert!(
        records_seen_mid_way > 0,
        "some kill point fell after a record was copied (else ordering went untested)"
    );

    // A clean restart: replication resumes and completes.
    let ctl = Controller::serve(&dir);
    ctl.wait_caught_up();
    assert_eq!(
        assert_records_after_their_objects(&catalog, &secondary),
        5,
        "every snapshot record is replicated"
    );
    let primary = dir.join("objects");
    let mut compared = 0;
    for prefix in ["packs", "refs", "snapshots", "registry"] {
        for (rel, m) in walk(&primary.join(prefix)) {
            let name = rel.display().to_string();
            if !m.is_file() || name.contains('#') || name == "role" {
                continue;
            }
            let a = fs::read(primary.join(prefix).join(&rel)).unwrap();
            let b = fs::read(secondary.join(prefix).join(&rel))
                .unwrap_or_else(|e| panic!("{prefix}/{name} missing in the secondary: {e}"));
            assert!(a == b, "{prefix}/{name} differs");
            compared += 1;
        }
    }
    assert!(compared as u64 >= 15, "{compared} objects compared");
}
