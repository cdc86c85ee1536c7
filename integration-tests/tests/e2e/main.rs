//! Every end-to-end test, as one test binary with a module per area: real controller,
//! lifeboatctl and agent processes on loopback with real mTLS, and the private MariaDB, nginx and
//! S3-compatible servers of `lifeboat_integration_tests`. Each module's doc says what it proves.
//!
//! One binary, not one per file: each test binary compiles and links its own copy of the generic
//! code it uses from tokio, tonic, rustls and the Lifeboat crates. The 25 binaries of before took
//! ~45 s of a cold test build together (`cargo build --timings`); this one takes ~10 s.
//! Isolation does not change under `cargo nextest`, which runs every test in its own process.
//! The tests never share mutable process state (no environment, working directory or umask
//! changes; each starts its own servers on free loopback ports or Unix sockets, in its own
//! temporary directories), so `cargo test`'s threads are safe too.
//!
//! Run one area: `cargo nextest run -p lifeboat-integration-tests foundation::`; a by-hand
//! benchmark: `cargo test -p lifeboat-integration-tests --test e2e rebuild::rebuild_bench -- --ignored`.

mod bad_input;
mod bandwidth;
mod cpu_check;
mod crash;
mod disaster;
mod enroll;
mod escrow;
mod fleet_control;
mod fleet_demo;
mod fleet_status;
mod foundation;
mod gc;
mod gc_regions;
mod hostile;
mod mysql;
mod rebuild;
mod replication;
mod replication_bench;
mod replication_crash;
mod retention;
mod runbooks;
mod s3;
mod secrets;
mod security;
mod services;
