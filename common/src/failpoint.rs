//! Failpoints: named places where a crash test can make the process abort, pause or fail.
//!
//! **This is a test hook.** Production never sets `LIFEBOAT_FAILPOINTS`; with it unset, every
//! [`hit`] costs one relaxed atomic load after the first call. The crash tests
//! (`integration-tests/tests/e2e/crash.rs`) start the real binaries with it set, kill them at a
//! chosen point, and check that nothing acknowledged was lost.
//!
//! Syntax (read once, on the first hit, from the environment):
//!
//! ```text
//! LIFEBOAT_FAILPOINTS = rule (";" rule)*
//! rule                = name "=" [count ":"] action
//! action              = "abort" | "pause" | "wait" | "error" | "off"
//! ```
//!
//! `count` is the 1-based hit on which the rule fires (`ingest.after_pack_put=3:abort` aborts on
//! the third time that point is reached); without a count the rule fires on every hit.
//! - `abort`: writes `failpoint <name> hit <n>: abort` to stderr, then `std::process::abort()`
//!   (no destructors, no flushing: as close to a power cut as a process can get);
//! - `pause`: writes `failpoint <name> hit <n>: paused` to stderr and blocks the calling thread
//!   forever, so a test can SIGKILL the process at a known point;
//! - `wait`: writes `failpoint <name> hit <n>: waiting for stdin` to stderr and blocks the
//!   calling thread until a line (or end of file) arrives on stdin, then goes on: a test holds a
//!   process at a known point, changes the world (moves a clock, runs GC), and releases it;
//! - `error`: [`check`] returns [`Injected`] (callers that can fail use [`check`]; [`hit`]
//!   ignores `error` rules);
//! - `off`: nothing (handy to disable one rule of a shared spec).
//!
//! A malformed `LIFEBOAT_FAILPOINTS` is a mistake in a test, never silently ignored: the process
//! prints the reason and exits with the usage code (2).
//!
//! Points are `&'static str` so that a typo is visible in one grep; the crash tests list the
//! points they use, and each call site is one line.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use thiserror::Error;

/// The environment variable holding the failpoint rules.
pub const ENV: &str = "LIFEBOAT_FAILPOINTS";

/// What a rule does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Abort,
    Pause,
    Wait,
    Error,
    Off,
}

/// One parsed rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    /// Fires on this (1-based) hit only; `None` = every hit.
    pub nth: Option<u64>,
    pub action: Action,
    hits: AtomicU64,
}

/// A malformed failpoint specification.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid {ENV} rule {rule:?}: {reason} (expected name=[count:]abort|pause|wait|error|off)")]
pub struct SpecError {
    pub rule: String,
    pub reason: &'static str,
}

/// The error a failpoint with the `error` action injects.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("failpoint {name} injected an error (hit {hit}); set by {ENV}, a test hook")]
pub struct Injected {
    pub name: &'static str,
    pub hit: u64,
}

/// A set of rules and their hit counters.
#[derive(Debug, Default)]
pub struct Registry {
    rules: Vec<Rule>,
}

fn parse_rule(text: &str) -> Result<Rule, SpecError> {
    let err = |reason| SpecError {
        rule: text.to_owned(),
        reason,
    };
    let (name, rest) = text.split_once('=').ok_or_else(|| err("missing '='"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(err("empty failpoint name"));
    }
    let (nth, action) = match rest.split_once(':') {
        Some((n, a)) => {
            let n: u64 = n.trim().parse().map_err(|_| err("count is not a number"))?;
            if n == 0 {
                return Err(err("count starts at 1"));
            }
            (Some(n), a)
        }
        None => (None, rest),
    };
    let action = match action.trim() {
        "abort" => Action::Abort,
        "pause" => Action::Pause,
        "wait" => Action::Wait,
        "error" => Action::Error,
        "off" => Action::Off,
        _ => return Err(err("unknown action")),
    };
    Ok(Rule {
        name: name.to_owned(),
        nth,
        action,
        hits: AtomicU64::new(0),
    })
}

impl Registry {
    /// Parses a specification (see the module docs); empty rules are skipped.
    pub fn parse(spec: &str) -> Result<Registry, SpecError> {
        let rules = spec
            .split(';')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(parse_rule)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Registry { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Counts a hit of `name`; returns the action that fires now (if any) and the hit number.
    pub fn evaluate(&self, name: &str) -> Option<(Action, u64)> {
        let mut fired = None;
        for r in self.rules.iter().filter(|r| r.name == name) {
            let hit = r.hits.fetch_add(1, Ordering::Relaxed) + 1;
            if fired.is_none() && r.nth.is_none_or(|n| n == hit) && r.action != Action::Off {
                fired = Some((r.action, hit));
            }
        }
        fired
    }
}

const UNINIT: u8 = 0;
const DISABLED: u8 = 1;
const ENABLED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static REGISTRY: OnceLock<Registry> = OnceLock::new();

fn registry() -> Option<&'static Registry> {
    match STATE.load(Ordering::Relaxed) {
        DISABLED => None,
        ENABLED => REGISTRY.get(),
        _ => init(),
    }
}

#[cold]
fn init() -> Option<&'static Registry> {
    let reg = REGISTRY.get_or_init(|| {
        let spec = std::env::var(ENV).unwrap_or_default();
        match Registry::parse(&spec) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(crate::exit::USAGE);
            }
        }
    });
    let enabled = !reg.is_empty();
    STATE.store(if enabled { ENABLED } else { DISABLED }, Ordering::Relaxed);
    enabled.then_some(reg)
}

fn fire(name: &'static str, action: Action, hit: u64) -> Result<(), Injected> {
    match action {
        Action::Abort => {
            eprintln!("failpoint {name} hit {hit}: abort");
            std::process::abort();
        }
        Action::Pause => {
            eprintln!("failpoint {name} hit {hit}: paused");
            loop {
                std::thread::park();
            }
        }
        Action::Wait => {
            eprintln!("failpoint {name} hit {hit}: waiting for stdin");
            let mut line = String::new();
            // End of file or an error releases the process just the same.
            let _ = std::io::stdin().read_line(&mut line);
            Ok(())
        }
        Action::Error => Err(Injected { name, hit }),
        Action::Off => Ok(()),
    }
}

/// Marks the failpoint `name`: aborts or pauses the process if a rule says so (see the module
/// docs). `error` rules are ignored here; use [`check`] where an error can be returned.
pub fn hit(name: &'static str) {
    if let Some(reg) = registry()
        && let Some((action, n)) = reg.evaluate(name)
        && action != Action::Error
    {
        let _ = fire(name, action, n);
    }
}

/// Like [`hit`], but an `error` rule makes it return [`Injected`].
pub fn check(name: &'static str) -> Result<(), Injected> {
    match registry().and_then(|reg| reg.evaluate(name)) {
        Some((action, n)) => fire(name, action, n),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_and_counts_hits() {
        let reg = Registry::parse(" a.b=3:abort ; c=error;;d=2:pause;e=off").expect("parse");
        assert_eq!(reg.rules.len(), 4);
        assert_eq!(reg.evaluate("a.b"), None);
        assert_eq!(reg.evaluate("a.b"), None);
        assert_eq!(reg.evaluate("a.b"), Some((Action::Abort, 3)));
        assert_eq!(reg.evaluate("a.b"), None, "fires on the 3rd hit only");
        assert_eq!(reg.evaluate("c"), Some((Action::Error, 1)));
        assert_eq!(reg.evaluate("c"), Some((Action::Error, 2)), "every hit");
        assert_eq!(reg.evaluate("d"), None);
        assert_eq!(reg.evaluate("d"), Some((Action::Pause, 2)));
        assert_eq!(reg.evaluate("e"), None);
        assert_eq!(reg.evaluate("unknown"), None);
    }

    #[test]
    fn empty_spec_is_disabled() {
        assert!(Registry::parse("").expect("empty").is_empty());
        assert!(Registry::parse(" ; ").expect("blank").is_empty());
    }

    #[test]
    fn malformed_rules_are_refused() {
        for (spec, reason) in [
            ("x", "missing '='"),
            ("=abort", "empty failpoint name"),
            ("x=two:abort", "count is not a number"),
            ("x=0:abort", "count starts at 1"),
            ("x=3:explode", "unknown action"),
        ] {
            let e = Registry::parse(spec).expect_err(spec);
            assert_eq!(e.reason, reason, "{spec}");
            assert!(e.to_string().contains(ENV), "{e}");
        }
    }

    #[test]
    fn error_action_is_returned_by_fire_and_off_is_ok() {
        assert_eq!(
            fire("p", Action::Error, 4),
            Err(Injected { name: "p", hit: 4 })
        );
        assert_eq!(fire("p", Action::Off, 1), Ok(()));
    }

    #[test]
    fn unset_env_means_no_op() {
        // The test process never sets LIFEBOAT_FAILPOINTS.
        if std::env::var_os(ENV).is_none() {
            hit("never.configured");
            assert_eq!(check("never.configured"), Ok(()));
            assert_eq!(STATE.load(Ordering::Relaxed), DISABLED);
        }
    }
}
