//! Waiting for what a process logs, without polling: a thread copies the child's stderr line
//! by line into its log file (so `Controller::log` and friends still read a file) and wakes
//! every waiter as each line arrives. A test that needs "the retention worker has run" waits
//! for the line the worker logs once its transaction committed, instead of sleeping between
//! queries.
//!
//! A waiter gives up after its timeout (a bound for a broken build, never a readiness guess)
//! and panics with the whole log; it also stops waiting once the process has closed stderr.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Lines {
    all: Vec<String>,
    closed: bool,
}

/// The lines a child wrote to stderr so far (this run of it), shared with the copying thread.
#[derive(Clone, Default)]
pub struct LogWatch {
    inner: Arc<(Mutex<Lines>, Condvar)>,
}

impl LogWatch {
    /// Starts copying `stderr` to `file` (appended) on a thread.
    pub fn follow(stderr: impl Read + Send + 'static, file: &Path) -> LogWatch {
        let watch = LogWatch::default();
        let mut out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .expect("open log file");
        let shared = watch.inner.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(out, "{line}");
                let (m, cv) = &*shared;
                m.lock().expect("log lines").all.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*shared;
            m.lock().expect("log lines").closed = true;
            cv.notify_all();
        });
        watch
    }

    /// Blocks until `count` lines satisfy `pred` (woken by each new line); returns them.
    /// Panics after `timeout`, or when the process closed stderr first, naming `what` and
    /// showing the log.
    pub fn wait_for(
        &self,
        what: &str,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.inner;
        let mut lines = m.lock().expect("log lines");
        loop {
            let hits: Vec<String> = lines.all.iter().filter(|l| pred(l)).cloned().collect();
            if hits.len() >= count {
                return hits;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !lines.closed && !left.is_zero(),
                "{what}: not logged within {timeout:?}{}; log:\n{}",
                if lines.closed {
                    " (the process closed stderr)"
                } else {
                    ""
                },
                lines.all.join("\n")
            );
            lines = cv.wait_timeout(lines, left).expect("log lines").0;
        }
    }
}
