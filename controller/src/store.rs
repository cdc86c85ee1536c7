//! The object store: a narrow wrapper over `object_store` exposing what the controller needs.
//!
//! Acknowledged means durable: for the local-directory store, every successful put is followed
//! by an fsync of the file and of its directory (the underlying `LocalFileSystem` also syncs
//! before publishing, so a published file is never partial), and of each ancestor directory up
//! to the store root *until* that chain has been synced once by this process: a directory's own
//! entry in its parent stays durable once synced, so later puts into the same directory (most of
//! them: `packs/ab/…`) cost two fsyncs instead of one per level. An S3 put is durable when the
//! store answers 200 (S3's own guarantee).
//!
//! Objects are immutable. [`Store::put_new`] never overwrites different bytes:
//! - with conditional puts (`If-None-Match: *`, or `create_new` locally) the put fails with
//!   "already exists" if the key is taken;
//! - without them (`conditional_put = "disabled"`, or a store the start-up probe showed ignores
//!   the header) a HEAD runs first and the plain put only happens when nothing is there.
//!
//! Either way an existing object counts as success only after a HEAD confirms its size and a GET
//! confirms its BLAKE3 equals ours (for content-addressed keys, the hash the key names);
//! otherwise the put is a [`StoreError::Conflict`]. So a retried upload (whose first attempt
//! landed but whose answer was lost) is idempotent, and two writers racing on the same
//! content-addressed key both succeed with the same bytes. Keys are content hashes (packs, refs)
//! or unique snapshot ids, so without conditional puts a race can only write identical bytes.
//!
//! Backends: the local directory, an in-memory store (tests) and S3-compatible buckets
//! ([`s3`]). The start-up [`probe`] checks that the store works and decides the put mode.
//! [`orphans`] lists objects the catalog does not know. [`suite`] is the one test suite every
//! backend runs.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use thiserror::Error;
use tokio_stream::StreamExt;

pub mod orphans;
pub mod probe;
pub mod s3;
#[cfg(any(test, feature = "testing"))]
pub mod suite;

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
    #[error("S3 store {store}: {message}")]
    S3Setup { store: String, message: String },
    #[error(
        "cannot read S3 credentials file {path}: {reason} (it must hold access_key_id = \"...\" and secret_access_key = \"...\", mode 0600)"
    )]
    Credentials { path: PathBuf, reason: String },
    #[error(
        "no S3 credentials for {store}: set credentials_file = \"s3.credentials\" in [store] or the environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    NoCredentials { store: String },
    #[error("object store {store} failed its start-up check ({step}): {reason}")]
    Probe {
        store: String,
        step: &'static str,
        reason: String,
    },
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
    /// Local store: directories whose entry in their parent is known durable (synced after
    /// they were created), so their ancestors need no fsync again.
    durable_dirs: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
    /// Whether puts send a conditional create (else HEAD, then a plain put).
    conditional: bool,
    /// Where the objects are, for messages (never holds secrets).
    location: String,
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
            location: format!("directory {}", root.display()),
            local_root: Some(root),
            durable_dirs: Arc::default(),
            conditional: true,
        })
    }

    /// An in-memory store (tests).
    pub fn memory() -> Self {
        Store {
            inner: Arc::new(object_store::memory::InMemory::new()),
            local_root: None,
            durable_dirs: Arc::default(),
            conditional: true,
            location: "memory".to_owned(),
        }
    }

    /// Any other backend; no local fsync is done. Puts are conditional until
    /// [`Store::with_conditional_put`] says otherwise.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>) -> Self {
        Store {
            location: inner.to_string(),
            inner,
            local_root: None,
            durable_dirs: Arc::default(),
            conditional: true,
        }
    }

    /// An S3-compatible bucket ([`s3::open`]); puts follow `conditional_put` until the probe runs.
    pub fn s3(cfg: &crate::config::S3Config) -> Result<Self, StoreError> {
        let inner = s3::open(cfg)?;
        Ok(Store {
            inner,
            local_root: None,
            durable_dirs: Arc::default(),
            conditional: cfg.conditional_put != crate::config::ConditionalPut::Disabled,
            location: cfg.describe(),
        })
    }

    /// Sets whether puts send a conditional create (the probe's verdict).
    pub fn with_conditional_put(mut self, conditional: bool) -> Self {
        self.conditional = conditional;
        self
    }

    /// Whether puts send a conditional create.
    pub fn conditional_put(&self) -> bool {
        self.conditional
    }

    /// Where the objects are (a directory, or bucket and endpoint), for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The underlying object store (for the probe and for tests that damage objects).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Puts an immutable object; durable when this returns. An object already at `key` counts
    /// as success only if it holds the same bytes (see the module docs).
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<PutOutcome, StoreError> {
        let ours = blake3::hash(&bytes);
        self.put_new_hashed(key, bytes, ours).await
    }

    /// [`Store::put_new`] for bytes whose BLAKE3 the caller has already computed (a pack is named
    /// by it; a replicated copy was verified against it): hashing every pack a third time cost
    /// the controller ~5% of its CPU in an initial backup.
    pub async fn put_new_hashed(
        &self,
        key: &str,
        bytes: Bytes,
        ours: blake3::Hash,
    ) -> Result<PutOutcome, StoreError> {
        debug_assert_eq!(
            ours,
            blake3::hash(&bytes),
            "put_new_hashed given a wrong hash"
        );
        let len = bytes.len() as u64;
        let outcome = if self.conditional {
            let path = ObjectPath::from(key);
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self
                .inner
                .put_opts(&path, PutPayload::from_bytes(bytes.clone()), opts)
                .await
            {
                Ok(_) => PutOutcome::Created,
                Err(object_store::Error::AlreadyExists { .. }) => {
                    self.verify_existing(key, len, &ours).await?
                }
                Err(object_store::Error::NotImplemented { .. }) => {
                    self.put_after_head(key, bytes, &ours).await?
                }
                Err(e) => return Err(backend("put", key)(e)),
            }
        } else {
            self.put_after_head(key, bytes, &ours).await?
        };
        self.sync(key).await?;
        Ok(outcome)
    }

    /// Without conditional puts: HEAD, and put only if nothing is there.
    async fn put_after_head(
        &self,
        key: &str,
        bytes: Bytes,
        ours: &blake3::Hash,
    ) -> Result<PutOutcome, StoreError> {
        let len = bytes.len() as u64;
        match self.head(key).await {
            Ok(_) => return self.verify_existing(key, len, ours).await,
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let path = ObjectPath::from(key);
        self.inner
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map_err(backend("put", key))?;
        Ok(PutOutcome::Created)
    }

    /// An object exists at `key`: success only if its size and BLAKE3 match ours.
    async fn verify_existing(
        &self,
        key: &str,
        len: u64,
        ours: &blake3::Hash,
    ) -> Result<PutOutcome, StoreError> {
        let size = self.head(key).await?;
        if size != len {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
                existing: size,
            });
        }
        let existing = self.get(key).await?;
        if blake3::hash(&existing) != *ours {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
                existing: existing.len() as u64,
            });
        }
        tracing::debug!(key, "object already present with the same content");
        Ok(PutOutcome::AlreadyPresent)
    }

    /// Overwrites the object at `key` (a repair from the secondary of a damaged primary copy,
    /// whose bytes the caller has verified against the recorded hash); durable when this returns.
    pub async fn put_replace(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = ObjectPath::from(key);
        self.inner
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map_err(backend("put", key))?;
        self.sync(key).await
    }

    /// Deletes an object (the probe's own objects; GC later). Missing objects are not an error.
    pub(crate) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = ObjectPath::from(key);
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend("delete", key)(e)),
        }
    }

    /// Fsyncs a local object and its directories up to the root (no-op for other backends).
    async fn sync(&self, key: &str) -> Result<(), StoreError> {
        let Some(root) = self.local_root.clone() else {
            return Ok(());
        };
        let file = key.split('/').fold(root.clone(), |p, part| p.join(part));
        let known = self.durable_dirs.clone();
        tokio::task::spawn_blocking(move || sync_path_and_parents(&root, &file, &known))
            .await
            .map_err(|e| StoreError::Sync {
                path: PathBuf::from(key),
                source: std::io::Error::other(e.to_string()),
            })?
            .map(|_| ())
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

/// Fsyncs `file` and its directory, then each ancestor up to and including `root`, stopping at
/// the first directory already in `known` (its entry in its parent was synced before). Returns
/// how many fsyncs it made.
fn sync_path_and_parents(
    root: &Path,
    file: &Path,
    known: &std::sync::Mutex<std::collections::HashSet<PathBuf>>,
) -> Result<usize, StoreError> {
    sync_one(file)?;
    let mut synced = 1;
    let mut dir = file.parent();
    let mut newly = Vec::new();
    while let Some(d) = dir {
        sync_one(d)?;
        synced += 1;
        if d == root {
            break;
        }
        // `d`'s entry in its parent is durable once the parent is synced after `d` was created.
        let is_known = known.lock().map(|k| k.contains(d)).unwrap_or(false);
        if is_known {
            break;
        }
        newly.push(d.to_owned());
        dir = d.parent();
    }
    if let Ok(mut k) = known.lock() {
        k.extend(newly);
    }
    Ok(synced)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ancestors_are_synced_once_then_only_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        let known = std::sync::Mutex::default();
        let put = |rel: &str| {
            let f = root.join(rel);
            std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
            std::fs::write(&f, b"x").expect("write");
            sync_path_and_parents(&root, &f, &known).expect("sync")
        };
        // file, packs/ab, packs, root
        assert_eq!(put("packs/ab/one"), 4);
        // file, packs/ab: its entry in packs is already durable
        assert_eq!(put("packs/ab/two"), 2);
        // a new directory: file, packs/cd, packs (known: stop)
        assert_eq!(put("packs/cd/three"), 3);
        assert_eq!(put("top"), 2, "file, root");
    }

    use super::*;

    pub(crate) fn count_files(dir: &Path) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                n += count_files(&p);
            } else {
                n += 1;
            }
        }
        n
    }

    #[tokio::test]
    async fn local_store_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::local(&dir.path().join("objects")).expect("open");
        suite::run(&store).await;
        suite::run(&store.clone().with_conditional_put(false)).await;
        let files = crate::store::tests::count_files(&dir.path().join("objects/suite"));
        assert_eq!(files, 2, "one object left per run, fsync'd to real files");
    }

    #[tokio::test]
    async fn memory_store_suite() {
        let store = Store::memory();
        suite::run(&store).await;
        suite::run(&store.with_conditional_put(false)).await;
    }
}
