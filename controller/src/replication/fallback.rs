//! Read fallback: when a blob cannot be read from the primary (object missing, store failing,
//! or bytes failing the recorded BLAKE3), the same range is read from the secondary and checked
//! against the same hash. A good copy is served; the damage is logged at warn with the key, and
//! when the primary's object is missing or damaged a repair copy (secondary → primary) is queued.
//! Without a secondary, or when the secondary fails too, the caller returns the primary's error
//! unchanged. ReadChunks marks a blob served this way (`ReadChunksResponse.from_secondary`) so
//! the agent can report which region served the restore.
//!
//! `ReadChunksRequest.region` chooses: ANY (the primary, falling back as above), PRIMARY (no
//! fallback: the primary's error is returned), SECONDARY (only the secondary; a request for it
//! without a `[secondary]` store is refused with FAILED_PRECONDITION before anything is read).

use std::ops::Range;

use bytes::Bytes;
use lifeboat_common::clock::now_unix_ms;
use tracing::warn;

use super::queue;
use crate::catalog::Catalog;
use crate::error::ServiceError;
use crate::service::State;
use crate::store::Store;

use lifeboat_proto::v1::Region;

/// Validates a request's region: unknown values are invalid, SECONDARY needs a secondary.
pub fn region(state: &State, raw: i32) -> Result<Region, ServiceError> {
    let r = Region::try_from(raw)
        .map_err(|_| ServiceError::invalid(format!("region: unknown value {raw}")))?;
    if r == Region::Secondary {
        secondary_for(state)?;
    }
    Ok(r)
}

/// The secondary store, or FAILED_PRECONDITION saying none is configured.
pub fn secondary_for(state: &State) -> Result<&Store, ServiceError> {
    state.secondary.as_ref().ok_or_else(|| {
        ServiceError::FailedPrecondition(
            "no secondary region is configured on this controller (no [secondary] in controller.toml): restore with --region any or primary".into(),
        )
    })
}

/// Reads `range` of `key` from the secondary after the primary failed with `primary_error`;
/// `damaged` says the primary's object is missing or fails its hash (then a repair is queued).
/// Returns `None` if the secondary cannot serve a verified copy either.
pub async fn read_from_secondary(
    secondary: &Store,
    catalog: &Catalog,
    key: &str,
    range: Range<u64>,
    blob_hash: &[u8; 32],
    primary_error: &str,
    damaged: bool,
) -> Option<Bytes> {
    let want = range.end.saturating_sub(range.start);
    let data = match secondary.get_range(key, range).await {
        Ok(d) => d,
        Err(e) => {
            warn!(key, primary_error, error = %e, "read failed on the primary and on the secondary");
            return None;
        }
    };
    if data.len() as u64 != want || blake3::hash(&data).as_bytes() != blob_hash {
        warn!(
            key,
            primary_error, "the secondary's copy fails its recorded hash too"
        );
        return None;
    }
    warn!(
        key,
        primary_error, damaged, "primary read failed; served from the secondary"
    );
    if damaged {
        let k = key.to_owned();
        let queued = catalog
            .run(move |c| queue::enqueue_repair(c, &k, now_unix_ms()))
            .await;
        if let Err(e) = queued {
            warn!(key, error = %e, "cannot queue the repair of a damaged primary object");
        }
    }
    Some(data)
}
