//! Lifeboat's controller: the gRPC server that agents back up to, and the library behind
//! `lifeboatctl`.
//!
//! Trust invariants kept here (see DESIGN.md):
//! - the controller only ever handles ciphertext, keyed chunk ids, sizes and times;
//! - agents are append-only and isolated: every call is authenticated ([`auth`]) and scoped to
//!   the caller (its snapshots, its dedup group);
//! - acknowledged means durable: objects are put and fsync'd ([`store`]) before the catalog
//!   ([`catalog`]) records them, and the catalog commits before a response is sent.
//!
//! Modules:
//! - [`config`]: `controller.toml` and `lifeboatctl.toml`.
//! - [`ca`]: the private CA (init, server and admin certificates, signing agent CSRs).
//! - [`init`]: `lifeboat-controller init`.
//! - [`server`]: TLS accept loop and the tonic server ([`server::serve`]).
//! - [`auth`]: peer certificate → [`auth::Identity`].
//! - [`service`]: the AgentService and AdminService handlers; [`wire`] validates requests.
//! - [`ingest`], [`commit`]: upload and commit paths; [`pack`], [`refset`], [`record`]: the
//!   object formats they write.
//! - [`client`], [`ctl`]: the admin CLI and its error classification.
//! - [`replication`]: the secondary store (role markers, queue, worker, read fallback);
//!   [`metrics`]: the plain-HTTP Prometheus endpoint.
//! - [`registry`]: append-only registry objects in the bucket (agents, admins, grants);
//!   [`rebuild`]: `lifeboat-controller rebuild-catalog`, a catalog from the bucket alone.
//! - [`deadline`]: the per-operation deadline on store calls an agent waits on;
//!   `fault_store` (tests): a fault-injecting `ObjectStore` wrapper.

pub mod auth;
pub mod ca;
pub mod catalog;
pub mod client;
pub mod commit;
pub mod config;
pub mod ctl;
pub mod deadline;
pub mod enrollment;
pub mod error;
pub mod escrow;
#[cfg(any(test, feature = "testing"))]
pub mod fault_store;
pub mod fleet;
pub mod gc;
pub mod ingest;
pub mod init;
pub mod issue_certs;
pub mod metrics;
pub mod pack;
pub mod read_limit;
pub mod rebuild;
pub mod record;
pub mod recover_ca;
pub mod refset;
pub mod registry;
pub mod replication;
pub mod retention;
pub mod server;
pub mod service;
pub mod store;
pub mod streams;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wire;

/// The largest gRPC message either service accepts: a maximal blob plus framing slack.
pub const MAX_MESSAGE_BYTES: usize = (8 << 20) + (64 << 10);
/// HTTP/2 receive window per stream on the server: a whole upload batch (4 MiB of blobs) and
/// more, so an upload never waits for a window update mid-batch.
pub const H2_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 receive window per connection on the server: two batches in flight per agent.
pub const H2_CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame the server accepts (fewer frames per blob than the 16 KiB default).
pub const H2_MAX_FRAME: u32 = 1 << 20;
/// The most chunk ids accepted in one HaveChunks, ReadChunks or RefBatch message.
pub const MAX_IDS: usize = 4096;
/// The most distinct ids one snapshot may reference.
pub const MAX_REFERENCE_COUNT: u64 = 50_000_000;
/// The controller's version, reported by WhoAmI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
