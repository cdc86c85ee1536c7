//! Fleet operations: RPO compliance and the alerts derived from it (issue "Fleet operations").
//!
//! - [`rpo`]: for every (agent, source), from catalog facts only (last committed snapshot, last
//!   snapshot restorable from the secondary, last reported failure), the age of the newest
//!   restorable copy and whether it meets the objective. Pure: the clock is a parameter, so
//!   tests move time instead of sleeping, and a restarted controller recomputes the same answer
//!   from the catalog.
//! - [`alerts`]: turns successive assessments into alert events (breach, recovery, failure,
//!   disconnect) by comparing with the last *alerted* state, which is persisted; a restart
//!   therefore neither repeats an alert nor invents a recovery.
//!
//! Not wired yet: the long-lived agent stream, policies and the webhook sender come next.

pub mod alerts;
pub mod rpo;
