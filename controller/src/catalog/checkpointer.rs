//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that pushes the WAL past its limit:
//! that commit copies every page of the WAL into the database file and waits for its `fsync`
//! before returning. On the writer's connection that is a snapshot commit (measured at
//! 2.5 GiB: the transaction's `COMMIT` 207 ms with the checkpoint, 83 ms without) or a pack
//! record an upload waits for. Here a thread with its own connection does the checkpoints
//! instead: the writer's WAL hook ([`Checkpointer::hook`]) only wakes it when the WAL holds
//! [`CHECKPOINT_PAGES`] or more pages, and it runs a `PASSIVE` checkpoint (copies what no reader
//! still needs, never waits for the writer or readers) while the writer goes on.
//!
//! Durability is unchanged: a commit is durable once its WAL frames are synced
//! (`synchronous=FULL`), whoever copies them into the database file later; a crash during a
//! checkpoint is recovered by SQLite from the WAL on the next open.
//!
//! Failure modes: a checkpoint that fails is logged and retried on the next wake-up. If the
//! thread falls behind (or died), the WAL keeps growing; at [`INLINE_PAGES`] the hook
//! checkpoints on the writer's connection as SQLite would have, so the WAL stays bounded. The
//! hook never returns an error: SQLite would report it from a `COMMIT` that has already
//! committed.

use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

use super::CatalogError;

/// WAL pages (4 KiB each: 32 MiB) at which the thread is woken, as SQLite's own limit was set
/// before: index pages hit by many uploads between two checkpoints are copied once.
pub const CHECKPOINT_PAGES: c_int = 8_192;
/// WAL pages (256 MiB) at which the writer checkpoints itself: the thread is not keeping up.
pub const INLINE_PAGES: c_int = 65_536;

/// What the writer's hook does after a commit that left `pages` pages in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    Wake,
    Inline,
}

/// See [`After`].
fn after(pages: c_int, wake_at: c_int) -> After {
    if pages >= INLINE_PAGES.max(wake_at) {
        After::Inline
    } else if pages >= wake_at {
        After::Wake
    } else {
        After::Nothing
    }
}

/// Checkpoints the thread has finished, with the last one's WAL size and frames copied
/// (SQLite's counts), for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Done {
    pub count: u64,
    pub log_frames: c_int,
    pub copied_frames: c_int,
}

/// The checkpoint thread of one file-backed catalog. Dropping it stops and joins the thread
/// (whether or not the writer's connection, whose hook can still wake it, is closed yet).
#[derive(Debug)]
pub struct Checkpointer {
    wake: SyncSender<()>,
    shared: Arc<Shared>,
    wake_at: c_int,
    thread: Option<JoinHandle<()>>,
}

/// What the thread and its handle share.
#[derive(Debug, Default)]
struct Shared {
    done: Mutex<Done>,
    finished: Condvar,
    stop: AtomicBool,
}

impl Checkpointer {
    /// Opens a second connection to the catalog at `path` and starts the thread; it is woken
    /// once the WAL holds `wake_at` pages ([`CHECKPOINT_PAGES`] outside tests).
    pub fn start(path: &Path, wake_at: c_int) -> Result<Checkpointer, CatalogError> {
        let conn = Connection::open(path).map_err(|source| CatalogError::Open {
            path: path.to_owned(),
            source,
        })?;
        // The checkpoint syncs the database file before it lets the WAL be reused.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "cache_size", -1024)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let (wake, rx) = mpsc::sync_channel(1);
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("lifeboat-ckpt".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(conn, rx, &shared)
            })
            .map_err(|e| CatalogError::Task(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            wake,
            shared,
            wake_at,
            thread: Some(thread),
        })
    }

    /// The WAL hook to install on the writer's connection (replaces SQLite's automatic
    /// checkpoint: do not set `wal_autocheckpoint` on it afterwards).
    pub fn hook(&self) -> impl FnMut(&mut Wal, c_int) -> rusqlite::Result<()> + Send + 'static {
        let wake = self.wake.clone();
        let wake_at = self.wake_at;
        move |wal, pages| {
            match after(pages, wake_at) {
                After::Nothing => {}
                After::Wake => {
                    // Full: a wake-up is already pending. Disconnected: the catalog is closing.
                    if let Err(TrySendError::Disconnected(())) = wake.try_send(()) {
                        tracing::debug!("catalog checkpoint thread gone; WAL left as is");
                    }
                }
                After::Inline => {
                    tracing::warn!(pages, "catalog WAL too large: checkpointing on the writer");
                    if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                        tracing::warn!(error = %e, "catalog checkpoint failed; retried after the next commit");
                    }
                }
            }
            Ok(())
        }
    }

    /// What the thread has done so far.
    pub fn done(&self) -> Done {
        *self.shared.done.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the thread has finished more than `count` checkpoints, or `timeout`.
    pub fn wait_past(&self, count: u64, timeout: std::time::Duration) -> Done {
        let guard = self.shared.done.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .shared
            .finished
            .wait_timeout_while(guard, timeout, |d| d.count <= count)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Full: the thread has a wake-up pending and sees `stop` after it. Disconnected: gone.
        let _ = self.wake.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: one `PASSIVE` checkpoint per wake-up until the catalog is dropped.
fn run(conn: Connection, wake: Receiver<()>, shared: &Shared) {
    while wake.recv().is_ok() && !shared.stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((log_frames, copied_frames)) => {
                tracing::debug!(
                    log_frames,
                    copied_frames,
                    ms = t.elapsed().as_millis(),
                    "catalog checkpoint"
                );
                let mut d = shared.done.lock().unwrap_or_else(|p| p.into_inner());
                *d = Done {
                    count: d.count + 1,
                    log_frames,
                    copied_frames,
                };
                shared.finished.notify_all();
            }
            Err(e) => {
                tracing::warn!(error = %e, "catalog checkpoint failed; retried after the next commit")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_wakes_the_thread_then_checkpoints_inline_past_the_backstop() {
        assert_eq!(after(0, CHECKPOINT_PAGES), After::Nothing);
        assert_eq!(
            after(CHECKPOINT_PAGES - 1, CHECKPOINT_PAGES),
            After::Nothing
        );
        assert_eq!(after(CHECKPOINT_PAGES, CHECKPOINT_PAGES), After::Wake);
        assert_eq!(after(INLINE_PAGES - 1, CHECKPOINT_PAGES), After::Wake);
        assert_eq!(after(INLINE_PAGES, CHECKPOINT_PAGES), After::Inline);
        // A wake-up limit above the backstop still wakes the thread first.
        assert_eq!(after(INLINE_PAGES, INLINE_PAGES * 2), After::Nothing);
        assert_eq!(after(INLINE_PAGES * 2, INLINE_PAGES * 2), After::Inline);
    }

    /// The writer's commits leave the WAL to the thread, which copies it into the database;
    /// the rows read back after a reopen.
    #[test]
    fn the_thread_checkpoints_what_the_writer_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let mut writer = Connection::open(&path).expect("open");
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        writer
            .execute_batch("CREATE TABLE t (v BLOB NOT NULL)")
            .expect("table");
        let ckpt = Checkpointer::start(&path, 16).expect("start");
        writer.wal_hook(Some(ckpt.hook())).expect("hook");
        assert_eq!(ckpt.done().count, 0);
        for _ in 0..8 {
            let tx = writer.transaction().expect("tx");
            for _ in 0..8 {
                tx.execute("INSERT INTO t (v) VALUES (zeroblob(4000))", [])
                    .expect("insert");
            }
            tx.commit().expect("commit");
        }
        let d = ckpt.wait_past(0, std::time::Duration::from_secs(30));
        assert!(d.count >= 1, "no checkpoint ran: {d:?}");
        assert!(d.log_frames >= 16 && d.copied_frames > 0, "{d:?}");
        // Stopped while the writer, whose hook can still wake it, is open.
        drop(ckpt);
        drop(writer);
        let again = Connection::open(&path).expect("reopen");
        let n: i64 = again
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 64);
    }

    /// A file-backed catalog's writer leaves its WAL to the thread; an in-memory one has none.
    #[test]
    fn a_file_catalog_checkpoints_on_its_thread() {
        assert!(
            crate::catalog::Catalog::open_in_memory()
                .expect("memory")
                .checkpointer
                .is_none()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = crate::catalog::Catalog::open(&dir.path().join("c.db")).expect("open");
        let ckpt = cat
            .checkpointer
            .as_deref()
            .expect("a file catalog has a checkpoint thread");
        cat.run_blocking(|c| {
            c.execute_batch("CREATE TABLE filler (v BLOB NOT NULL)")?;
            // More than CHECKPOINT_PAGES pages of WAL, in a few commits.
            for _ in 0..4 {
                let tx = c.transaction()?;
                tx.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2300)
                     INSERT INTO filler (v) SELECT zeroblob(4000) FROM n",
                    [],
                )?;
                tx.commit()?;
            }
            Ok(())
        })
        .expect("fill");
        let d = ckpt.wait_past(0, std::time::Duration::from_secs(60));
        assert!(d.count >= 1 && d.copied_frames >= CHECKPOINT_PAGES, "{d:?}");
    }
}
