use rusqlite::Connection;

use super::cover::{CACHED, Cover, CoverCache};
use super::*;
use crate::catalog::snapshots::{self, SnapshotRow};
use crate::catalog::{Catalog, agents, schema};
use crate::refset;

/// `n` sorted, distinct pseudo-random ids from `seed`.
fn ids(seed: u32, n: u32) -> Vec<ChunkId> {
    let mut v: Vec<ChunkId> = (0..n)
        .map(|i| ChunkId(*blake3::hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat()).as_bytes()))
        .collect();
    v.sort_unstable();
    v
}

fn agent(c: &Connection, id: &str, group: &str) {
    agents::insert(
        c,
        &agents::AgentRow {
            id: id.into(),
            dedup_group: group.into(),
            cert_sha256: format!("fp-{id}"),
            not_after: 0,
            created_at: 0,
            last_seen: 0,
            snapshots: 0,
        },
    )
    .expect("agent");
}

fn row(id: &str, agent: &str) -> SnapshotRow {
    SnapshotRow::sample(id, agent, "web", 1)
}

fn view(c: &Connection, snap: &str) -> Vec<ChunkId> {
    let mut st = c
        .prepare("SELECT chunk_id FROM snapshot_refs WHERE snapshot_id = ?1 ORDER BY chunk_id")
        .expect("prepare");
    st.query_map([snap], |r| r.get::<_, Vec<u8>>(0))
        .expect("query")
        .map(|r| ChunkId(r.expect("row").try_into().expect("32 bytes")))
        .collect()
}

fn count(c: &Connection, table: &str) -> i64 {
    c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

#[test]
fn cuts_cover_every_id_and_end_where_the_object_segments_end() {
    let all = ids(1, 20_000);
    let cuts = cuts(&all);
    assert_eq!(cuts.first().map(|r| r.start), Some(0));
    assert_eq!(cuts.last().map(|r| r.end), Some(all.len()));
    for w in cuts.windows(2) {
        assert_eq!(w[0].end, w[1].start, "contiguous");
    }
    for r in &cuts[..cuts.len() - 1] {
        assert_eq!(
            all[r.end - 1].0[1],
            0,
            "a set ends after an id whose second byte is 0"
        );
    }
    // ~one id in 256 ends a set.
    assert!((40..120).contains(&cuts.len()), "{} sets", cuts.len());
    // Each object segment is a run of whole sets.
    let set_ends: std::collections::HashSet<usize> = cuts.iter().map(|r| r.end).collect();
    let mut end = 0;
    for seg in refset::segments(&all) {
        end += (seg.bytes.len() - 5) / CHUNK_ID_LEN;
        assert!(set_ends.contains(&end), "object segment ends at {end}");
    }
    assert!(super::cuts(&[]).is_empty());
}

#[test]
fn snapshots_share_the_sets_a_change_does_not_touch_and_removal_keeps_shared_ones() {
    let cat = Catalog::open_in_memory().expect("open");
    cat.run_blocking(|c| {
        agent(c, "a", "g");
        let first = ids(2, 10_000);
        let mut second = first.clone();
        second[5_000] = ChunkId([0xee; 32]); // one id replaced
        second.sort_unstable();
        let tx = c.transaction()?;
        snapshots::insert_in(&tx, &row("s1", "a"), &first)?;
        let one = insert(&tx, "s2", "g", &second)?;
        let again = insert(&tx, "s3", "g", &first)?;
        tx.commit()?;
        assert_eq!(view(c, "s1"), first);
        assert_eq!(view(c, "s2"), second);
        assert!(one.sets > 20, "{one:?}");
        assert!(one.new_sets <= 2 && one.new_sets >= 1, "{one:?}");
        assert!(one.new_refs < second.len() / 4, "{one:?}");
        assert_eq!(again.new_sets, 0, "an identical snapshot stores no new set");
        let (s1, s2) = (Cover::load(c, "s1")?, Cover::load(c, "s2")?);
        assert!(s2.references(c, &ChunkId([0xee; 32]))?);
        assert!(!s1.references(c, &ChunkId([0xee; 32]))?);
        assert!(s1.references(c, &first[5_000])?);
        assert!(!s2.references(c, &first[5_000])?);
        assert_eq!(refs_of(c, "s2")?, second);

        let tx = c.transaction()?;
        assert_eq!(
            remove_snapshot(&tx, "s3")?,
            0,
            "s1 still lists every set of s3"
        );
        let removed = remove_snapshot(&tx, "s2")?;
        tx.commit()?;
        assert_eq!(
            removed, one.new_sets as u64,
            "only the sets s2 alone listed"
        );
        assert_eq!(view(c, "s1"), first);
        assert!(view(c, "s2").is_empty());
        let tx = c.transaction()?;
        remove_snapshot(&tx, "s1")?;
        tx.commit()?;
        for t in ["ref_sets", "ref_set_chunks", "snapshot_sets"] {
            assert_eq!(count(c, t), 0, "{t} empty once no snapshot is left");
        }
        Ok(())
    })
    .expect("catalog");
}

#[test]
fn only_live_complete_snapshots_of_the_group_vouch_for_a_set() {
    let cat = Catalog::open_in_memory().expect("open");
    cat.run_blocking(|c| {
        agent(c, "a", "g");
        agent(c, "b", "h");
        let refs = ids(3, 3_000);
        let tx = c.transaction()?;
        snapshots::insert_in(&tx, &row("s1", "a"), &refs)?;
        tx.commit()?;
        let unproven_ids = |c: &Connection, group: &str| -> Result<usize, CatalogError> {
            Ok(unproven(c, group, &refs)?.iter().map(|p| p.len()).sum())
        };
        assert_eq!(
            unproven_ids(c, "g")?,
            0,
            "a live snapshot of the group vouches"
        );
        assert_eq!(unproven_ids(c, "h")?, refs.len(), "never across groups");
        let mut more = refs.clone();
        more.push(ChunkId([0xff; 32]));
        let part: usize = unproven(c, "g", &more)?.iter().map(|p| p.len()).sum();
        assert!(part > 0 && part < 100, "only the changed last set: {part}");

        c.execute("UPDATE snapshots SET missing_refs = 1 WHERE id = 's1'", [])?;
        assert_eq!(
            unproven_ids(c, "g")?,
            refs.len(),
            "a damaged snapshot does not vouch"
        );
        c.execute(
            "UPDATE snapshots SET missing_refs = 0, forgotten_at = 5 WHERE id = 's1'",
            [],
        )?;
        assert_eq!(
            unproven_ids(c, "g")?,
            refs.len(),
            "a forgotten one does not either"
        );
        c.execute(
            "UPDATE snapshots SET forgotten_at = NULL WHERE id = 's1'",
            [],
        )?;
        c.execute("UPDATE agents SET dedup_group = 'other' WHERE id = 'a'", [])?;
        assert_eq!(
            unproven_ids(c, "g")?,
            refs.len(),
            "nor one whose agent left the group"
        );
        Ok(())
    })
    .expect("catalog");
}

#[test]
fn a_v8_catalog_keeps_every_reference_through_the_migration() {
    let mut c = Connection::open_in_memory().expect("open");
    for (i, sql) in schema::MIGRATIONS[..8].iter().enumerate() {
        c.execute_batch(sql).expect("migration");
        c.pragma_update(None, "user_version", (i + 1) as i64)
            .expect("version");
    }
    agent(&c, "a", "g");
    let r1 = ids(4, 700);
    let r2 = ids(5, 300);
    for (snap, refs) in [("s1", &r1), ("s2", &r2)] {
        c.execute(
            "INSERT INTO snapshots (id, agent, source, session_id, started_at, finished_at,
             committed_at, files, dirs, symlinks, logical_bytes, new_logical_bytes, chunks,
             new_chunks, unreadable, files_read, stored_bytes, manifest_ids, reference_count,
             record_key) VALUES (?1, 'a', 'web', 's', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
             x'', 0, 'k' || ?1)",
            [snap],
        )
        .expect("snapshot");
        for id in refs.iter() {
            c.execute(
                "INSERT INTO snapshot_refs (snapshot_id, chunk_id) VALUES (?1, ?2)",
                rusqlite::params![snap, &id.0[..]],
            )
            .expect("ref");
        }
    }
    schema::migrate(&mut c).expect("migrate");
    assert_eq!(view(&c, "s1"), r1);
    assert_eq!(view(&c, "s2"), r2);
    assert_eq!(count(&c, "ref_sets"), 2, "one set per existing snapshot");
    let cover = |snap| Cover::load(&c, snap).expect("cover");
    assert!(cover("s2").references(&c, &r2[7]).expect("probe"));
    assert!(!cover("s1").references(&c, &r2[7]).expect("probe"));
    assert!(cover("s1").references(&c, &r1[0]).expect("probe"));
    assert!(cover("s1").references(&c, &r1[699]).expect("probe"));
    // A new snapshot with s1's references shares nothing with the migrated set (its name is
    // not a content name) but is stored correctly, and removing s1 leaves it whole.
    let tx = c.transaction().expect("tx");
    let ins = insert(&tx, "s3", "g", &r1).expect("insert");
    assert_eq!(ins.new_refs, r1.len());
    remove_snapshot(&tx, "s1").expect("remove");
    tx.commit().expect("commit");
    assert_eq!(view(&c, "s3"), r1);
    assert!(view(&c, "s1").is_empty());
}

/// [`Cover`] answers exactly what the `snapshot_refs` view says, for ids in and out of every
/// snapshot, before and below the first id, past the last, with sets shared between snapshots,
/// sets of several versions holding the same id, and a snapshot that is gone.
#[test]
fn cover_answers_what_the_view_says() {
    let cat = Catalog::open_in_memory().expect("open");
    cat.run_blocking(|c| {
        agent(c, "a", "g");
        let base = ids(7, 3_000);
        let mut snaps: Vec<(String, Vec<ChunkId>)> = Vec::new();
        let tx = c.transaction()?;
        for v in 0..4u32 {
            // Each version replaces every 50th id (touching most sets) and adds a few.
            let mut refs: Vec<ChunkId> = base
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    if i % 50 == (v as usize) {
                        ids(100 + v, 1)[0]
                    } else {
                        *id
                    }
                })
                .collect();
            refs.extend(ids(200 + v, 20));
            refs.sort_unstable();
            refs.dedup();
            let name = format!("s{v}");
            insert(&tx, &name, "g", &refs)?;
            snaps.push((name, refs));
        }
        tx.commit()?;
        let mut probes: Vec<ChunkId> = snaps.iter().flat_map(|(_, r)| r.clone()).collect();
        probes.extend(ids(999, 200));
        probes.push(ChunkId([0; 32]));
        probes.push(ChunkId([0xff; 32]));
        let cache = CoverCache::default();
        for (name, _) in snaps
            .iter()
            .map(|(n, r)| (n.as_str(), r))
            .chain([("gone", &Vec::new())])
        {
            let cover = cache.get(c, name)?;
            assert!(
                std::sync::Arc::ptr_eq(&cover, &cache.get(c, name)?),
                "loaded once"
            );
            let want: std::collections::HashSet<ChunkId> = view(c, name).into_iter().collect();
            for id in &probes {
                assert_eq!(
                    cover.references(c, id)?,
                    want.contains(id),
                    "{name} {}",
                    id.short()
                );
            }
        }
        Ok(())
    })
    .expect("catalog");
}

#[test]
fn the_cover_cache_keeps_the_most_recent_few() {
    let cat = Catalog::open_in_memory().expect("open");
    cat.run_blocking(|c| {
        let cache = CoverCache::default();
        let first = cache.get(c, "s0")?;
        for i in 1..=CACHED {
            cache.get(c, &format!("s{i}"))?;
        }
        let again = cache.get(c, "s0")?;
        assert!(
            !std::sync::Arc::ptr_eq(&first, &again),
            "the oldest was dropped"
        );
        Ok(())
    })
    .expect("catalog");
}
