//! `[gc]` in `controller.toml`: garbage collection timing (docs/gc.md).
//!
//! ```toml
//! [gc]
//! grace = "24h"      # objects younger than this are never condemned nor taken for orphans
//! margin = "10m"     # subtracted from the condemn cutoff (in-flight calls, clock granularity)
//! interval = "24h"   # how often the GC worker runs; "0s" = only `lifeboatctl gc`
//! ```
//!
//! Defaults ([`crate::gc`]): a day of grace frees space daily while covering any gap between a
//! put and its catalog row; a chunk needs two runs (condemn, then sweep) to go, so with the
//! default interval space comes back one to two days after `forget`.

use std::path::Path;
use std::time::Duration;

use lifeboat_common::clock::parse_duration;
use lifeboat_common::config::ConfigError;
use serde::Deserialize;

use crate::gc::GcSettings;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GcFile {
    grace: Option<String>,
    margin: Option<String>,
    interval: Option<String>,
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
        let d = GcSettings::default();
        Ok(GcSettings {
            grace: parse("grace", &self.grace, d.grace)?,
            margin: parse("margin", &self.margin, d.margin)?,
            interval: parse("interval", &self.interval, d.interval)?,
            lease: d.lease,
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
    }
}
