//! Replication to a secondary object store (another region).
//!
//! - [`marker`]: at start-up each store gets a `registry/role` marker naming its role and a
//!   random store id; a secondary whose marker is the primary's (the same bucket or directory
//!   under another address) or that says `primary` is refused before serving.
//! - [`queue`]: the catalog's replication queue. Every object written to the primary is queued in
//!   the same transaction that records it; the queue survives restarts.
//! - [`worker`]: copies queued objects (retries with exponential backoff, bounded concurrency),
//!   checking size and BLAKE3 of what it copies and the size the secondary reports; a snapshot
//!   record is copied only after every object it needs is in the secondary.
//! - [`fallback`]: reads that fail on the primary (missing, unreachable, failing their hash)
//!   are served from the secondary and a repair copy is queued.
//! - [`status`]: the figures shown by `lifeboatctl replication status` and `/metrics`.
//! - [`scrub`]: reads back a random sample of replicated objects from the secondary; a missing
//!   or damaged one is counted, logged and re-queued.
//! - [`deletes`]: deletes reach the secondary only after `delete_delay`, and never when its
//!   credentials cannot delete (then they are only listed).
//!
//! Failure modes: a secondary that is down only delays replication (rows stay pending and the
//! lag grows; backups are never blocked on it). Objects recorded before catalog v3 (except
//! packs, which the migration queues) are not queued; a catalog rebuild will compare listings.

pub mod deletes;
pub mod fallback;
pub mod marker;
pub mod queue;
pub mod scrub;
pub mod status;
pub mod worker;

use std::sync::Arc;

use thiserror::Error;

use crate::config::ReplicationSettings;

use crate::catalog::CatalogError;
use crate::store::StoreError;

/// What the handlers, the worker and `/metrics` share about replication: the `[secondary]`
/// settings and the scrub counters. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    pub settings: ReplicationSettings,
    pub scrub: Arc<scrub::ScrubCounters>,
}

#[derive(Debug, Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(
        "the secondary store {secondary} is the primary store {primary} (both carry store id {id} in registry/role); point [secondary] at a different bucket or directory"
    )]
    SameStore {
        primary: String,
        secondary: String,
        id: String,
    },
    #[error(
        "the {configured} store {location} is marked as the {found} store of a Lifeboat controller (registry/role); refusing to use it as the {configured}"
    )]
    WrongRole {
        configured: &'static str,
        found: String,
        location: String,
    },
    #[error("the role marker {key} in {location} is unreadable: {reason}")]
    BadMarker {
        key: String,
        location: String,
        reason: String,
    },
    #[error("{0}")]
    Injected(String),
    #[error("{what} {key}: {reason}")]
    Verify {
        what: &'static str,
        key: String,
        reason: String,
    },
}
