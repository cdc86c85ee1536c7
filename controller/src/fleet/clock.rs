//! The controller's judging clock: RPO status, alerts and fleet metrics, the start of a GC run
//! (condemn cutoff, lease expiry) and when delayed secondary deletes fall due.
//!
//! Production reads the system clock. Tests of real processes must move time forward without
//! sleeping; with the `testing` feature (which `cargo build --workspace` enables through the
//! integration tests), the environment variable [`ENV_OFFSET_FILE`] names a file holding a
//! signed offset in milliseconds, re-read on every call, so a test can move the controller's
//! fleet clock while it runs. A missing or empty file means no offset; an unreadable number is
//! logged and ignored. Snapshot commit times, chunk creation times and session leases are not
//! affected: only the judging clock moves (so moving it forward ages everything at once).

/// Names the offset file (only honoured with the `testing` feature).
pub const ENV_OFFSET_FILE: &str = "LIFEBOAT_TEST_CLOCK_OFFSET_FILE";

/// Now, in Unix milliseconds, as status and alerts see it.
pub fn now_ms() -> i64 {
    lifeboat_common::clock::now_unix_ms().saturating_add(offset_ms())
}

#[cfg(any(test, feature = "testing"))]
fn offset_ms() -> i64 {
    let Some(path) = std::env::var_os(ENV_OFFSET_FILE) else {
        return 0;
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        return 0;
    }
    text.parse().unwrap_or_else(|e| {
        tracing::warn!(path = ?path, error = %e, "test clock offset file is not a number; ignored");
        0
    })
}

#[cfg(not(any(test, feature = "testing")))]
fn offset_ms() -> i64 {
    0
}

/// Logs (at warn) when the test clock is in effect, so a log shows why times look shifted.
pub fn announce() {
    if cfg!(any(test, feature = "testing")) && std::env::var_os(ENV_OFFSET_FILE).is_some() {
        tracing::warn!(
            offset_ms = offset_ms(),
            "test clock offset file in effect (testing build)"
        );
    }
}
