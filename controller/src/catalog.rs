//! The catalog: a SQLite index of the object store (agents, packs, chunks, sessions, snapshots).
//!
//! Durability: WAL journal, `synchronous=FULL`, foreign keys on. The schema is migrated by
//! `PRAGMA user_version` ([`schema`]). The catalog is an index, not the source of truth: every
//! pack, reference segment and snapshot record is an object in the store and is written (and
//! fsync'd) *before* the catalog row that points at it, so a crash leaves at worst an
//! unreferenced object, never a row pointing at nothing.
//!
//! Concurrency: one connection behind a mutex, used from `spawn_blocking` ([`Catalog::run`]).
//! Every write is therefore serialized; multi-row writes run in one transaction. Lookups that
//! write nothing may instead run on one of [`readers::READERS`] read-only connections
//! ([`Catalog::read`]): WAL gives each read transaction a consistent snapshot while the writer
//! goes on, so HaveChunks' per-id probes (the controller's work in a backup that changed
//! little) use a second core instead of queueing behind pack records and commits. A reader's
//! snapshot can be older than the writer's latest commit: code that acts on what it read must
//! either be safe on a snapshot (module docs of the caller say why) or re-check in a write.
//! An in-memory catalog (tests) has no readers: [`Catalog::read`] uses the one connection.
//! WAL checkpoints run on a thread with a connection of its own ([`checkpointer`]), not inside
//! the writer's commits.
//!
//! | operation        | runs concurrently with      | why it is safe                              |
//! |------------------|-----------------------------|---------------------------------------------|
//! | record a pack    | any                         | `INSERT OR IGNORE`: the first writer wins   |
//! | commit snapshot  | uploads of the same group; GC | it re-checks, in the transaction that inserts the snapshot, that every referenced chunk row is live (GC removes only rows condemned in an earlier run and unreferenced at sweep); see `docs/gc.md` |
//! | reads            | any                         | serialized on the same connection           |
//! | `Catalog::read`  | the writer, one other read  | a read-only connection, WAL snapshot        |

pub mod agents;
pub mod alert_state;
pub mod checkpointer;
pub mod chunk_epoch;
pub mod chunks;
pub mod credentials;
pub mod failures;
pub mod grants;
pub mod inventory;
pub mod policies;
pub mod readers;
pub mod refsets;
pub mod schema;
pub mod snapshots;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("cannot open catalog {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("catalog query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "catalog schema version {found} is newer than this controller understands ({known}); upgrade lifeboat-controller"
    )]
    TooNew { found: i64, known: i64 },
    #[error("catalog row is invalid: {0}")]
    Corrupt(String),
    #[error("catalog worker failed: {0}")]
    Task(String),
}

/// Handle on the catalog; cheap to clone.
#[derive(Clone, Debug)]
pub struct Catalog {
    conn: Arc<Mutex<Connection>>,
    /// Read-only connections, opened on first use; `None` for an in-memory catalog.
    readers: Option<Arc<readers::Readers>>,
    /// Recent parents' reference-set covers, for `HaveChunks` ([`refsets::cover`]).
    covers: Arc<refsets::cover::CoverCache>,
    /// The WAL checkpoint thread; `None` for an in-memory catalog.
    checkpointer: Option<Arc<checkpointer::Checkpointer>>,
}

impl Catalog {
    /// Opens (creating if needed) and migrates the catalog at `path`.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        let conn = Connection::open(path).map_err(|source| CatalogError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut catalog = Self::setup(conn)?;
        catalog.readers = Some(Arc::new(readers::Readers::new(path)));
        let ckpt = checkpointer::Checkpointer::start(path, checkpointer::CHECKPOINT_PAGES)?;
        catalog.run_blocking(|c| Ok(c.wal_hook(Some(ckpt.hook()))?))?;
        catalog.checkpointer = Some(Arc::new(ckpt));
        Ok(catalog)
    }

    /// An in-memory catalog, for tests.
    pub fn open_in_memory() -> Result<Self, CatalogError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self, CatalogError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // 32 MiB of page cache (SQLite's default is 2 MiB): a backup's lookups and inserts
        // touch pages all over the chunk index, and re-reading them costs a syscall each.
        conn.pragma_update(None, "cache_size", -32_768)?;
        // A file-backed catalog checkpoints its WAL on a thread of its own instead
        // ([`checkpointer`], installed by [`Catalog::open`]).
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Query-planner stability: plans never depend on the values bound. Without it, SQLite
        // (built with STAT4) marks statements such as the join through the reference sets'
        // by-chunk index to be re-prepared whenever a parameter is rebound, and ReadChunks'
        // authorization spent 28% of the controller's CPU of a restore re-parsing one
        // statement. The catalog is never ANALYZEd, so no plan depended on the values anyway.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        schema::migrate(&mut conn)?;
        chunk_epoch::install(&conn)?;
        Ok(Catalog {
            conn: Arc::new(Mutex::new(conn)),
            readers: None,
            covers: Arc::default(),
            checkpointer: None,
        })
    }

    /// The cache of recent parents' covers (pass it into [`Catalog::run`] closures).
    pub fn covers(&self) -> Arc<refsets::cover::CoverCache> {
        Arc::clone(&self.covers)
    }

    /// Runs `f` on the connection, on the current thread (for CLI code and tests).
    pub fn run_blocking<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, CatalogError>,
    ) -> Result<R, CatalogError> {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| CatalogError::Task("catalog lock poisoned by an earlier panic".into()))?;
        f(&mut guard)
    }

    /// Runs `f` on the connection on a blocking thread.
    pub async fn run<R, F>(&self, f: F) -> Result<R, CatalogError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, CatalogError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.run_blocking(f))
            .await
            .map_err(|e| CatalogError::Task(e.to_string()))?
    }
}

impl Catalog {
    /// Runs `f`, which must only read, on a read-only connection on a blocking thread (the
    /// writer's connection for an in-memory catalog). Open a transaction in `f` when its
    /// lookups must agree with each other: each statement outside one sees the latest commit.
    pub async fn read<R, F>(&self, f: F) -> Result<R, CatalogError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, CatalogError> + Send + 'static,
    {
        let Some(readers) = self.readers.clone() else {
            return self.run(f).await;
        };
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| CatalogError::Task(e.to_string()))?
    }
}

/// Converts a count or size to SQLite's i64 (saturating; real values never get near it).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Converts a stored i64 back to u64 (negative values, which we never write, read as 0).
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
