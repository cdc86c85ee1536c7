//! The read-only connections of a file-backed catalog ([`super::Catalog::read`]).
//!
//! At most [`READERS`] connections, opened on first use (after the writer's connection has
//! migrated the schema), each with its own page cache of [`READER_CACHE_KIB`]. A caller takes
//! a free one or queues on one round robin. Each is opened read-only with `query_only` on, so a
//! closure that tries to write fails instead of racing the writer. WAL lets a read transaction
//! run beside the writer's; it sees the database as of its first read.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

use super::CatalogError;

/// Read-only connections a file-backed catalog opens at most: one per core of the machine
/// the benchmark runs on. Each caches up to [`READER_CACHE_KIB`] of pages.
pub const READERS: usize = 2;

/// Page cache of one reader connection, KiB (the writer's is 32 MiB): the controller's memory
/// grows by at most `READERS` times this.
pub const READER_CACHE_KIB: i64 = 8 << 10;

/// The read-only connections of a file-backed catalog ([`super::Catalog::read`]).
#[derive(Debug)]
pub struct Readers {
    path: PathBuf,
    slots: Vec<Mutex<Option<Connection>>>,
    /// Where a caller that finds every slot busy queues (round robin).
    next: std::sync::atomic::AtomicUsize,
}

impl Readers {
    pub fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_owned(),
            slots: (0..READERS).map(|_| Mutex::new(None)).collect(),
            next: Default::default(),
        }
    }

    /// Runs `f` on a free reader (opened on first use), or waits for one.
    pub fn with<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, CatalogError>,
    ) -> Result<R, CatalogError> {
        let poisoned =
            || CatalogError::Task("catalog reader lock poisoned by an earlier panic".into());
        let free = self.slots.iter().find_map(|s| s.try_lock().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => {
                let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.slots[i % self.slots.len()]
                    .lock()
                    .map_err(|_| poisoned())?
            }
        };
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(open_reader(&self.path)?),
        };
        f(conn)
    }
}

/// A read-only connection to the (already migrated) catalog at `path`.
fn open_reader(path: &Path) -> Result<Connection, CatalogError> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let open = |source| CatalogError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(open)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // As the writer's (`Catalog::setup`): plans never depend on the values bound.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}
