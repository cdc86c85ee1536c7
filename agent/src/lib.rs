//! `lifeboat-agent`: backs up file trees on a VM to the Lifeboat controller and restores them.
//!
//! - [`config`]: `agent.toml`, validated into a runtime type.
//! - [`backup`]: walk → read/chunk (or file cache) → `HaveChunks` → seal + upload → manifest →
//!   commit.
//! - [`restore`]: snapshot → manifest → files written to temporary names and renamed into place,
//!   never outside the target root.
//! - [`allocator`]: glibc malloc settings applied by re-executing once at start (peak RSS).
//! - [`cache`]: the sled file cache (only a cache; losing it costs a full read).
//! - [`client`] and [`remote`]: the controller over mTLS gRPC, behind a small trait, and the
//!   failure classifier behind exit codes 4 and 5.
//! - [`enroll`]: `init` — the key pair and CSR made on the VM.
//! - [`daemon`]: `run` — scheduled backups until SIGTERM/SIGINT.
//! - [`cli`] and [`commands`]: the command line, one file per subcommand.
//!
//! The agent holds the master key; the controller never sees plaintext or keys (trust
//! invariant 1). Everything read from the controller is verified (AEAD + keyed hash) before use.

pub mod allocator;
pub mod backup;
pub mod cache;
pub mod chunking;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod enroll;
pub mod error;
pub mod mysql;
pub mod nginx;
pub mod remote;
pub mod restore;
pub mod scratch;
