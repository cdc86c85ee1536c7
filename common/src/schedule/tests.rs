use super::*;

fn every(s: &str) -> Schedule {
    Schedule::parse(s).expect(s)
}

#[test]
fn interval_slots_are_aligned_and_strictly_after() {
    let s = every("every 5m");
    let t0 = utc_ms(2026, 11, 26, 10, 0);
    assert_eq!(s.next_after(t0 - 1, 42), Some(t0));
    assert_eq!(s.next_after(t0, 42), Some(t0 + 300_000));
    assert_eq!(s.next_after(t0 + 299_999, 42), Some(t0 + 300_000));
    assert_eq!(s.to_string(), "every 300s");
    assert_eq!(Schedule::parse(&s.to_string()), Ok(s));
}

#[test]
fn jitter_offsets_are_stable_per_seed_and_inside_the_window() {
    let s = every("every 10m jitter 2m");
    let t0 = utc_ms(2026, 11, 26, 10, 0);
    let mut offsets = std::collections::BTreeSet::new();
    for agent in ["web-01", "web-02", "db-01", "db-02", "cache"] {
        let seed = seed_for(agent);
        let a = s.next_after(t0, seed).expect("slot");
        let b = s.next_after(a, seed).expect("slot");
        assert_eq!(b - a, 600_000, "slots of one agent are one period apart");
        let offset = a.rem_euclid(600_000);
        assert!(
            offset < 120_000,
            "{agent}: offset {offset} outside the jitter"
        );
        assert_eq!(s.next_after(t0, seed), Some(a), "stable");
        offsets.insert(offset);
    }
    assert!(offsets.len() > 1, "agents are spread: {offsets:?}");
}

#[test]
fn cron_next_slots_by_hand() {
    // 2026-11-26 is a Thursday.
    let thu_1003 = utc_ms(2026, 11, 26, 10, 3);
    let cases = [
        ("cron */15 * * * *", utc_ms(2026, 11, 26, 10, 15)),
        ("cron 0 * * * *", utc_ms(2026, 11, 26, 11, 0)),
        ("cron 30 2 * * *", utc_ms(2026, 11, 27, 2, 30)),
        // Sunday, as 0 and as 7.
        ("cron 0 3 * * 0", utc_ms(2026, 11, 29, 3, 0)),
        ("cron 0 3 * * 7", utc_ms(2026, 11, 29, 3, 0)),
        // 1st of the month or Mondays (either matches when both are restricted).
        ("cron 0 0 1 * 1", utc_ms(2026, 11, 30, 0, 0)),
        ("cron 0 0 1 * *", utc_ms(2026, 12, 1, 0, 0)),
        ("cron 5-10/5 9-17 * * 1-5", utc_ms(2026, 11, 26, 10, 5)),
        ("cron 0 0 29 2 *", utc_ms(2028, 2, 29, 0, 0)),
        ("cron 59 23 31 12 *", utc_ms(2026, 12, 31, 23, 59)),
        ("cron 0,30 12 * * *", utc_ms(2026, 11, 26, 12, 0)),
    ];
    for (spec, want) in cases {
        let s = every(spec);
        assert_eq!(s.next_after(thu_1003, 0), Some(want), "{spec}");
        assert_eq!(Schedule::parse(&s.to_string()).as_ref(), Ok(&s), "{spec}");
    }
}

#[test]
fn longest_gap_fits_an_rpo_check() {
    let from = utc_ms(2026, 11, 26, 0, 0);
    assert_eq!(every("every 5m").longest_gap(from).as_secs(), 300);
    assert_eq!(every("cron */15 * * * *").longest_gap(from).as_secs(), 900);
    // Weekdays 9-17 only: the weekend gap is the longest.
    let office = every("cron 0 9-17 * * 1-5").longest_gap(from).as_secs();
    assert_eq!(office, (24 * 2 + 16) * 3600, "Friday 17:00 → Monday 09:00");
}

#[test]
fn bad_specs_are_refused_with_a_reason() {
    for (spec, why) in [
        ("hourly", "unknown form"),
        ("every 5", "needs a unit"),
        ("every 0s", "at least"),
        ("every 5m jitter 5m", "shorter than the period"),
        ("cron * * * *", "5 fields"),
        ("cron 60 * * * *", "outside 0-59"),
        ("cron */0 * * * *", "step of 0"),
        ("cron 0 0 30 2 *", "never matches"),
        ("cron 0 0 x * *", "not a number"),
    ] {
        let e = Schedule::parse(spec).expect_err(spec).to_string();
        assert!(e.contains(why), "{spec}: {e}");
        assert!(e.contains("every 5m"), "the error shows an example: {e}");
    }
}
