//! Harness for end-to-end tests: starts the real `lifeboat-controller`, `lifeboatctl` and
//! `lifeboat-agent` binaries on loopback with real mTLS, and compares file trees.
//!
//! The binaries are found next to the test executable's `deps/` directory (the cargo target
//! directory), or in `LIFEBOAT_BIN_DIR`. `scripts/test` builds them before running the tests.
//! Readiness is signalled, never slept for: the controller is started with `--listen
//! 127.0.0.1:0` and prints `LISTENING <addr>` once it serves; later events are waited for on the
//! lines a process logs ([`logwatch`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod catalog_check;
pub mod logwatch;
pub mod mariadb;
pub mod nginx;
pub mod poc_vm;
pub mod process;
pub mod regions;
pub mod s3;
pub mod tree;

pub use process::{Agent, Controller, bin, run};
