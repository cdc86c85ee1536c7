//! `[retention]` in `controller.toml`: default keep rules applied by the retention worker.
//!
//! Absent section, or a section with no rule: the worker does nothing (keep everything). The
//! worker forgets snapshots only; GC frees their objects later.
//!
//! ```toml
//! [retention]
//! interval = "1h"        # how often the worker applies the rules (default 1h)
//! keep_last = 10
//! keep_hourly = 24
//! keep_daily = 7
//! keep_weekly = 5
//! keep_monthly = 12
//! keep_yearly = 3
//! keep_within = "2d"
//! ```

use std::path::Path;
use std::time::Duration;

use lifeboat_common::clock::parse_duration;
use lifeboat_common::config::ConfigError;
use serde::Deserialize;

use crate::retention::rules::Rules;

/// Default interval between two runs of the retention worker.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetentionFile {
    interval: Option<String>,
    #[serde(default)]
    keep_last: u32,
    #[serde(default)]
    keep_hourly: u32,
    #[serde(default)]
    keep_daily: u32,
    #[serde(default)]
    keep_weekly: u32,
    #[serde(default)]
    keep_monthly: u32,
    #[serde(default)]
    keep_yearly: u32,
    keep_within: Option<String>,
}

/// Validated `[retention]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Default rules; empty means the worker never forgets anything.
    pub rules: Rules,
    pub interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            rules: Rules::default(),
            interval: DEFAULT_INTERVAL,
        }
    }
}

impl RetentionFile {
    pub(super) fn validate(self, path: &Path) -> Result<RetentionSettings, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let interval = match &self.interval {
            None => DEFAULT_INTERVAL,
            Some(s) => {
                parse_duration(s).map_err(|e| invalid(format!("[retention] interval: {e}")))?
            }
        };
        if interval < Duration::from_secs(1) {
            return Err(invalid(
                "[retention] interval must be at least 1s".to_owned(),
            ));
        }
        let within_ms = match &self.keep_within {
            None => None,
            Some(s) => {
                let d = parse_duration(s)
                    .map_err(|e| invalid(format!("[retention] keep_within: {e}")))?;
                if d.is_zero() {
                    return Err(invalid(
                        "[retention] keep_within must be longer than 0s (remove the key to unset it)"
                            .to_owned(),
                    ));
                }
                Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
        };
        Ok(RetentionSettings {
            rules: Rules {
                last: self.keep_last,
                hourly: self.keep_hourly,
                daily: self.keep_daily,
                weekly: self.keep_weekly,
                monthly: self.keep_monthly,
                yearly: self.keep_yearly,
                within_ms,
            },
            interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::load_with as load;

    #[test]
    fn absent_section_keeps_everything() {
        let c = load("").expect("parse");
        assert_eq!(c.retention, RetentionSettings::default());
        assert!(c.retention.rules.is_empty());
    }

    #[test]
    fn rules_and_interval_parse() {
        let c = load(
            "[retention]\ninterval = \"15m\"\nkeep_last = 3\nkeep_weekly = 4\nkeep_within = \"2d\"\n",
        )
        .expect("parse");
        assert_eq!(c.retention.interval, Duration::from_secs(900));
        assert_eq!(
            c.retention.rules,
            Rules {
                last: 3,
                weekly: 4,
                within_ms: Some(2 * 86_400_000),
                ..Rules::default()
            }
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let e = load("[retention]\nkeep_within = \"0s\"\n").expect_err("zero within");
        assert!(e.to_string().contains("keep_within"), "{e}");
        let e = load("[retention]\ninterval = \"soon\"\n").expect_err("bad interval");
        assert!(e.to_string().contains("interval"), "{e}");
        let e = load("[retention]\nkeep_lats = 3\n").expect_err("typo");
        assert!(e.to_string().contains("keep_lats"), "{e}");
    }
}
