//! Logging set-up for the binaries: structured `tracing` events to stderr, human-readable by
//! default or JSON lines with `json = true`. `RUST_LOG` overrides the default filter. Colours
//! only on a terminal: a log redirected to a file or journald stays plain text, so `grep` and
//! log shippers see what was written.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset
/// (e.g. `"info"`). Calling it twice is harmless (the second call does nothing).
pub fn init(default_filter: &str, json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
