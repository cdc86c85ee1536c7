//! Fleet operations: policies, RPO compliance, and the alerts and metrics derived from it
//! (issue "Fleet operations").
//!
//! - [`policy`]: stored policies per scope and their resolution into each source's effective
//!   schedule, objective, bandwidth limit and niceness (pushed to agents by the control stream).
//! - [`rpo`]: for every (agent, source), from catalog facts only (last committed snapshot, last
//!   snapshot restorable from the secondary, last reported failure), the age of the newest
//!   restorable copy and whether it meets the objective. Pure: the clock is a parameter, so
//!   tests move time instead of sleeping, and a restarted controller recomputes the same answer
//!   from the catalog.
//! - [`status`]: reads those facts from the catalog for the whole fleet (the `FleetStatus` RPC,
//!   `lifeboatctl status`, `/metrics` and the alert worker share it).
//! - [`alerts`]: turns successive assessments into alert events (breach, recovery, failure,
//!   disconnect) by comparing with the last *alerted* state, which is persisted; a restart
//!   therefore neither repeats an alert nor invents a recovery.
//! - [`alert_worker`] and [`webhook`]: the named task that evaluates alerts on an interval, logs
//!   them, persists the alerted state and posts signed webhooks.
//! - [`clock`]: the judging clock (a test hook can shift it).
//! - [`control`]: the live control streams of connected agents.

pub mod alert_worker;
pub mod alerts;
pub mod clock;
pub mod control;
pub mod counters;
pub mod policy;
pub mod rpc;
pub mod rpo;
pub mod status;
pub mod webhook;
