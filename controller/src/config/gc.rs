//! `[gc]` in `controller.toml`: garbage collection timing (docs/gc.md).
//!
//! ```toml
//! [gc]
//! grace = "24h"      # objects younger than this are never condemned nor taken for orphans
//! margin = "10m"     # subtracted from the condemn cutoff (in-flight calls, clock granularity)
//! interval = "24h"   # how often the GC worker runs; "0s" = only `lifeboatctl gc`
//! lease = "1h"       # an upload session silent this long loses its pins
//! repack_below = 50  # rewrite packs with less than this % live data (0: never)
//! repack_budget = "4GiB"  # repack I/O (bytes read + written) per run
//! ```
//!
//! Defaults ([`crate::gc`]): a day of grace frees space daily while covering any gap between a
//! put and its catalog row; a chunk needs two runs (condemn, then sweep) to go, so with the
//! default interval space comes back one to two days after `forget`.

use std::path::Path;
use std::time::Duration;

use lifeboat_common::clock::parse_duration;
use lifeboat_common::config::ConfigError;
use lifeboat_common::rate::parse_bytes;
use serde::Deserialize;

use crate::gc::GcSettings;
use crate::gc::repack::RepackSettings;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GcFile {
    grace: Option<String>,
    margin: Option<String>,
    interval: Option<String>,
    lease: Option<String>,
    repack_below: Option<u8>,
    repack_budget: Option<String>,
}

impl GcFile {
    pub(super) fn validate(self, path: &Path) -> Result<GcSettings, ConfigError> {
        let parse = |key: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                message: format!("[gc] {key}: {e}"),
            }),
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let d = GcSettings::default();
        let lease = parse("lease", &self.lease, d.lease)?;
        if lease < Duration::from_secs(1) {
            return Err(invalid(format!(
                "[gc] lease: {lease:?} is too short; an upload session must live at least 1s between calls (default 1h)"
            )));
        }
        let min_live_percent = self.repack_below.unwrap_or(d.repack.min_live_percent);
        if min_live_percent > 99 {
            return Err(invalid(format!(
                "[gc] repack_below: {min_live_percent} is not a percentage below 100 (0 disables repack; default 50)"
            )));
        }
        let budget = match &self.repack_budget {
            None => d.repack.budget,
            Some(s) => parse_bytes(s).map_err(|e| invalid(format!("[gc] repack_budget: {e}")))?,
        };
        Ok(GcSettings {
            grace: parse("grace", &self.grace, d.grace)?,
            margin: parse("margin", &self.margin, d.margin)?,
            interval: parse("interval", &self.interval, d.interval)?,
            lease,
            repack: RepackSettings {
                min_live_percent,
                budget,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::load_with as load;

    #[test]
    fn gc_section_defaults_values_and_typos() {
        assert_eq!(load("").expect("parse").gc, GcSettings::default());
        let c = load("[gc]\ngrace = \"1s\"\ninterval = \"0s\"\n").expect("parse");
        assert_eq!(c.gc.grace, Duration::from_secs(1));
        assert_eq!(c.gc.interval, Duration::ZERO);
        assert_eq!(c.gc.margin, crate::gc::DEFAULT_MARGIN);
        assert!(load("[gc]\ngrace = \"soon\"\n").is_err());
        assert!(
            load("[gc]\ngrase = \"1s\"\n").is_err(),
            "unknown key refused"
        );
        let c = load("[gc]\nlease = \"5m\"\nrepack_below = 80\nrepack_budget = \"1GiB\"\n")
            .expect("parse");
        assert_eq!(c.gc.lease, Duration::from_secs(300));
        assert_eq!(c.gc.repack.min_live_percent, 80);
        assert_eq!(c.gc.repack.budget, 1 << 30);
        assert!(load("[gc]\nrepack_below = 100\n").is_err());
        assert!(load("[gc]\nlease = \"0s\"\n").is_err());
        assert!(load("[gc]\nrepack_budget = \"lots\"\n").is_err());
    }
}
