//! The keep rules over a synthetic history, against hand-computed expectations.
//!
//! The history (about a thousand snapshots, March 2021 – June 2025, one group):
//! - background snapshots at irregular times (a seeded generator, gaps of 5–70 hours), always
//!   between 01:00 and 22:59 UTC, from 2021-03-10 until the end of May 2025;
//! - a marker at 23:50 every Sunday (the last snapshot of each ISO week) and at 23:55 on the
//!   last day of every month (the last of its day, month and, in December, year);
//! - a hand-written tail in June 2025 (T1–T16 below), the newest being T16.
//!
//! The markers and the tail are what the expectations name: because background snapshots never
//! fall after 22:59, the newest snapshot of a month (week) before June 2025 is its month-end
//! (Sunday) marker, whatever the generator produced. Every expectation table below was worked
//! out by hand from the calendar (June 1, 2025 is a Sunday; 2023-12-31 is a Sunday), not by
//! running the engine.

use lifeboat_common::clock::format_unix_ms;

use super::period::days_from_civil;
use super::rules::{Candidate, Rules, plan};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

/// `2025-06-11T17:10:00Z` (optionally `.999`) → Unix ms.
fn t(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().expect("number");
    let days = days_from_civil(n(0..4), n(5..7) as u32, n(8..10) as u32);
    let ms = if s.len() > 20 { n(20..23) } else { 0 };
    days * DAY + n(11..13) * HOUR + n(14..16) * 60_000 + n(17..19) * 1000 + ms
}

const TAIL: [&str; 16] = [
    "2025-06-01T08:00:00Z", // T1  Sunday, ISO 2025-W22
    "2025-06-01T20:00:00Z", // T2
    "2025-06-03T10:15:00Z", // T3
    "2025-06-05T00:00:00Z", // T4
    "2025-06-05T23:59:59Z", // T5
    "2025-06-08T12:00:00Z", // T6  Sunday, 2025-W23
    "2025-06-09T00:30:00Z", // T7  Monday, 2025-W24
    "2025-06-10T09:00:00Z", // T8
    "2025-06-10T09:40:00Z", // T9
    "2025-06-10T10:05:00Z", // T10
    "2025-06-11T13:00:00Z", // T11
    "2025-06-11T13:20:00Z", // T12
    "2025-06-11T14:59:59Z", // T13
    "2025-06-11T15:00:00Z", // T14
    "2025-06-11T15:30:00Z", // T15
    "2025-06-11T17:10:00Z", // T16 newest
];

/// The synthetic history; ids are `h<index>` (unique, in insertion order).
fn history() -> Vec<Candidate> {
    let mut times = Vec::new();
    // Background: a 64-bit LCG drives the gaps and minutes.
    let mut x: u64 = 0x5eed_1ab0;
    let mut next = || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x >> 33
    };
    let end = t("2025-06-01T00:00:00Z");
    let mut at = t("2021-03-10T01:00:00Z");
    while at < end {
        times.push(at);
        at += (5 + (next() % 66) as i64) * HOUR + (next() % 60) as i64 * 60_000;
        let in_day = at.rem_euclid(DAY);
        if !(HOUR..23 * HOUR).contains(&in_day) {
            // Move into the next day's 01:00–01:59.
            at = at.div_euclid(DAY) * DAY + DAY + HOUR + (next() % 60) as i64 * 60_000;
        }
    }
    // Sunday markers: 2021-03-14 is a Sunday; the last one before the tail is 2025-05-25.
    let mut sunday = t("2021-03-14T23:50:00Z");
    while sunday <= t("2025-05-25T23:50:00Z") {
        times.push(sunday);
        sunday += 7 * DAY;
    }
    // Month-end markers, 2021-03-31 … 2025-05-31: the day before the 1st of the next month.
    let (mut y, mut m) = (2021i64, 3u32);
    while (y, m) <= (2025, 5) {
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        times.push((days_from_civil(ny, nm, 1) - 1) * DAY + 23 * HOUR + 55 * 60_000);
        (y, m) = (ny, nm);
    }
    times.extend(TAIL.iter().map(|s| t(s)));
    times
        .into_iter()
        .enumerate()
        .map(|(i, time_ms)| Candidate {
            id: format!("h{i:05}"),
            time_ms,
            damaged: false,
        })
        .collect()
}

/// Kept snapshots as (time, reasons), newest first.
type Kept = Vec<(String, Vec<String>)>;

fn kept(rules: &Rules, snaps: &[Candidate]) -> Kept {
    plan(rules, snaps)
        .into_iter()
        .filter(|d| d.keep)
        .map(|d| {
            (
                format_unix_ms(d.time_ms),
                d.reasons.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

fn expect(rows: &[(&str, &[&str])]) -> Kept {
    rows.iter()
        .map(|(time, reasons)| {
            (
                (*time).to_owned(),
                reasons.iter().map(|r| (*r).to_owned()).collect(),
            )
        })
        .collect()
}

fn rules(f: impl FnOnce(&mut Rules)) -> Rules {
    let mut r = Rules::default();
    f(&mut r);
    r
}

#[test]
fn the_history_is_large_irregular_and_spans_years() {
    let h = history();
    assert!(h.len() > 900, "{} snapshots", h.len());
    let first = h.iter().map(|c| c.time_ms).min().expect("first");
    let last = h.iter().map(|c| c.time_ms).max().expect("last");
    assert!(last - first > 4 * 365 * DAY);
    assert_eq!(format_unix_ms(last), "2025-06-11T17:10:00Z");
}

#[test]
fn keep_rules_against_hand_computed_tables() {
    let h = history();
    let cases: Vec<(&str, Rules, Kept)> = vec![
        (
            "keep-last 5",
            rules(|r| r.last = 5),
            expect(&[
                ("2025-06-11T17:10:00Z", &["last", "newest"]),
                ("2025-06-11T15:30:00Z", &["last"]),
                ("2025-06-11T15:00:00Z", &["last"]),
                ("2025-06-11T14:59:59Z", &["last"]),
                ("2025-06-11T13:20:00Z", &["last"]),
            ]),
        ),
        (
            "keep-hourly 4",
            rules(|r| r.hourly = 4),
            expect(&[
                ("2025-06-11T17:10:00Z", &["hourly 2025-06-11T17", "newest"]),
                ("2025-06-11T15:30:00Z", &["hourly 2025-06-11T15"]),
                ("2025-06-11T14:59:59Z", &["hourly 2025-06-11T14"]),
                ("2025-06-11T13:20:00Z", &["hourly 2025-06-11T13"]),
            ]),
        ),
        (
            "keep-daily 8",
            rules(|r| r.daily = 8),
            expect(&[
                ("2025-06-11T17:10:00Z", &["daily 2025-06-11", "newest"]),
                ("2025-06-10T10:05:00Z", &["daily 2025-06-10"]),
                ("2025-06-09T00:30:00Z", &["daily 2025-06-09"]),
                ("2025-06-08T12:00:00Z", &["daily 2025-06-08"]),
                ("2025-06-05T23:59:59Z", &["daily 2025-06-05"]),
                ("2025-06-03T10:15:00Z", &["daily 2025-06-03"]),
                ("2025-06-01T20:00:00Z", &["daily 2025-06-01"]),
                ("2025-05-31T23:55:00Z", &["daily 2025-05-31"]),
            ]),
        ),
        (
            "keep-weekly 5 (ISO weeks)",
            rules(|r| r.weekly = 5),
            expect(&[
                ("2025-06-11T17:10:00Z", &["weekly 2025-W24", "newest"]),
                ("2025-06-08T12:00:00Z", &["weekly 2025-W23"]),
                ("2025-06-01T20:00:00Z", &["weekly 2025-W22"]),
                ("2025-05-25T23:50:00Z", &["weekly 2025-W21"]),
                ("2025-05-18T23:50:00Z", &["weekly 2025-W20"]),
            ]),
        ),
        (
            "keep-monthly 8",
            rules(|r| r.monthly = 8),
            expect(&[
                ("2025-06-11T17:10:00Z", &["monthly 2025-06", "newest"]),
                ("2025-05-31T23:55:00Z", &["monthly 2025-05"]),
                ("2025-04-30T23:55:00Z", &["monthly 2025-04"]),
                ("2025-03-31T23:55:00Z", &["monthly 2025-03"]),
                ("2025-02-28T23:55:00Z", &["monthly 2025-02"]),
                ("2025-01-31T23:55:00Z", &["monthly 2025-01"]),
                ("2024-12-31T23:55:00Z", &["monthly 2024-12"]),
                ("2024-11-30T23:55:00Z", &["monthly 2024-11"]),
            ]),
        ),
        (
            "keep-yearly 10 (only 5 years exist)",
            rules(|r| r.yearly = 10),
            expect(&[
                ("2025-06-11T17:10:00Z", &["yearly 2025", "newest"]),
                ("2024-12-31T23:55:00Z", &["yearly 2024"]),
                ("2023-12-31T23:55:00Z", &["yearly 2023"]),
                ("2022-12-31T23:55:00Z", &["yearly 2022"]),
                ("2021-12-31T23:55:00Z", &["yearly 2021"]),
            ]),
        ),
        (
            "keep-within 2d (of the newest, inclusive)",
            rules(|r| r.within_ms = Some(2 * DAY as u64)),
            expect(&[
                ("2025-06-11T17:10:00Z", &["within", "newest"]),
                ("2025-06-11T15:30:00Z", &["within"]),
                ("2025-06-11T15:00:00Z", &["within"]),
                ("2025-06-11T14:59:59Z", &["within"]),
                ("2025-06-11T13:20:00Z", &["within"]),
                ("2025-06-11T13:00:00Z", &["within"]),
                ("2025-06-10T10:05:00Z", &["within"]),
                ("2025-06-10T09:40:00Z", &["within"]),
                ("2025-06-10T09:00:00Z", &["within"]),
            ]),
        ),
        (
            "keep-last 2, daily 3, monthly 2, yearly 2",
            rules(|r| {
                r.last = 2;
                r.daily = 3;
                r.monthly = 2;
                r.yearly = 2;
            }),
            expect(&[
                (
                    "2025-06-11T17:10:00Z",
                    &[
                        "last",
                        "daily 2025-06-11",
                        "monthly 2025-06",
                        "yearly 2025",
                        "newest",
                    ],
                ),
                ("2025-06-11T15:30:00Z", &["last"]),
                ("2025-06-10T10:05:00Z", &["daily 2025-06-10"]),
                ("2025-06-09T00:30:00Z", &["daily 2025-06-09"]),
                ("2025-05-31T23:55:00Z", &["monthly 2025-05"]),
                ("2024-12-31T23:55:00Z", &["yearly 2024"]),
            ]),
        ),
        (
            "keep-weekly 3 and keep-within 1d",
            rules(|r| {
                r.weekly = 3;
                r.within_ms = Some(DAY as u64);
            }),
            expect(&[
                (
                    "2025-06-11T17:10:00Z",
                    &["weekly 2025-W24", "within", "newest"],
                ),
                ("2025-06-11T15:30:00Z", &["within"]),
                ("2025-06-11T15:00:00Z", &["within"]),
                ("2025-06-11T14:59:59Z", &["within"]),
                ("2025-06-11T13:20:00Z", &["within"]),
                ("2025-06-11T13:00:00Z", &["within"]),
                ("2025-06-08T12:00:00Z", &["weekly 2025-W23"]),
                ("2025-06-01T20:00:00Z", &["weekly 2025-W22"]),
            ]),
        ),
    ];
    for (name, r, want) in cases {
        let got = kept(&r, &h);
        assert_eq!(got, want, "{name}");
        let removed = plan(&r, &h).iter().filter(|d| !d.keep).count();
        assert_eq!(
            removed,
            h.len() - want.len(),
            "{name}: everything else removed"
        );
    }
}

#[test]
fn damaged_snapshots_do_not_count_as_kept_copies() {
    let mut h = history();
    let mark = |h: &mut Vec<Candidate>, time: &str| {
        let at = t(time);
        h.iter_mut()
            .filter(|c| c.time_ms == at)
            .for_each(|c| c.damaged = true);
    };
    mark(&mut h, "2025-06-11T15:30:00Z"); // T15
    mark(&mut h, "2025-06-10T10:05:00Z"); // T10
    let r = rules(|r| {
        r.last = 2;
        r.daily = 2;
    });
    // T15 does not use up a keep-last slot (T14 takes it); T10 does not keep 06-10 (T9 does).
    assert_eq!(
        kept(&r, &h),
        expect(&[
            (
                "2025-06-11T17:10:00Z",
                &["last", "daily 2025-06-11", "newest"]
            ),
            ("2025-06-11T15:00:00Z", &["last"]),
            ("2025-06-10T09:40:00Z", &["daily 2025-06-10"]),
        ])
    );
    // A damaged newest snapshot is still kept, and does not count.
    mark(&mut h, "2025-06-11T17:10:00Z");
    assert_eq!(
        kept(&rules(|r| r.last = 1), &h),
        expect(&[
            ("2025-06-11T17:10:00Z", &["newest"]),
            ("2025-06-11T15:00:00Z", &["last"]),
        ])
    );
}

fn snaps(list: &[(&str, &str)]) -> Vec<Candidate> {
    list.iter()
        .map(|(id, time)| Candidate {
            id: (*id).to_owned(),
            time_ms: t(time),
            damaged: false,
        })
        .collect()
}

fn kept_ids(r: &Rules, s: &[Candidate]) -> Vec<String> {
    plan(r, s)
        .into_iter()
        .filter(|d| d.keep)
        .map(|d| d.id)
        .collect()
}

#[test]
fn ties_break_by_id_and_one_period_keeps_one() {
    let s = snaps(&[
        ("a", "2025-01-01T10:00:00Z"),
        ("b", "2025-01-01T10:00:00Z"),
        ("c", "2025-01-01T10:20:00Z"),
        ("d", "2025-01-01T10:59:59Z"),
    ]);
    assert_eq!(kept_ids(&rules(|r| r.hourly = 3), &s), ["d"]);
    let s = &s[..2];
    assert_eq!(kept_ids(&rules(|r| r.last = 1), s), ["b"]);
    let d = plan(&rules(|r| r.last = 1), s);
    assert_eq!((d[1].id.as_str(), d[1].keep), ("a", false));
}

#[test]
fn year_and_iso_week_boundaries() {
    let s = snaps(&[
        ("w52", "2024-12-29T12:00:00Z"),       // Sunday, 2024-W52
        ("dec31", "2024-12-31T23:59:59.999Z"), // Tuesday, 2025-W01
        ("jan1", "2025-01-01T00:00:00Z"),      // Wednesday, 2025-W01
    ]);
    assert_eq!(kept_ids(&rules(|r| r.yearly = 2), &s), ["jan1", "dec31"]);
    assert_eq!(kept_ids(&rules(|r| r.daily = 2), &s), ["jan1", "dec31"]);
    assert_eq!(kept_ids(&rules(|r| r.monthly = 5), &s), ["jan1", "dec31"]);
    assert_eq!(kept_ids(&rules(|r| r.weekly = 2), &s), ["jan1", "w52"]);
    // ISO 2020-W53 runs from Monday 2020-12-28 to Sunday 2021-01-03.
    let s = snaps(&[
        ("thu", "2020-12-31T08:00:00Z"),
        ("sun", "2021-01-03T22:00:00Z"),
        ("mon", "2021-01-04T00:00:00Z"),
    ]);
    assert_eq!(kept_ids(&rules(|r| r.weekly = 5), &s), ["mon", "sun"]);
}

#[test]
fn keep_within_is_inclusive_and_relative_to_the_newest() {
    let s = snaps(&[
        ("old", "2020-01-01T00:00:00Z"),
        ("edge-", "2025-06-10T11:59:59.999Z"),
        ("edge", "2025-06-10T12:00:00Z"),
        ("new", "2025-06-11T12:00:00Z"),
    ]);
    // The wall clock plays no part: these times are years apart from "now".
    assert_eq!(
        kept_ids(&rules(|r| r.within_ms = Some(DAY as u64)), &s),
        ["new", "edge"]
    );
}

#[test]
fn empty_rules_keep_everything_and_empty_groups_plan_nothing() {
    let s = snaps(&[("a", "2025-01-01T00:00:00Z"), ("b", "2025-01-02T00:00:00Z")]);
    let d = plan(&Rules::default(), &s);
    assert!(d.iter().all(|d| d.keep && d.reasons.len() == 1));
    assert_eq!(d[0].reasons[0].to_string(), "all");
    assert!(plan(&rules(|r| r.last = 3), &[]).is_empty());
    // The newest is kept even by a rule that keeps nothing else.
    assert_eq!(kept_ids(&rules(|r| r.yearly = 1), &s), ["b"]);
}
