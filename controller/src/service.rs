//! gRPC handlers. Each handler authenticates first ([`crate::auth`]), converts the request
//! ([`crate::wire`]), calls the library, and maps errors once (`From<ServiceError> for Status`).

pub mod admin;
pub mod agent;
pub mod enrollment;
pub mod reads;
pub mod storage;

use std::sync::Arc;

use crate::ca::Ca;
use crate::catalog::Catalog;
use crate::store::Store;

/// What every handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct State {
    pub catalog: Catalog,
    pub store: Store,
    /// The secondary object store (another region), if configured: reads fall back to it.
    pub secondary: Option<Store>,
    pub ca: Arc<Ca>,
    /// Deadline for each object-store call an agent waits on ([`crate::deadline`]).
    pub store_deadline: std::time::Duration,
    /// Certificate lifetimes, token defaults and the enrollment rate limiter.
    pub enrollment: Arc<crate::enrollment::Policy>,
    /// Bumped by the replication worker after every copy attempt, so that
    /// `ReplicationStatus` with a wait condition is woken instead of polling.
    pub replication_progress: tokio::sync::watch::Sender<u64>,
    /// `[secondary]` settings (delete delay, deletes on/off, scrub) and the scrub counters.
    pub replication: crate::replication::Runtime,
    /// Open upload/commit streams per agent ([`crate::streams`]).
    pub streams: Arc<crate::streams::StreamLimiter>,
    /// The byte budget of restore reads in progress, controller-wide ([`crate::read_limit`]).
    pub reads: Arc<crate::read_limit::ReadLimiter>,
    /// `[gc]` settings (grace, margin, lease, worker interval) for `RunGc` and the worker.
    pub gc: crate::gc::GcSettings,
    /// Live agent control streams ([`crate::fleet::control`]).
    pub control: Arc<crate::fleet::control::Registry>,
    /// Bytes and snapshots committed since start-up, for `/metrics` ([`crate::fleet::counters`]).
    pub counters: Arc<crate::fleet::counters::BackupCounters>,
}
