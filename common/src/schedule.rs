//! Backup schedules: when a source is due. Shared by the controller (which owns policies and
//! judges missed runs) and the agent (which runs its schedule even while the controller is
//! unreachable).
//!
//! Two forms, both in UTC and both answering "the first slot strictly after t":
//! - `every 5m` or `every 5m jitter 2m`: slots at `k × period + offset`, where the offset is a
//!   fixed fraction of the jitter derived from a seed (the agent id). Agents of a fleet are
//!   spread over the jitter window, but each agent's slots are stable, so a restarted agent or
//!   a controller judging a missed run computes the same slots.
//! - `cron M H DOM MON DOW`: the five classic fields with `*`, `*/n`, `a-b`, `a-b/n` and lists;
//!   day of week 0-7 (0 and 7 are Sunday). When both day fields are restricted either may match
//!   (as in Vixie cron). A spec that can never match (`cron 0 0 30 2 *`) is refused at parse
//!   time, so a policy cannot silently never run.
//!
//! Times are Unix milliseconds (i64), like everywhere else on the wire and in the catalog.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use crate::clock::{civil_from_days, days_from_civil, parse_duration};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error(
        "invalid schedule {spec:?}: {reason}; expected e.g. \"every 5m\", \"every 10m jitter 2m\" or \"cron */15 * * * *\""
    )]
    Invalid { spec: String, reason: String },
}

/// A parsed schedule. `Display` gives back a canonical spec that parses to the same schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every { period: Duration, jitter: Duration },
    Cron(Cron),
}

/// The shortest period accepted: below it a backup could not finish before the next is due.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, ScheduleError> {
        let bad = |reason: &str| ScheduleError::Invalid {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let words: Vec<&str> = spec.split_whitespace().collect();
        match words.as_slice() {
            ["every", p] => Self::every(p, "0s").map_err(|r| bad(&r)),
            ["every", p, "jitter", j] => Self::every(p, j).map_err(|r| bad(&r)),
            ["cron", fields @ ..] => Cron::parse(fields).map(Schedule::Cron).map_err(|r| bad(&r)),
            _ => Err(bad("unknown form")),
        }
    }

    fn every(period: &str, jitter: &str) -> Result<Schedule, String> {
        let period = parse_duration(period)?;
        let jitter = parse_duration(jitter)?;
        if period < MIN_PERIOD {
            return Err(format!(
                "the period must be at least {}s",
                MIN_PERIOD.as_secs()
            ));
        }
        if jitter >= period {
            return Err("the jitter must be shorter than the period".into());
        }
        Ok(Schedule::Every { period, jitter })
    }

    /// The first slot strictly after `after_ms`. `seed` spreads agents over the jitter window
    /// (use [`seed_for`] of the agent id). `None` only for a cron spec with no slot within
    /// eight years, which [`Schedule::parse`] already refuses.
    pub fn next_after(&self, after_ms: i64, seed: u64) -> Option<i64> {
        match self {
            Schedule::Every { period, jitter } => {
                let p = i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1);
                let j = i64::try_from(jitter.as_millis()).unwrap_or(0);
                let offset = if j > 0 { (seed % j as u64) as i64 } else { 0 };
                let k = (after_ms - offset).div_euclid(p) + 1;
                Some(k * p + offset)
            }
            Schedule::Cron(c) => c.next_after(after_ms),
        }
    }

    /// The nominal gap between two slots (for cron: the longest gap within the next 8 days,
    /// measured from `from_ms`), used to judge whether a schedule fits inside an RPO.
    pub fn longest_gap(&self, from_ms: i64) -> Duration {
        match self {
            Schedule::Every { period, .. } => *period,
            Schedule::Cron(c) => {
                let mut t = from_ms;
                let mut longest = 0;
                while t < from_ms + 8 * DAY_MS {
                    let Some(n) = c.next_after(t) else { break };
                    if t != from_ms {
                        longest = longest.max(n - t);
                    }
                    t = n;
                }
                Duration::from_millis(u64::try_from(longest).unwrap_or(0))
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every { period, jitter } if jitter.is_zero() => {
                write!(f, "every {}s", period.as_secs())
            }
            Schedule::Every { period, jitter } => {
                write!(
                    f,
                    "every {}s jitter {}s",
                    period.as_secs(),
                    jitter.as_secs()
                )
            }
            Schedule::Cron(c) => write!(f, "cron {}", c.spec),
        }
    }
}

/// A stable seed for an agent's jitter offset (FNV-1a of its id).
pub fn seed_for(agent_id: &str) -> u64 {
    agent_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A five-field cron spec as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    spec: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

impl Cron {
    fn parse(fields: &[&str]) -> Result<Cron, String> {
        let [mi, h, dom, mon, dow] = fields else {
            return Err(format!("cron needs 5 fields, found {}", fields.len()));
        };
        let mut weekdays = field(dow, 0, 7, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        let c = Cron {
            spec: fields.join(" "),
            minutes: field(mi, 0, 59, "minute")?,
            hours: field(h, 0, 23, "hour")?,
            days: field(dom, 1, 31, "day of month")?,
            months: field(mon, 1, 12, "month")?,
            weekdays: weekdays & 0x7f,
            days_any: *dom == "*",
            weekdays_any: *dow == "*",
        };
        if c.next_after(0).is_none() {
            return Err("it never matches a real date".into());
        }
        Ok(c)
    }

    fn day_matches(&self, day: i64) -> bool {
        let (_, m, d) = civil_from_days(day);
        if self.months & (1 << m) == 0 {
            return false;
        }
        let wd = (day + 4).rem_euclid(7); // 1970-01-01 was a Thursday
        let dom_ok = self.days & (1 << d) != 0;
        let dow_ok = self.weekdays & (1 << wd) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => dom_ok,
            (true, false) => dow_ok,
            (false, false) => dom_ok || dow_ok,
        }
    }

    fn next_after(&self, after_ms: i64) -> Option<i64> {
        let mut t = (after_ms.div_euclid(MINUTE_MS) + 1) * MINUTE_MS;
        let limit = t + 8 * 366 * DAY_MS;
        while t < limit {
            let day = t.div_euclid(DAY_MS);
            if !self.day_matches(day) {
                t = (day + 1) * DAY_MS;
                continue;
            }
            let in_day = t.rem_euclid(DAY_MS) / MINUTE_MS;
            let (h, mi) = (in_day / 60, in_day % 60);
            if self.hours & (1 << h) == 0 {
                t = day * DAY_MS + (h + 1) * 60 * MINUTE_MS;
                continue;
            }
            if self.minutes & (1 << mi) == 0 {
                t += MINUTE_MS;
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// Parses one cron field into a bit set over `lo..=hi`.
fn field(s: &str, lo: u32, hi: u32, name: &str) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => (r, num(st, name)?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("{name}: a step of 0"));
        }
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (num(a, name)?, num(b, name)?)
        } else {
            let a = num(range, name)?;
            (a, if part.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{name}: {part:?} is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn num(s: &str, name: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("{name}: {s:?} is not a number"))
}

/// Unix ms of a UTC civil time, for tests and for operators' tools.
pub fn utc_ms(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
    days_from_civil(y, mo, d) * DAY_MS + (h * 60 + mi) * MINUTE_MS
}

#[cfg(test)]
mod tests;
