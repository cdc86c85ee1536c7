//! Lifeboat's shared core, used by the agent and the controller.
//!
//! - [`ids`]: newtypes for chunk, agent and snapshot ids, validated on construction.
//! - [`keys`]: the fleet master key and the keys derived from it (chunk-id key, blob key,
//!   chunker seed). Only agents ever hold these; the controller never does (trust invariant 1).
//! - [`chunker`]: streaming FastCDC with a gear table seeded from the master key.
//! - [`blob`]: the encrypted chunk format (versioned header, XChaCha20-Poly1305, zstd).
//! - [`manifest`]: the encrypted description of a snapshot (paths, metadata, chunk ids).
//! - [`escrow`]: key escrow envelopes (Argon2id + XChaCha20-Poly1305), passphrase strength
//!   and input, and the checksummed paper form of the master key.
//! - [`tls`], [`config`], [`telemetry`], [`exit`], [`clock`]: process plumbing shared by binaries.
//! - [`failpoint`]: named crash/error points for the crash tests (a test hook, off unless
//!   `LIFEBOAT_FAILPOINTS` is set).
//!
//! Byte layouts are documented in `docs/format.md`; every format constant here is marked
//! "do not modify": a shipped format is never changed, only superseded by a new version.

pub mod appender;
pub mod blob;
pub mod chunker;
pub mod clock;
pub mod config;
pub mod escrow;
pub mod exit;
pub mod failpoint;
pub mod ids;
pub mod join_token;
pub mod keys;
pub mod manifest;
pub mod rate;
pub mod schedule;
pub mod telemetry;
pub mod tls;
