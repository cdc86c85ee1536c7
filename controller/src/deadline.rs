//! A deadline on every object-store call an agent waits on (ingest and commit).
//!
//! Why: a store that hangs (a stuck NFS mount under the local directory, an S3 endpoint that
//! accepts the connection and never answers) must not hold an agent's upload forever. Each put
//! made while a client waits runs under [`STORE_DEADLINE`] (configurable per server through
//! [`crate::service::State::store_deadline`]); when it passes, the call fails with `UNAVAILABLE`
//! naming the key, nothing is recorded in the catalog, and the agent retries on its next run.
//!
//! Retries are bounded and live in one place: the S3 backend retries transient failures itself
//! ([`crate::store::s3::MAX_RETRIES`] within [`crate::store::s3::RETRY_TIMEOUT`]); the controller
//! adds none, so one failed put is one failed call. The deadline is longer than the S3 retry
//! budget plus one request, so it only fires for a store that truly hangs.
//!
//! A put abandoned at the deadline may still land later (the local store finishes on a blocking
//! thread). That is harmless: keys are content hashes or fresh snapshot ids, the catalog never
//! learned of the object, and a later put of the same key finds identical bytes.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::error::ServiceError;
use crate::store::{PutOutcome, Store, StoreError};

/// The default deadline for one store operation (S3 retry budget + one request + slack).
pub const STORE_DEADLINE: Duration = Duration::from_secs(300);

/// Runs one store operation on `key` under `deadline`.
pub async fn within<T>(
    deadline: Duration,
    op: &'static str,
    key: &str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, ServiceError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            tracing::warn!(
                op,
                key,
                deadline_ms = deadline.as_millis() as u64,
                "object store call timed out"
            );
            Err(ServiceError::Unavailable(format!(
                "object store {op} of {key} did not finish within {} ms; the object store is hanging or too slow (check it), nothing was acknowledged, retry later",
                deadline.as_millis()
            )))
        }
    }
}

/// [`Store::put_new`] under `deadline`.
pub async fn put(
    store: &Store,
    deadline: Duration,
    key: &str,
    bytes: Bytes,
) -> Result<PutOutcome, ServiceError> {
    within(deadline, "put", key, store.put_new(key, bytes)).await
}

/// [`Store::put_new_hashed`] under `deadline`.
pub async fn put_hashed(
    store: &Store,
    deadline: Duration,
    key: &str,
    bytes: Bytes,
    hash: [u8; 32],
) -> Result<PutOutcome, ServiceError> {
    let put = store.put_new_hashed(key, bytes, blake3::Hash::from_bytes(hash));
    within(deadline, "put", key, put).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hanging_operation_ends_with_unavailable_naming_the_key() {
        let e = within(
            Duration::from_millis(20),
            "put",
            "packs/ab/cd",
            std::future::pending::<Result<(), StoreError>>(),
        )
        .await
        .expect_err("must time out");
        assert!(matches!(e, ServiceError::Unavailable(_)), "{e:?}");
        assert!(e.to_string().contains("packs/ab/cd"), "{e}");
        let s: tonic::Status = e.into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn a_finished_operation_passes_through() {
        let store = Store::memory();
        let out = put(
            &store,
            STORE_DEADLINE,
            "refs/aa/bb",
            Bytes::from_static(b"x"),
        )
        .await
        .expect("put");
        assert_eq!(out, PutOutcome::Created);
    }
}
