//! UTC calendar periods for the keep-hourly/daily/weekly/monthly/yearly rules.
//!
//! Every period is computed in UTC from Unix milliseconds, so there is no daylight-saving
//! ambiguity: an hour is always 3 600 000 ms and a day 86 400 000 ms. Weeks are ISO 8601 weeks
//! (Monday to Sunday; week 1 holds the year's first Thursday), so the last days of December can
//! belong to week 1 of the next year and the first days of January to week 52/53 of the previous.
//! Times before 1970 work too (floor division throughout).

pub use lifeboat_common::clock::{civil_from_days, days_from_civil};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// A calendar period kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    /// ISO 8601 week.
    Week,
    Month,
    Year,
}

impl Period {
    /// A number that is equal for two times exactly when they fall in the same period.
    pub fn key(self, ms: i64) -> i64 {
        let days = ms.div_euclid(DAY_MS);
        match self {
            Period::Hour => ms.div_euclid(HOUR_MS),
            Period::Day => days,
            // ISO weeks start on Monday: the Monday's day number names the week.
            Period::Week => days - i64::from(weekday(days)),
            Period::Month => {
                let (y, m, _) = civil_from_days(days);
                y * 12 + i64::from(m) - 1
            }
            Period::Year => civil_from_days(days).0,
        }
    }

    /// A human label of the period holding `ms`: `2025-06-11T17`, `2025-06-11`, `2025-W24`,
    /// `2025-06`, `2025`.
    pub fn label(self, ms: i64) -> String {
        let days = ms.div_euclid(DAY_MS);
        let (y, m, d) = civil_from_days(days);
        match self {
            Period::Hour => format!(
                "{y:04}-{m:02}-{d:02}T{:02}",
                ms.rem_euclid(DAY_MS) / HOUR_MS
            ),
            Period::Day => format!("{y:04}-{m:02}-{d:02}"),
            Period::Week => {
                let (wy, w) = iso_week(days);
                format!("{wy:04}-W{w:02}")
            }
            Period::Month => format!("{y:04}-{m:02}"),
            Period::Year => format!("{y:04}"),
        }
    }
}

/// Day of the week of a day number (days since 1970-01-01), Monday = 0 … Sunday = 6.
pub fn weekday(days: i64) -> u32 {
    // 1970-01-01 was a Thursday (3).
    (days + 3).rem_euclid(7) as u32
}

/// ISO 8601 (week-based year, week number) of a day number.
pub fn iso_week(days: i64) -> (i64, u32) {
    // The ISO year of a week is the calendar year of its Thursday.
    let thursday = days - i64::from(weekday(days)) + 3;
    let (y, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(y, 1, 1)) / 7 + 1;
    (y, week as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i64, m: u32, d: u32) -> i64 {
        days_from_civil(y, m, d)
    }

    #[test]
    fn weekdays_and_iso_weeks_match_the_calendar() {
        // (date, weekday Mon=0, ISO year, ISO week), from a printed calendar.
        let table = [
            ((1970, 1, 1), 3, 1970, 1),
            ((2020, 12, 31), 3, 2020, 53),
            ((2021, 1, 3), 6, 2020, 53),
            ((2021, 1, 4), 0, 2021, 1),
            ((2024, 12, 29), 6, 2024, 52),
            ((2024, 12, 30), 0, 2025, 1),
            ((2025, 1, 1), 2, 2025, 1),
            ((2025, 6, 11), 2, 2025, 24),
            ((2026, 1, 1), 3, 2026, 1),
            ((2026, 12, 31), 3, 2026, 53),
            ((2027, 1, 3), 6, 2026, 53),
            ((2027, 1, 4), 0, 2027, 1),
            ((2008, 12, 29), 0, 2009, 1),
            ((2010, 1, 3), 6, 2009, 53),
        ];
        for ((y, m, d), wd, iy, iw) in table {
            let z = day(y, m, d);
            assert_eq!(weekday(z), wd, "{y}-{m}-{d} weekday");
            assert_eq!(iso_week(z), (iy, iw), "{y}-{m}-{d} ISO week");
        }
    }

    #[test]
    fn period_boundaries_are_exact_in_utc() {
        let ms = |y, m, d, h: i64, min: i64| day(y, m, d) * DAY_MS + h * HOUR_MS + min * 60_000;
        let last_of_2024 = ms(2024, 12, 31, 23, 59) + 59_999;
        let first_of_2025 = ms(2025, 1, 1, 0, 0);
        for p in [Period::Hour, Period::Day, Period::Month, Period::Year] {
            assert_ne!(p.key(last_of_2024), p.key(first_of_2025), "{p:?}");
        }
        // …but the same ISO week (2025-W01 starts on Monday 2024-12-30).
        assert_eq!(
            Period::Week.key(last_of_2024),
            Period::Week.key(first_of_2025)
        );
        assert_eq!(Period::Week.label(last_of_2024), "2025-W01");
        assert_eq!(Period::Hour.label(last_of_2024), "2024-12-31T23");
        assert_eq!(Period::Month.label(first_of_2025), "2025-01");
        // Sunday 23:59 and Monday 00:00 are different weeks.
        assert_ne!(
            Period::Week.key(ms(2025, 6, 8, 23, 59)),
            Period::Week.key(ms(2025, 6, 9, 0, 0))
        );
        // Before 1970: floor division keeps 1969-12-31T23:xx in its own hour and day.
        assert_eq!(Period::Day.label(-1), "1969-12-31");
        assert_eq!(Period::Hour.label(-1), "1969-12-31T23");
        assert_eq!(Period::Year.label(-1), "1969");
    }
}
