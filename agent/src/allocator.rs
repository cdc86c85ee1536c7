//! glibc malloc settings for the agent, applied by re-executing itself once at start.
//!
//! A backup allocates chunk buffers of up to 4 MiB on the reader thread and frees them on the
//! sealing threads; restores do the same with blobs. glibc gives every thread that meets
//! contention its own arena and keeps freed memory in it, so the peak RSS of a 1 GiB backup was
//! 97 MiB for ~40 MiB of live buffers. With one arena and a 4 MiB trim threshold it is 59 MiB
//! (restore 51 MiB), at no measurable cost in wall time (docs/performance-history.md, "Agent
//! memory").
//!
//! The workspace has no `unsafe`, so `mallopt` is out of reach; glibc reads these settings from
//! the environment at process start, hence the re-exec: if `MALLOC_ARENA_MAX` is unset, the agent
//! sets it (and `MALLOC_TRIM_THRESHOLD_`) and `exec`s `/proc/self/exe` with the same arguments —
//! same PID, same file descriptors, so systemd, pipes and terminals see nothing. An operator who
//! sets `MALLOC_ARENA_MAX` (any value) keeps full control; a failed exec just carries on with the
//! defaults.

use std::os::unix::process::CommandExt;

/// Set in the environment of the re-executed agent (and honoured if the operator set it).
pub const ARENA_ENV: &str = "MALLOC_ARENA_MAX";
const ARENAS: &str = "1";
const TRIM_ENV: &str = "MALLOC_TRIM_THRESHOLD_";
const TRIM_BYTES: &str = "4194304";

/// Re-executes the agent with the allocator settings unless they are already in effect. Call
/// first thing in `main`, before any thread starts. Returns only if no re-exec happened.
pub fn tune_and_reexec() {
    if std::env::var_os(ARENA_ENV).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).env(ARENA_ENV, ARENAS);
    if std::env::var_os(TRIM_ENV).is_none() {
        cmd.env(TRIM_ENV, TRIM_BYTES);
    }
    // `exec` returns only on failure; the agent then runs with glibc's defaults.
    let _ = cmd.exec();
}
