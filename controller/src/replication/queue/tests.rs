use rusqlite::params;

use super::*;
use crate::catalog::Catalog;

fn obj(key: &str, kind: Kind, size: u64) -> NewObject {
    NewObject {
        key: key.to_owned(),
        kind,
        size,
        blake3: [7; 32],
    }
}

fn pack_row(c: &Connection, key: &str) {
    c.execute(
        "INSERT INTO packs (id, key, size, entries, created_at) VALUES (?1, ?2, 10, 1, 0)",
        params![key.as_bytes(), key],
    )
    .expect("pack");
}

#[test]
fn record_waits_for_its_dependencies() {
    let cat = Catalog::open_in_memory().expect("catalog");
    cat.run_blocking(|c| {
        pack_row(c, "packs/aa/1");
        enqueue(c, &obj("packs/aa/1", Kind::Pack, 10), 1)?;
        enqueue(c, &obj("refs/bb/2", Kind::Refs, 20), 2)?;
        enqueue(c, &obj("snapshots/a/s1", Kind::Record, 30), 3)?;
        add_record_deps(c, "snapshots/a/s1", &["refs/bb/2".to_owned()], "s1", "g")?;
        c.execute(
            "INSERT INTO replication_deps (record_key, dep_key) VALUES ('snapshots/a/s1', 'packs/aa/1')",
            [],
        )?;
        let keys = |c: &Connection| -> Vec<String> {
            ready(c, 100, 10).expect("ready").into_iter().map(|j| j.key).collect()
        };
        assert_eq!(keys(c), vec!["packs/aa/1", "refs/bb/2"], "record not ready yet");
        let s = summary(c)?;
        assert_eq!((s.pending_objects, s.pending_bytes), (3, 60));
        assert_eq!(s.oldest_pending_at, Some(1));
        let jobs = ready(c, 100, 10)?;
        mark_done(c, jobs[0].seq, 50)?;
        assert_eq!(keys(c), vec!["refs/bb/2"], "one dependency still pending");
        mark_failed(c, jobs[1].seq, "secondary down", 60, 1000)?;
        assert!(keys(c).is_empty(), "backing off until 1000");
        let s = summary(c)?;
        assert_eq!(
            s.last_error,
            Some(("refs/bb/2".into(), "secondary down".into(), 60))
        );
        assert_eq!(ready(c, 1000, 10)?[0].attempts, 1);
        mark_done(c, jobs[1].seq, 1001)?;
        assert_eq!(keys(c), vec!["snapshots/a/s1"]);
        assert!(!record_replicated(c, "snapshots/a/s1")?);
        let rec = ready(c, 1001, 10)?;
        mark_done(c, rec[0].seq, 1002)?;
        assert!(record_replicated(c, "snapshots/a/s1")?);
        let s = summary(c)?;
        assert_eq!((s.pending_objects, s.replicated_objects), (0, 3));
        assert_eq!(s.last_error, None);
        Ok(())
    })
    .expect("queue");
}

#[test]
fn enqueue_is_idempotent_and_repairs_rearm() {
    let cat = Catalog::open_in_memory().expect("catalog");
    cat.run_blocking(|c| {
        enqueue(c, &obj("packs/aa/1", Kind::Pack, 10), 1)?;
        enqueue(c, &obj("packs/aa/1", Kind::Pack, 10), 2)?;
        assert_eq!(summary(c)?.pending_objects, 1);
        enqueue_repair(c, "packs/aa/1", 3)?;
        let jobs = ready(c, 10, 10)?;
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].op, Op::Repair);
        mark_done(c, jobs[1].seq, 4)?;
        enqueue_repair(c, "packs/aa/1", 5)?;
        assert_eq!(
            ready(c, 10, 10)?.len(),
            2,
            "a second repair re-arms the row"
        );
        Ok(())
    })
    .expect("queue");
}
