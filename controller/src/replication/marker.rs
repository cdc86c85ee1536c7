//! Role markers: `registry/role` in each store, a small JSON object written once
//! (`{"format":1,"role":"primary","store_id":"<hex>"}`).
//!
//! At start-up the primary's marker is read (or created), then the secondary's. If the
//! secondary answers with the primary's store id, both addresses reach the same bucket (OCI has
//! two hostnames per bucket; a copied config may name the same directory) and start-up fails.
//! A store marked with the other role is refused too, so swapped configs cannot make a
//! controller replicate in the wrong direction.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::ReplicationError;
use crate::store::{Store, StoreError};

/// The marker's key in each store.
pub const MARKER_KEY: &str = "registry/role";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub format: u32,
    pub role: String,
    pub store_id: String,
}

async fn read(store: &Store) -> Result<Option<Marker>, ReplicationError> {
    match store.get(MARKER_KEY).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ReplicationError::BadMarker {
                key: MARKER_KEY.to_owned(),
                location: store.location().to_owned(),
                reason: e.to_string(),
            }),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads the marker of `store`, creating it with `role` if missing; refuses another role.
pub async fn ensure(store: &Store, role: &'static str) -> Result<Marker, ReplicationError> {
    let marker = match read(store).await? {
        Some(m) => m,
        None => {
            let mut id = [0u8; 16];
            lifeboat_common::keys::fill_random(&mut id);
            let m = Marker {
                format: 1,
                role: role.to_owned(),
                store_id: hex::encode(id),
            };
            let bytes = serde_json::to_vec(&m).unwrap_or_default();
            store.put_new(MARKER_KEY, Bytes::from(bytes)).await?;
            // Re-read: a concurrent writer's marker wins (put_new never overwrites).
            read(store).await?.unwrap_or(m)
        }
    };
    if marker.role != role {
        return Err(ReplicationError::WrongRole {
            configured: role,
            found: marker.role,
            location: store.location().to_owned(),
        });
    }
    Ok(marker)
}

/// Checks (and creates) both markers; refuses a secondary that is the primary.
pub async fn check_pair(primary: &Store, secondary: &Store) -> Result<(), ReplicationError> {
    let p = ensure(primary, "primary").await?;
    let s = match ensure(secondary, "secondary").await {
        Err(ReplicationError::WrongRole { found, .. }) if found == "primary" => {
            let again = read(secondary).await?;
            if again.as_ref().map(|m| &m.store_id) == Some(&p.store_id) {
                return Err(same(primary, secondary, &p.store_id));
            }
            return Err(ReplicationError::WrongRole {
                configured: "secondary",
                found,
                location: secondary.location().to_owned(),
            });
        }
        r => r?,
    };
    if s.store_id == p.store_id {
        return Err(same(primary, secondary, &p.store_id));
    }
    tracing::info!(primary = %p.store_id, secondary = %s.store_id, "role markers checked");
    Ok(())
}

fn same(primary: &Store, secondary: &Store, id: &str) -> ReplicationError {
    ReplicationError::SameStore {
        primary: primary.location().to_owned(),
        secondary: secondary.location().to_owned(),
        id: id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_directory_is_refused_and_distinct_ones_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Store::local(&dir.path().join("a")).expect("a");
        let b = Store::local(&dir.path().join("b")).expect("b");
        check_pair(&a, &b).await.expect("distinct stores");
        check_pair(&a, &b).await.expect("idempotent on restart");
        let a2 = Store::local(&dir.path().join("a")).expect("a again");
        let e = check_pair(&a, &a2).await.expect_err("same store");
        assert!(matches!(e, ReplicationError::SameStore { .. }), "{e}");
        assert!(e.to_string().contains("[secondary]"), "{e}");
        let e = check_pair(&b, &a).await.expect_err("swapped roles");
        assert!(matches!(e, ReplicationError::WrongRole { .. }), "{e}");
    }
}
