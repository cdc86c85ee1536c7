//! The start-up probe: before the controller says `LISTENING` it proves the store works and
//! finds out whether it honours conditional creates (`If-None-Match: *`).
//!
//! Steps, each under `probe/<random>` keys:
//! 1. write a small object and read it back (failure: [`StoreError::Probe`] naming the store and
//!    the step; the controller exits before serving);
//! 2. conditional create of a fresh key twice: the first must succeed and the second must fail
//!    with "already exists". A store that refuses the header, or accepts the second create, does
//!    not support conditional puts; the controller then uses HEAD + put (see [`super`]), which
//!    is correct for Lifeboat's immutable, content-addressed or uniquely named keys;
//! 3. delete both probe objects (failure is only a warning: append-only bucket policies may
//!    forbid deletes; the leftovers are tiny and listed by `lifeboatctl storage orphans`).

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tracing::{info, warn};

use super::{Store, StoreError};
use crate::config::ConditionalPut;

/// The key prefix of probe objects.
pub const PROBE_PREFIX: &str = "probe";

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeReport {
    /// The store rejects a second conditional create of the same key.
    pub conditional_put: bool,
    /// Whether the probe objects could be deleted again.
    pub cleaned_up: bool,
}

fn random_hex() -> String {
    let mut b = [0u8; 12];
    lifeboat_common::keys::fill_random(&mut b);
    hex::encode(b)
}

fn failed(store: &Store, step: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Probe {
        store: store.location().to_owned(),
        step,
        reason: reason.to_string(),
    }
}

/// Runs the probe against `store` (see the module docs).
pub async fn probe(store: &Store) -> Result<ProbeReport, StoreError> {
    let inner = store.object_store();
    let id = random_hex();
    let plain = format!("{PROBE_PREFIX}/{id}");
    let body = Bytes::from(format!("lifeboat probe {id}"));
    let path = ObjectPath::from(plain.as_str());
    inner
        .put(&path, PutPayload::from_bytes(body.clone()))
        .await
        .map_err(|e| failed(store, "write", e))?;
    let back = match inner.get(&path).await {
        Ok(r) => r.bytes().await.map_err(|e| failed(store, "read back", e))?,
        Err(e) => return Err(failed(store, "read back", e)),
    };
    if back != body {
        return Err(failed(
            store,
            "read back",
            format!(
                "wrote {} bytes but read back {} different bytes",
                body.len(),
                back.len()
            ),
        ));
    }
    let created = format!("{PROBE_PREFIX}/{id}-create");
    let conditional_put = conditional_create_twice(store, &created).await;
    let mut cleaned_up = true;
    for key in [&plain, &created] {
        if let Err(e) = store.delete(key).await {
            warn!(store = %store.location(), key = %key, error = %e, "cannot delete probe object");
            cleaned_up = false;
        }
    }
    info!(store = %store.location(), conditional_put, "object store probe");
    Ok(ProbeReport {
        conditional_put,
        cleaned_up,
    })
}

/// True if a first conditional create succeeds and a second one fails with "already exists".
async fn conditional_create_twice(store: &Store, key: &str) -> bool {
    let path = ObjectPath::from(key);
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let body = || PutPayload::from_static(b"lifeboat conditional probe");
    match store.object_store().put_opts(&path, body(), create()).await {
        Ok(_) => {}
        Err(object_store::Error::NotImplemented { .. }) => return false,
        Err(e) => {
            warn!(store = %store.location(), error = %e, "conditional create refused; using HEAD + put");
            return false;
        }
    }
    match store.object_store().put_opts(&path, body(), create()).await {
        Err(object_store::Error::AlreadyExists { .. }) => true,
        Ok(_) => {
            warn!(store = %store.location(), "the store ignores If-None-Match (a second create succeeded); using HEAD + put");
            false
        }
        Err(e) => {
            warn!(store = %store.location(), error = %e, "second conditional create failed oddly; using HEAD + put");
            false
        }
    }
}

/// Probes `store` and returns it with the put mode `mode` and the probe decide.
/// `etag` on a store that does not honour conditional creates is an error (the operator said
/// it does); `auto` follows the probe; `disabled` never sends the header.
pub async fn probe_and_configure(
    store: Store,
    mode: ConditionalPut,
) -> Result<(Store, ProbeReport), StoreError> {
    let report = probe(&store).await?;
    let conditional = match mode {
        ConditionalPut::Auto => report.conditional_put,
        ConditionalPut::Disabled => false,
        ConditionalPut::Etag if !report.conditional_put => {
            return Err(failed(
                &store,
                "conditional create",
                "conditional_put = \"etag\" but the store does not reject a second If-None-Match: * create; \
                 set conditional_put = \"auto\" or \"disabled\"",
            ));
        }
        ConditionalPut::Etag => true,
    };
    Ok((store.with_conditional_put(conditional), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_and_memory_stores_support_conditional_puts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = Store::local(&dir.path().join("o")).expect("open");
        let r = probe(&local).await.expect("probe");
        assert!(r.conditional_put && r.cleaned_up, "{r:?}");
        assert!(local.list(PROBE_PREFIX).await.expect("list").is_empty());
        let (s, r) = probe_and_configure(Store::memory(), ConditionalPut::Disabled)
            .await
            .expect("probe");
        assert!(r.conditional_put);
        assert!(!s.conditional_put(), "disabled wins");
    }

    #[tokio::test]
    async fn unwritable_store_fails_with_its_location() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("o");
        let local = Store::local(&root).expect("open");
        std::fs::remove_dir_all(&root).expect("rm");
        std::fs::write(&root, b"not a directory").expect("file in the way");
        let e = probe(&local).await.expect_err("cannot write");
        let text = e.to_string();
        assert!(
            text.contains("write") && text.contains("directory"),
            "{text}"
        );
    }
}
