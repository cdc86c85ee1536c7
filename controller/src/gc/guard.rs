//! Key guards: the in-process handshake that keeps GC from deleting an object key while an
//! upload or commit is (re)writing the same key.
//!
//! Object keys are content names (`packs/…`, `refs/…`), so a re-upload of the very same bytes
//! produces the very same key. A put-if-absent of a key that GC is about to delete would find
//! the old object, "succeed" without writing, and the catalog would then record an object that
//! GC deletes a moment later. The guard closes that window:
//!
//! - a writer holds [`writing`] from before its put until the catalog transaction that records
//!   the object has committed; if GC is deleting that key, the writer waits until the delete is
//!   done, then writes the object anew;
//! - GC takes [`try_deleting`] before it re-checks the catalog and deletes the object; it gets
//!   nothing (and skips the key this run) while any writer holds the key.
//!
//! So between GC's catalog re-check and its delete no writer can start, and a writer that
//! started earlier has either recorded its object (the re-check sees it) or still holds the key.
//! The controller is the only writer of the store, so an in-process table suffices; it is
//! process-wide (keys are content names, so two controllers in one test process can only make
//! GC more conservative). After a crash nothing is in flight: tombstones are re-checked anew.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{LazyLock, Mutex, MutexGuard};

use tokio::sync::Notify;

#[derive(Default)]
struct Table {
    writers: HashMap<String, usize>,
    deleting: HashMap<String, ()>,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);
static DONE: LazyLock<Notify> = LazyLock::new(Notify::new);

fn table() -> MutexGuard<'static, Table> {
    // A panic while holding this lock leaves the maps consistent (every update is one insert
    // or remove), so a poisoned lock is still usable.
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held by a writer of `keys`; dropping it releases them.
#[derive(Debug)]
pub struct WriteGuard {
    keys: Vec<String>,
}

/// Held by GC while it re-checks and deletes one key.
#[derive(Debug)]
pub struct DeleteGuard {
    key: String,
}

/// Registers a writer of every key in `keys`, waiting while GC deletes any of them.
pub async fn writing(keys: Vec<String>) -> WriteGuard {
    loop {
        let notified = DONE.notified();
        let mut notified = pin!(notified);
        notified.as_mut().enable();
        {
            let mut t = table();
            if !keys.iter().any(|k| t.deleting.contains_key(k)) {
                for k in &keys {
                    *t.writers.entry(k.clone()).or_insert(0) += 1;
                }
                return WriteGuard { keys };
            }
        }
        notified.await;
    }
}

/// Claims `key` for deletion, or `None` while a writer holds it (or another delete does).
pub fn try_deleting(key: &str) -> Option<DeleteGuard> {
    let mut t = table();
    if t.writers.contains_key(key) || t.deleting.contains_key(key) {
        return None;
    }
    t.deleting.insert(key.to_owned(), ());
    Some(DeleteGuard {
        key: key.to_owned(),
    })
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let mut t = table();
        for k in &self.keys {
            if let Some(n) = t.writers.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    t.writers.remove(k);
                }
            }
        }
    }
}

impl Drop for DeleteGuard {
    fn drop(&mut self) {
        table().deleting.remove(&self.key);
        DONE.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writers_block_deletes_and_deletes_delay_writers() {
        let w = writing(vec!["guard-test/a".into()]).await;
        assert!(try_deleting("guard-test/a").is_none(), "a writer holds it");
        drop(w);
        let d = try_deleting("guard-test/a").expect("free now");
        assert!(
            try_deleting("guard-test/a").is_none(),
            "one delete at a time"
        );
        let waiter = tokio::spawn(writing(vec!["guard-test/a".into()]));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the writer waits for the delete");
        drop(d);
        let w = waiter.await.expect("writer");
        assert!(try_deleting("guard-test/a").is_none());
        drop(w);
        assert!(try_deleting("guard-test/a").is_some());
    }
}
