//! Storage of key escrow envelopes (trust invariant 4): append-only objects
//! `keys/<kind>/<13-digit unix ms>-<16 hex of BLAKE3>` in the primary store, each queued for the
//! secondary in one catalog transaction, so both regions hold every envelope.
//!
//! - The controller only parses and validates an envelope's header ([`EnvelopeHeader::parse`]:
//!   magic, version, kind, Argon2id parameters within floor and ceiling). It never sees a
//!   passphrase or a plaintext key; the envelope is opaque ciphertext to it.
//! - Nothing is ever overwritten: a new escrow is a new object (put-if-absent), and the newest
//!   one is found by listing `keys/<kind>/` (zero-padded milliseconds sort by time). No catalog
//!   table is needed, so a catalog rebuilt from the bucket knows the envelopes too.
//! - An object under `keys/<kind>/` whose header does not validate (damaged, tampered, foreign) is
//!   skipped with a warning, so a garbage object cannot hide the real newest envelope.
//! - Order: object put (durable) → queue row → answer. A crash in between leaves an object
//!   without a queue row, which `rebuild-catalog`'s region comparison re-queues.

use bytes::Bytes;
use lifeboat_common::escrow::{EnvelopeHeader, EscrowKind, MAX_ENVELOPE_LEN};

use crate::catalog::Catalog;
use crate::error::ServiceError;
use crate::replication::queue::{self, NewObject};
use crate::store::{Store, StoreError};

/// The prefix of every escrow object.
pub const PREFIX: &str = "keys/";

/// An envelope read back from a store.
#[derive(Debug, Clone)]
pub struct StoredEnvelope {
    pub kind: EscrowKind,
    pub object_key: String,
    pub created_at_unix_ms: i64,
    pub envelope: Bytes,
}

/// The object key of an envelope created at `now_ms`.
pub fn object_key(kind: EscrowKind, now_ms: i64, envelope: &[u8]) -> String {
    let hash = blake3::hash(envelope).to_hex();
    format!(
        "{PREFIX}{kind}/{:013}-{}",
        now_ms.max(0),
        &hash.as_str()[..16]
    )
}

/// The creation time encoded in an object key (`None` for a key not in our format).
fn created_ms(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?;
    let (ms, hash) = name.split_once('-')?;
    if ms.len() != 13 || hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    ms.parse().ok()
}

/// Validates `envelope` as a `claimed` envelope, stores it and queues its copy to the secondary.
/// Returns the object key.
pub async fn put(
    store: &Store,
    catalog: &Catalog,
    claimed: EscrowKind,
    envelope: Bytes,
    now_ms: i64,
) -> Result<String, ServiceError> {
    let header = EnvelopeHeader::parse(&envelope)
        .map_err(|e| ServiceError::invalid(format!("key escrow envelope refused: {e}")))?;
    if header.kind != claimed {
        return Err(ServiceError::invalid(format!(
            "key escrow envelope holds a {} secret but was sent as {claimed}",
            header.kind
        )));
    }
    let key = object_key(claimed, now_ms, &envelope);
    let obj = NewObject {
        key: key.clone(),
        kind: queue::Kind::Record,
        size: envelope.len() as u64,
        blake3: *blake3::hash(&envelope).as_bytes(),
    };
    store.put_new(&key, envelope).await?;
    catalog
        .run(move |conn| {
            let tx = conn.transaction()?;
            queue::enqueue(&tx, &obj, now_ms)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    tracing::info!(kind = %claimed, key = %key, params = %header.params, "key escrow stored");
    Ok(key)
}

/// The newest valid envelope of `kind` in `store`, or `None` when there is none.
pub async fn newest(store: &Store, kind: EscrowKind) -> Result<Option<StoredEnvelope>, StoreError> {
    let prefix = format!("{PREFIX}{kind}/");
    let mut listed = store.list(&prefix).await?;
    listed.retain(|(k, size)| created_ms(k).is_some() && *size <= MAX_ENVELOPE_LEN as u64);
    listed.sort_by(|a, b| b.0.cmp(&a.0));
    for (key, _) in listed {
        let envelope = store.get(&key).await?;
        match EnvelopeHeader::parse(&envelope) {
            Ok(h) if h.kind == kind => {
                return Ok(Some(StoredEnvelope {
                    kind,
                    created_at_unix_ms: created_ms(&key).unwrap_or(0),
                    object_key: key,
                    envelope,
                }));
            }
            Ok(h) => {
                tracing::warn!(key = %key, found = %h.kind, "escrow object of the wrong kind skipped");
            }
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "invalid escrow object skipped");
            }
        }
    }
    Ok(None)
}

/// The newest valid envelope in the primary, else in the secondary: a controller whose primary
/// region was lost (or replaced by an empty bucket still being refilled) keeps handing out the
/// escrow. A primary error is logged and the secondary asked; with no secondary it is returned.
pub async fn newest_in_either(
    primary: &Store,
    secondary: Option<&Store>,
    kind: EscrowKind,
) -> Result<Option<StoredEnvelope>, StoreError> {
    let first = newest(primary, kind).await;
    let Some(secondary) = secondary else {
        return first;
    };
    match first {
        Ok(Some(found)) => Ok(Some(found)),
        Ok(None) => newest(secondary, kind).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the key escrow from the primary; trying the secondary");
            newest(secondary, kind).await
        }
    }
}

#[cfg(test)]
mod tests {
    use lifeboat_common::escrow::{KdfParams, Passphrase, seal_master};
    use lifeboat_common::keys::MasterKey;

    use super::*;

    #[tokio::test]
    async fn put_validates_queues_and_newest_wins() {
        let store = Store::memory();
        let catalog = Catalog::open_in_memory().expect("catalog");
        let pass = Passphrase::new("correct horse battery staple".into());
        let env =
            seal_master(&MasterKey::from_bytes([5; 32]), KdfParams::FLOOR, &pass).expect("seal");
        assert!(
            newest(&store, EscrowKind::Master)
                .await
                .expect("list")
                .is_none()
        );

        let bad = put(
            &store,
            &catalog,
            EscrowKind::Master,
            Bytes::from_static(b"junk"),
            1,
        )
        .await;
        assert!(matches!(bad, Err(ServiceError::InvalidArgument(_))));
        let wrong_kind = put(
            &store,
            &catalog,
            EscrowKind::Ca,
            Bytes::from(env.clone()),
            1,
        )
        .await;
        assert!(matches!(wrong_kind, Err(ServiceError::InvalidArgument(_))));
        let mut low = env.clone();
        low[10..14].copy_from_slice(&1u32.to_le_bytes());
        let below = put(&store, &catalog, EscrowKind::Master, Bytes::from(low), 1).await;
        assert!(matches!(below, Err(ServiceError::InvalidArgument(m)) if m.contains("floor")));

        let k1 = put(
            &store,
            &catalog,
            EscrowKind::Master,
            Bytes::from(env.clone()),
            1_000,
        )
        .await
        .expect("put");
        assert_eq!(k1, object_key(EscrowKind::Master, 1_000, &env));
        let mut env2 = env.clone();
        env2[40] ^= 1; // another nonce: a different (undecryptable) but well-formed envelope
        let k2 = put(
            &store,
            &catalog,
            EscrowKind::Master,
            Bytes::from(env2.clone()),
            2_000,
        )
        .await
        .expect("put");
        // Garbage with a later name is skipped.
        store
            .put_new(
                "keys/master/9999999999999-0123456789abcdef",
                Bytes::from_static(b"x"),
            )
            .await
            .expect("garbage");
        let got = newest(&store, EscrowKind::Master)
            .await
            .expect("newest")
            .expect("some");
        assert_eq!(got.object_key, k2);
        assert_eq!(got.created_at_unix_ms, 2_000);
        assert_eq!(&got.envelope[..], &env2[..]);

        let queued: Vec<String> = catalog
            .run(|c| {
                let mut st =
                    c.prepare("SELECT key FROM replication_queue WHERE op = 'copy' ORDER BY key")?;
                let rows = st.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<Vec<String>, _>>()?)
            })
            .await
            .expect("queue");
        assert_eq!(queued, vec![k1, k2]);
    }

    /// Over real mTLS: the admin stores, an agent fetches the same bytes; agents never get "ca".
    #[tokio::test]
    async fn admin_puts_agent_gets_master_never_ca() {
        use lifeboat_proto::v1 as pb;
        use lifeboat_proto::v1::admin_service_client::AdminServiceClient;
        use lifeboat_proto::v1::agent_service_client::AgentServiceClient;

        let tmp = tempfile::tempdir().expect("tempdir");
        let ctl = crate::testing::TestController::start(&tmp.path().join("c")).await;
        let mut admin = AdminServiceClient::new(ctl.admin_channel().await);
        let (csr, key) = crate::testing::agent_csr("vm", vec![]);
        let cert = admin
            .add_agent(pb::AddAgentRequest {
                agent_id: "vm".into(),
                csr_pem: csr,
                dedup_group: String::new(),
            })
            .await
            .expect("add agent")
            .into_inner()
            .certificate_pem;
        let mut agent = AgentServiceClient::new(
            ctl.channel(cert.as_bytes(), key.as_bytes())
                .await
                .expect("agent channel"),
        );
        let get = |kind: &str| pb::GetKeyEscrowRequest { kind: kind.into() };
        let none = agent
            .get_key_escrow(get("master"))
            .await
            .expect_err("none yet");
        assert_eq!(none.code(), tonic::Code::NotFound);
        assert!(
            none.message().contains("lifeboatctl key escrow"),
            "{none:?}"
        );

        let pass = Passphrase::new("correct horse battery staple".into());
        let env =
            seal_master(&MasterKey::from_bytes([6; 32]), KdfParams::FLOOR, &pass).expect("seal");
        let put = admin
            .put_key_escrow(pb::PutKeyEscrowRequest {
                escrow: Some(pb::KeyEscrow {
                    kind: "master".into(),
                    envelope: env.clone().into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("put")
            .into_inner();
        assert!(put.object_key.starts_with("keys/master/"));
        assert!(!put.replication_queued, "no secondary configured");
        let got = agent
            .get_key_escrow(get("master"))
            .await
            .expect("get")
            .into_inner();
        assert_eq!(&got.envelope[..], &env[..]);
        assert_eq!(got.object_key, put.object_key);
        let ca = agent.get_key_escrow(get("ca")).await.expect_err("ca");
        assert_eq!(ca.code(), tonic::Code::PermissionDenied);
        ctl.shutdown.cancel();
    }
}
