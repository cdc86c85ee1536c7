//! The replication keys of the `[secondary]` table, beside the store keys it shares with
//! `[store]`:
//!
//! ```toml
//! [secondary]
//! kind = "local"                  # ... any [store] keys
//! path = "/mnt/dr-copy/objects"
//! delete_delay = "7d"             # deletes reach the secondary only this long after they were queued
//! deletes = true                  # false: its credentials cannot delete; deletes are only listed
//! scrub_interval = "6h"           # how often the worker reads back a sample ("0s" turns it off)
//! scrub_sample = 16               # objects read back per periodic scrub
//! ```
//!
//! Scrub defaults: every read-back is cross-region traffic, and packs are tens of MiB, so the
//! default (16 objects every 6 hours, at most ~2 GiB a day) finds a damaged or lost copy within
//! days in a secondary of thousands of objects without a traffic bill of its own; raise
//! `scrub_sample` where traffic is cheap, or run `lifeboatctl replication scrub --sample N`.
//!
//! These keys are taken out of the table before the rest is validated as a store, so the store
//! table keeps `deny_unknown_fields` (a misspelt key is still an error naming it).

use std::path::Path;
use std::time::Duration;

use lifeboat_common::clock::parse_duration;
use lifeboat_common::config::ConfigError;

/// Default delay before a delete reaches the secondary (an admin mistake stays recoverable).
pub const DEFAULT_DELETE_DELAY: Duration = Duration::from_secs(7 * 86_400);
/// Default time between two periodic scrubs.
pub const DEFAULT_SCRUB_INTERVAL: Duration = Duration::from_secs(6 * 3600);
/// Default number of objects a periodic scrub reads back.
pub const DEFAULT_SCRUB_SAMPLE: u32 = 16;
/// The most objects one scrub reads back (a bigger `--sample` is clamped).
pub const MAX_SCRUB_SAMPLE: u32 = 100_000;

/// Replication settings of the `[secondary]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// How long a queued delete waits before it may reach the secondary.
    pub delete_delay: Duration,
    /// Whether the controller deletes in the secondary at all (false: deletes are only listed,
    /// for an operator's job or a bucket lifecycle rule).
    pub deletes: bool,
    /// Time between periodic scrubs; zero turns the periodic scrub off.
    pub scrub_interval: Duration,
    /// Objects read back per periodic scrub (and per on-demand scrub without `--sample`).
    pub scrub_sample: u32,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            delete_delay: DEFAULT_DELETE_DELAY,
            deletes: true,
            scrub_interval: DEFAULT_SCRUB_INTERVAL,
            scrub_sample: DEFAULT_SCRUB_SAMPLE,
        }
    }
}

fn invalid(path: &Path, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        message,
    }
}

fn duration(path: &Path, name: &str, v: toml::Value) -> Result<Duration, ConfigError> {
    let s = v.as_str().ok_or_else(|| {
        invalid(
            path,
            format!("[secondary] {name} must be a string such as \"7d\" or \"1h\""),
        )
    })?;
    parse_duration(s).map_err(|e| invalid(path, format!("[secondary] {name}: {e}")))
}

/// Takes the replication keys out of the raw `[secondary]` table and validates them.
pub(super) fn take(
    table: &mut toml::Table,
    path: &Path,
) -> Result<ReplicationSettings, ConfigError> {
    let mut s = ReplicationSettings::default();
    if let Some(v) = table.remove("delete_delay") {
        s.delete_delay = duration(path, "delete_delay", v)?;
    }
    if let Some(v) = table.remove("deletes") {
        s.deletes = v
            .as_bool()
            .ok_or_else(|| invalid(path, "[secondary] deletes must be true or false".to_owned()))?;
    }
    if let Some(v) = table.remove("scrub_interval") {
        s.scrub_interval = duration(path, "scrub_interval", v)?;
    }
    if let Some(v) = table.remove("scrub_sample") {
        s.scrub_sample = v
            .as_integer()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=MAX_SCRUB_SAMPLE).contains(n))
            .ok_or_else(|| {
                invalid(
                    path,
                    format!(
                        "[secondary] scrub_sample must be a number from 1 to {MAX_SCRUB_SAMPLE}"
                    ),
                )
            })?;
    }
    Ok(s)
}
