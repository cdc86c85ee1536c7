//! The object store: a narrow wrapper over `object_store` exposing what the controller needs.
//!
//! Acknowledged means durable: for the local-directory store, every successful put is followed
//! by an fsync of the file and of each directory from the file up to the store root (the
//! underlying `LocalFileSystem` also syncs before publishing, so a published file is never
//! partial). Puts use `PutMode::Create`: objects are immutable. If the object already exists,
//! the put counts as success only if the existing bytes hash (BLAKE3) to the same value as ours
//! — same size and same content — otherwise it is a [`StoreError::Conflict`].
//!
//! Backends: the local directory and an in-memory store (tests); S3 drops in by constructing
//! another `Arc<dyn ObjectStore>` with `local_root = None`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use thiserror::Error;
use tokio_stream::StreamExt;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open object store directory {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("object store {op} of {key} failed: {source}")]
    Backend {
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
    #[error("object {key} not found in the object store")]
    NotFound { key: String },
    #[error("cannot fsync {path}: {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "object {key} already exists with different content ({existing} bytes); refusing to overwrite"
    )]
    Conflict { key: String, existing: u64 },
}

fn backend<'a>(
    op: &'static str,
    key: &'a str,
) -> impl FnOnce(object_store::Error) -> StoreError + 'a {
    move |source| match source {
        object_store::Error::NotFound { .. } => StoreError::NotFound {
            key: key.to_owned(),
        },
        source => StoreError::Backend {
            op,
            key: key.to_owned(),
            source,
        },
    }
}

/// Whether a put created the object or found an identical one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    AlreadyPresent,
}

/// Handle on the object store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Set for the local-directory store: the root to fsync under.
    local_root: Option<PathBuf>,
}

impl Store {
    /// A store in a local directory (created if missing).
    pub fn local(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: dir.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let root = std::fs::canonicalize(dir).map_err(|e| open_err(e.to_string()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| open_err(e.to_string()))?
            .with_fsync(true);
        Ok(Store {
            inner: Arc::new(fs),
            local_root: Some(root),
        })
    }

    /// An in-memory store (tests).
    pub fn memory() -> Self {
        Store {
            inner: Arc::new(object_store::memory::InMemory::new()),
            local_root: None,
        }
    }

    /// Any other backend (S3 later); no local fsync is done.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>) -> Self {
        Store {
            inner,
            local_root: None,
        }
    }

    /// Puts an immutable object; durable when this returns.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<PutOutcome, StoreError> {
        let path = ObjectPath::from(key);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let ours = blake3::hash(&bytes);
        let outcome = match self
            .inner
            .put_opts(&path, PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => PutOutcome::Created,
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self.get(key).await?;
                if blake3::hash(&existing) != ours {
                    return Err(StoreError::Conflict {
                        key: key.to_owned(),
                        existing: existing.len() as u64,
                    });
                }
                PutOutcome::AlreadyPresent
            }
            Err(e) => return Err(backend("put", key)(e)),
        };
        self.sync(key).await?;
        Ok(outcome)
    }

    /// Fsyncs a local object and its directories up to the root (no-op for other backends).
    async fn sync(&self, key: &str) -> Result<(), StoreError> {
        let Some(root) = self.local_root.clone() else {
            return Ok(());
        };
        let file = key.split('/').fold(root.clone(), |p, part| p.join(part));
        tokio::task::spawn_blocking(move || sync_path_and_parents(&root, &file))
            .await
            .map_err(|e| StoreError::Sync {
                path: PathBuf::from(key),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = ObjectPath::from(key);
        let r = self.inner.get(&path).await.map_err(backend("get", key))?;
        r.bytes().await.map_err(backend("get", key))
    }

    /// Reads a byte range of an object.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let path = ObjectPath::from(key);
        self.inner
            .get_range(&path, range)
            .await
            .map_err(backend("get_range", key))
    }

    /// The size of an object.
    pub async fn head(&self, key: &str) -> Result<u64, StoreError> {
        let path = ObjectPath::from(key);
        Ok(self
            .inner
            .head(&path)
            .await
            .map_err(backend("head", key))?
            .size)
    }

    /// Keys and sizes of every object under `prefix`, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let p = ObjectPath::from(prefix);
        let mut s = self.inner.list(Some(&p));
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            let m = m.map_err(backend("list", prefix))?;
            out.push((m.location.to_string(), m.size));
        }
        out.sort();
        Ok(out)
    }
}

fn sync_one(p: &Path) -> Result<(), StoreError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|source| StoreError::Sync {
            path: p.to_owned(),
            source,
        })
}

/// Fsyncs `file`, then every directory from its parent up to and including `root`.
fn sync_path_and_parents(root: &Path, file: &Path) -> Result<(), StoreError> {
    sync_one(file)?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        sync_one(d)?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn suite(store: Store) {
        let key = "packs/ab/abcdef";
        assert_eq!(
            store
                .put_new(key, Bytes::from_static(b"hello world"))
                .await
                .expect("put"),
            PutOutcome::Created
        );
        assert_eq!(
            store
                .put_new(key, Bytes::from_static(b"hello world"))
                .await
                .expect("again"),
            PutOutcome::AlreadyPresent
        );
        let e = store
            .put_new(key, Bytes::from_static(b"HELLO WORLD"))
            .await
            .expect_err("conflict");
        assert!(
            matches!(e, StoreError::Conflict { existing: 11, .. }),
            "{e}"
        );
        assert_eq!(
            store.get(key).await.expect("get"),
            Bytes::from_static(b"hello world")
        );
        assert_eq!(
            store.get_range(key, 6..11).await.expect("range"),
            Bytes::from_static(b"world")
        );
        assert_eq!(store.head(key).await.expect("head"), 11);
        assert_eq!(
            store.list("packs").await.expect("list"),
            vec![(key.to_owned(), 11)]
        );
        assert!(matches!(
            store.get("packs/zz/nothing").await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn local_store_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::local(&dir.path().join("objects")).expect("open");
        suite(store).await;
        assert!(dir.path().join("objects/packs/ab/abcdef").is_file());
    }

    #[tokio::test]
    async fn memory_store_suite() {
        suite(Store::memory()).await;
    }
}
