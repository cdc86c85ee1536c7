//! The gRPC client: one mTLS [`Channel`] to the controller, and the failure classifier.
//!
//! The channel trusts only the CA named in `[controller] ca`, presents the agent certificate and
//! key, and checks the controller's certificate against `server_name`. Messages may be up to
//! 8 MiB plus slack (one blob of the largest chunk).
//!
//! [`classify`] decides what a failure means for the exit code: the controller could not be
//! reached (4), or the TLS handshake or the controller refused our certificate (5), or anything
//! else (1). It walks the whole `source()` chain, because tonic wraps hyper, which wraps
//! io::Error, which wraps the rustls error that says what really happened.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use lifeboat_common::ids::{ChunkId, chunk_ids_from_bytes};
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::ControllerConfig;

pub mod probe;
use crate::remote::{
    BlobCheck, CommitOutcome, CommitRequest, FailureReport, MAX_IDS_PER_REQUEST,
    MIN_IDS_PER_REQUEST, Remote, RemoteError, Session, SnapshotInfo, UploadReceipt,
    snapshot_from_wire,
};

/// How long to wait for the TCP + TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 receive window per stream (restore units are 4 MiB).
pub const H2_STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 receive window per connection (bounds what the agent may be sent ahead).
pub const H2_CONNECTION_WINDOW: u32 = 8 << 20;
/// Largest gRPC message accepted or sent: the largest blob plus slack.
pub const MAX_MESSAGE_BYTES: usize = 9 << 20;
/// Target size of one `UploadChunks` message. tonic encodes each message into one buffer
/// before the blobs it copied are freed: with 4 MiB messages a flight briefly held its batch
/// twice, and the 2.5 GiB initial backup's agent peak was 62.1-66.2 MiB; with 512 KiB, 58.9-61.5
/// (seven interleaved rounds each, docs/performance-history.md "Session 12"), in the same time.
pub const UPLOAD_MESSAGE_BYTES: usize = 512 << 10;

/// What a failed call means for the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    Unreachable,
    CertificateRefused,
    Other,
}

/// Classifies a failed call (see the module docs).
pub fn classify(err: &RemoteError) -> FailureClass {
    if let RemoteError::Status { status, .. } = err
        && matches!(
            status.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        )
    {
        return FailureClass::CertificateRefused;
    }
    let mut unreachable = matches!(err, RemoteError::Transport { .. })
        || err
            .code()
            .is_some_and(|c| matches!(c, tonic::Code::Unavailable | tonic::Code::DeadlineExceeded));
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if is_tls_refusal(e) {
            return FailureClass::CertificateRefused;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref()
                && is_tls_refusal(inner)
            {
                return FailureClass::CertificateRefused;
            }
            unreachable |= is_network_kind(io.kind());
        }
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("alert") {
            return FailureClass::CertificateRefused;
        }
        unreachable |=
            text.contains("connect") || text.contains("dns") || text.contains("timed out");
        cur = e.source();
    }
    if unreachable {
        FailureClass::Unreachable
    } else {
        FailureClass::Other
    }
}

fn is_tls_refusal(e: &(dyn StdError + 'static)) -> bool {
    matches!(
        e.downcast_ref::<rustls::Error>(),
        Some(
            rustls::Error::AlertReceived(_)
                | rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
        )
    )
}

fn is_network_kind(k: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        k,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
            | AddrNotAvailable
            | NotConnected
            | BrokenPipe
            | UnexpectedEof
    )
}

/// Failure to build the TLS settings from the config's PEM files.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error(transparent)]
    Pem(#[from] lifeboat_common::tls::TlsError),
    #[error("[controller] address {address:?} is not a valid URL: {source}")]
    Address {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("TLS settings for {address} are invalid: {source}")]
    Tls {
        address: String,
        source: tonic::transport::Error,
    },
}

/// The controller, over mTLS gRPC.
#[derive(Clone)]
pub struct GrpcRemote {
    client: AgentServiceClient<Channel>,
    /// Read another agent's snapshots (needs an admin's `allow-restore` grant); empty: our own.
    from_agent: String,
    /// Blobs per upload message: the controller's `max_ids_per_request`, learnt at `BeginSession`.
    max_blobs: Arc<AtomicUsize>,
    /// Which region `ReadChunks` asks for (`restore --region`).
    region: pb::Region,
    /// Blobs read, and how many of them the secondary region served.
    reads: Arc<ReadCounts>,
}

/// Counts of `ReadChunks` blobs, for the restore's report.
#[derive(Debug, Default)]
pub struct ReadCounts {
    pub chunks: AtomicU64,
    pub from_secondary: AtomicU64,
    /// The blobs' bytes as the controller sent them (sealed: compressed and encrypted), before
    /// gRPC's and TLS's framing: what a restore moved over the network.
    pub bytes: AtomicU64,
}

/// A snapshot of [`ReadCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTotals {
    pub chunks: u64,
    pub from_secondary: u64,
    pub bytes: u64,
}

impl GrpcRemote {
    /// Builds the endpoint from the config (reading the PEM files). Does not connect yet.
    pub fn endpoint(cfg: &ControllerConfig) -> Result<Endpoint, ClientSetupError> {
        let ca = lifeboat_common::tls::read_pem(&cfg.ca, false)?;
        let cert = lifeboat_common::tls::read_pem(&cfg.cert, false)?;
        let key = lifeboat_common::tls::read_pem(&cfg.key, true)?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(cfg.server_name.clone());
        Endpoint::from_shared(cfg.address.clone())
            .map_err(|source| ClientSetupError::Address {
                address: cfg.address.clone(),
                source,
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            // Restores stream 4 MiB units, up to four at once: windows that hold them (hyper's
            // client defaults are 2 MiB per stream); bounded so a slow disk cannot make the
            // agent buffer more than this.
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .tls_config(tls)
            .map_err(|source| ClientSetupError::Tls {
                address: cfg.address.clone(),
                source,
            })
    }

    /// Connects to the controller and checks with `WhoAmI` that it accepts our certificate.
    /// A refusal that tonic reports only as a cancelled or failed call is explained with a
    /// separate handshake ([`probe::tls_refusal`]), so it classifies as a certificate problem.
    pub async fn connect(endpoint: Endpoint, cfg: &ControllerConfig) -> Result<Self, RemoteError> {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| RemoteError::Transport {
                op: "connect",
                source: Box::new(e),
            })?;
        let remote = Self::from_channel(channel);
        // Bounded: once, under a loaded test run, a refused certificate left this call waiting
        // forever (no socket, no timer) instead of failing; the probe below then names why.
        let answer = tokio::time::timeout(CONNECT_TIMEOUT, remote.who_am_i())
            .await
            .unwrap_or_else(|_| {
                Err(RemoteError::Transport {
                    op: "WhoAmI",
                    source: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()).into(),
                })
            });
        match answer {
            Ok(_) => Ok(remote),
            Err(e) if classify(&e) == FailureClass::CertificateRefused => Err(e),
            Err(e) => match probe::tls_refusal(cfg).await {
                Some(tls) => Err(RemoteError::Transport {
                    op: "TLS handshake",
                    source: Box::new(tls),
                }),
                None => Err(e),
            },
        }
    }

    pub fn from_channel(channel: Channel) -> Self {
        let client = AgentServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        GrpcRemote {
            client,
            from_agent: String::new(),
            max_blobs: Arc::new(AtomicUsize::new(MIN_IDS_PER_REQUEST as usize)),
            region: pb::Region::Any,
            reads: Arc::default(),
        }
    }

    /// Reads chunks from this region (`restore --region`); the default is ANY.
    pub fn in_region(mut self, region: pb::Region) -> Self {
        self.region = region;
        self
    }

    /// Blobs read (how many, how many the secondary region served, their bytes) since this
    /// remote was made.
    pub fn read_counts(&self) -> ReadTotals {
        ReadTotals {
            chunks: self.reads.chunks.load(Ordering::Relaxed),
            from_secondary: self.reads.from_secondary.load(Ordering::Relaxed),
            bytes: self.reads.bytes.load(Ordering::Relaxed),
        }
    }

    /// Lists, gets and reads the snapshots of agent `from` instead of our own (a replacement VM
    /// restoring a lost VM; the controller checks the grant on every call).
    pub fn reading_from(mut self, from: &str) -> Self {
        self.from_agent = from.to_owned();
        self
    }

    /// Who the controller thinks we are (agent id, dedup group).
    pub async fn who_am_i(&self) -> Result<pb::WhoAmIResponse, RemoteError> {
        let mut c = self.client.clone();
        Ok(c.who_am_i(pb::WhoAmIRequest {})
            .await
            .map_err(status("WhoAmI"))?
            .into_inner())
    }

    /// The newest master key escrow envelope (`lifeboat-agent key recover`).
    pub async fn get_key_escrow(&self) -> Result<pb::KeyEscrow, RemoteError> {
        let mut c = self.client.clone();
        Ok(c.get_key_escrow(pb::GetKeyEscrowRequest {
            kind: "master".into(),
        })
        .await
        .map_err(status("GetKeyEscrow"))?
        .into_inner())
    }

    /// Asks for a new certificate for the CSR, over our current mTLS identity.
    pub async fn renew_certificate(
        &self,
        csr_pem: String,
    ) -> Result<pb::RenewCertificateResponse, RemoteError> {
        let mut c = self.client.clone();
        Ok(c.renew_certificate(pb::RenewCertificateRequest { csr_pem })
            .await
            .map_err(status("RenewCertificate"))?
            .into_inner())
    }
}

fn id_bytes(id: &ChunkId) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(id.as_bytes())
}

fn status(op: &'static str) -> impl Fn(tonic::Status) -> RemoteError {
    move |status| RemoteError::Status { op, status }
}

fn invalid(op: &'static str, reason: impl Into<String>) -> RemoteError {
    RemoteError::Invalid {
        op,
        reason: reason.into(),
    }
}

/// Splits blobs into messages of about `limit` bytes (at least one blob each) and at most
/// `max_blobs` blobs (the controller's per-message id limit: tiny chunks must not exceed it).
fn upload_messages(
    session: &str,
    blobs: Vec<(ChunkId, Vec<u8>)>,
    limit: usize,
    max_blobs: usize,
) -> Vec<pb::UploadChunksRequest> {
    let mut out = Vec::new();
    let mut cur: Vec<pb::Blob> = Vec::new();
    let mut cur_bytes = 0usize;
    for (id, data) in blobs {
        if !cur.is_empty() && (cur_bytes + data.len() + 64 > limit || cur.len() >= max_blobs) {
            out.push(pb::UploadChunksRequest {
                session_id: session.to_owned(),
                blobs: std::mem::take(&mut cur),
            });
            cur_bytes = 0;
        }
        cur_bytes += data.len() + 64;
        cur.push(pb::Blob {
            id: id_bytes(&id),
            data: data.into(),
        });
    }
    if !cur.is_empty() {
        out.push(pb::UploadChunksRequest {
            session_id: session.to_owned(),
            blobs: cur,
        });
    }
    out
}

/// A commit's messages: the header, then the references' batches as they arrive (read back from
/// the backup's scratch file on a blocking thread). Each batch is made into a message only when
/// the stream is polled: made all at once, every id in its own allocation (~80 bytes each,
/// 170,000 at 2.5 GiB) was the agent's peak at the end of a backup.
fn commit_messages(
    req: CommitRequest,
) -> impl tokio_stream::Stream<Item = pb::CommitSnapshotRequest> {
    use pb::commit_snapshot_request::Part;
    let header = pb::CommitSnapshotRequest {
        part: Some(Part::Header(pb::CommitHeader {
            session_id: req.session_id,
            started_at_unix_ms: req.started_at_unix_ms,
            finished_at_unix_ms: req.finished_at_unix_ms,
            stats: Some(req.stats),
            manifest_ids: req.manifest_ids.iter().map(id_bytes).collect(),
            reference_count: req.references.count,
        })),
    };
    let batches = tokio_stream::wrappers::ReceiverStream::new(req.references.batches);
    let refs = tokio_stream::StreamExt::map(batches, |batch| pb::CommitSnapshotRequest {
        part: Some(Part::Refs(pb::RefBatch {
            ids: batch.iter().map(id_bytes).collect(),
        })),
    });
    tokio_stream::StreamExt::chain(tokio_stream::once(header), refs)
}

impl Remote for GrpcRemote {
    async fn begin_session(&self, source: &str) -> Result<Session, RemoteError> {
        const OP: &str = "BeginSession";
        let mut c = self.client.clone();
        let r = c
            .begin_session(pb::BeginSessionRequest {
                source: source.to_owned(),
            })
            .await
            .map_err(status(OP))?
            .into_inner();
        if r.session_id.is_empty() {
            return Err(invalid(OP, "empty session id"));
        }
        let max_ids = r
            .max_ids_per_request
            .clamp(MIN_IDS_PER_REQUEST, MAX_IDS_PER_REQUEST) as usize;
        self.max_blobs.store(max_ids, Ordering::Relaxed);
        Ok(Session {
            id: r.session_id,
            max_ids,
            max_message_bytes: r.max_message_bytes,
        })
    }

    async fn have_chunks(
        &self,
        session: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, RemoteError> {
        const OP: &str = "HaveChunks";
        let mut c = self.client.clone();
        let r = c
            .have_chunks(pb::HaveChunksRequest {
                session_id: session.to_owned(),
                ids: ids.iter().map(id_bytes).collect(),
            })
            .await
            .map_err(status(OP))?
            .into_inner();
        let missing = chunk_ids_from_bytes(&r.missing).map_err(|e| invalid(OP, e.to_string()))?;
        let asked: std::collections::HashSet<&ChunkId> = ids.iter().collect();
        if missing.iter().any(|m| !asked.contains(m)) {
            return Err(invalid(OP, "answered an id that was not asked about"));
        }
        Ok(missing)
    }

    async fn upload(
        &self,
        session: &str,
        blobs: Vec<(ChunkId, Vec<u8>)>,
    ) -> Result<UploadReceipt, RemoteError> {
        if blobs.is_empty() {
            return Ok(UploadReceipt::default());
        }
        let mut c = self.client.clone();
        let max_blobs = self.max_blobs.load(Ordering::Relaxed).max(1);
        let msgs = upload_messages(session, blobs, UPLOAD_MESSAGE_BYTES, max_blobs);
        let r = c
            .upload_chunks(tokio_stream::iter(msgs))
            .await
            .map_err(status("UploadChunks"))?
            .into_inner();
        Ok(UploadReceipt {
            chunks_stored: r.chunks_stored,
            bytes_stored: r.bytes_stored,
            already_present: r.chunks_already_present,
        })
    }

    async fn commit(&self, req: CommitRequest) -> Result<CommitOutcome, RemoteError> {
        const OP: &str = "CommitSnapshot";
        let mut c = self.client.clone();
        let r = c
            .commit_snapshot(commit_messages(req))
            .await
            .map_err(status(OP))?
            .into_inner();
        if !r.missing.is_empty() {
            let missing =
                chunk_ids_from_bytes(&r.missing).map_err(|e| invalid(OP, e.to_string()))?;
            return Ok(CommitOutcome::Missing(missing));
        }
        if r.snapshot_id.is_empty() {
            return Err(invalid(OP, "neither a snapshot id nor missing ids"));
        }
        Ok(CommitOutcome::Committed {
            snapshot_id: r.snapshot_id,
        })
    }

    async fn list_snapshots(&self, source: &str) -> Result<Vec<SnapshotInfo>, RemoteError> {
        const OP: &str = "ListSnapshots";
        let mut c = self.client.clone();
        let r = c
            .list_snapshots(pb::ListSnapshotsRequest {
                source: source.to_owned(),
                from_agent: self.from_agent.clone(),
            })
            .await
            .map_err(status(OP))?
            .into_inner();
        r.snapshots
            .into_iter()
            .map(|s| snapshot_from_wire(s, OP))
            .collect()
    }

    async fn get_snapshot(&self, id: &str, source: &str) -> Result<SnapshotInfo, RemoteError> {
        const OP: &str = "GetSnapshot";
        let mut c = self.client.clone();
        let r = c
            .get_snapshot(pb::GetSnapshotRequest {
                snapshot_id: id.to_owned(),
                source: source.to_owned(),
                from_agent: self.from_agent.clone(),
            })
            .await
            .map_err(status(OP))?
            .into_inner();
        snapshot_from_wire(r, OP)
    }

    async fn report_failure(&self, f: FailureReport) -> Result<String, RemoteError> {
        const OP: &str = "ReportFailure";
        let mut c = self.client.clone();
        let r = c
            .report_failure(pb::ReportFailureRequest {
                source: f.source,
                started_at_unix_ms: f.started_at_unix_ms,
                finished_at_unix_ms: f.finished_at_unix_ms,
                reason: f.reason,
            })
            .await
            .map_err(status(OP))?
            .into_inner();
        Ok(r.failure_id)
    }

    async fn read_chunks(
        &self,
        ids: &[ChunkId],
        check: BlobCheck,
    ) -> Result<Vec<(ChunkId, bytes::Bytes)>, RemoteError> {
        const OP: &str = "ReadChunks";
        let mut c = self.client.clone();
        let mut stream = c
            .read_chunks(pb::ReadChunksRequest {
                ids: ids.iter().map(id_bytes).collect(),
                from_agent: self.from_agent.clone(),
                region: self.region as i32,
                caller_verifies: check == BlobCheck::Agent,
            })
            .await
            .map_err(status(OP))?
            .into_inner();
        let mut out = Vec::with_capacity(ids.len());
        while let Some(msg) = stream.message().await.map_err(status(OP))? {
            let blob = msg
                .blob
                .ok_or_else(|| invalid(OP, "message without a blob"))?;
            let id = ChunkId::try_from(&blob.id[..]).map_err(|e| invalid(OP, e.to_string()))?;
            match ids.get(out.len()) {
                Some(want) if *want == id => {
                    self.reads.chunks.fetch_add(1, Ordering::Relaxed);
                    self.reads
                        .bytes
                        .fetch_add(blob.data.len() as u64, Ordering::Relaxed);
                    if msg.from_secondary {
                        self.reads.from_secondary.fetch_add(1, Ordering::Relaxed);
                    }
                    out.push((id, blob.data))
                }
                _ => {
                    return Err(invalid(
                        OP,
                        format!(
                            "unexpected chunk {} (out of order or not asked for)",
                            id.short()
                        ),
                    ));
                }
            }
        }
        if out.len() != ids.len() {
            return Err(invalid(
                OP,
                format!("asked for {} chunks, received {}", ids.len(), out.len()),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(e: impl StdError + Send + Sync + 'static) -> RemoteError {
        RemoteError::Transport {
            op: "connect",
            source: Box::new(e),
        }
    }

    #[test]
    fn classifies_failures() {
        let refused = transport(io::Error::new(io::ErrorKind::ConnectionRefused, "nope"));
        assert_eq!(classify(&refused), FailureClass::Unreachable);
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        assert_eq!(
            classify(&transport(alert)),
            FailureClass::CertificateRefused
        );
        let unknown_ca = transport(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert_eq!(classify(&unknown_ca), FailureClass::CertificateRefused);
        let unauth = RemoteError::Status {
            op: "BeginSession",
            status: tonic::Status::unauthenticated("no client certificate"),
        };
        assert_eq!(classify(&unauth), FailureClass::CertificateRefused);
        let perm = RemoteError::Status {
            op: "BeginSession",
            status: tonic::Status::permission_denied("revoked"),
        };
        assert_eq!(classify(&perm), FailureClass::CertificateRefused);
        let tls_in_status = RemoteError::Status {
            op: "BeginSession",
            status: tonic::Status::unavailable(
                "error trying to connect: received fatal alert: BadCertificate",
            ),
        };
        assert_eq!(classify(&tls_in_status), FailureClass::CertificateRefused);
        let unavailable = RemoteError::Status {
            op: "HaveChunks",
            status: tonic::Status::unavailable("tcp connect error"),
        };
        assert_eq!(classify(&unavailable), FailureClass::Unreachable);
        let other = RemoteError::Status {
            op: "ReadChunks",
            status: tonic::Status::data_loss("pack damaged"),
        };
        assert_eq!(classify(&other), FailureClass::Other);
    }

    #[tokio::test]
    async fn commit_messages_are_the_header_then_every_reference_in_batches() {
        use pb::commit_snapshot_request::Part;
        use tokio_stream::StreamExt;
        let references: Vec<ChunkId> = (0..10u8).map(|i| ChunkId([i; 32])).collect();
        let req = CommitRequest {
            session_id: "s".into(),
            started_at_unix_ms: 1,
            finished_at_unix_ms: 2,
            stats: Default::default(),
            manifest_ids: vec![ChunkId([9; 32])],
            references: crate::remote::RefStream::from_ids(&references, 4),
        };
        let mut msgs = commit_messages(req).map(|m| m.part.expect("part"));
        let Some(Part::Header(h)) = msgs.next().await else {
            panic!("the header comes first");
        };
        assert_eq!((h.reference_count, h.manifest_ids.len()), (10, 1));
        let batches: Vec<Vec<bytes::Bytes>> = msgs
            .map(|p| match p {
                Part::Refs(r) => r.ids,
                Part::Header(_) => panic!("one header"),
            })
            .collect()
            .await;
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        let sent: Vec<bytes::Bytes> = batches.concat();
        assert_eq!(sent, references.iter().map(id_bytes).collect::<Vec<_>>());
    }

    #[test]
    fn upload_messages_are_bounded() {
        let blobs: Vec<_> = (0..10u8)
            .map(|i| (ChunkId([i; 32]), vec![0u8; 1000]))
            .collect();
        let msgs = upload_messages("s", blobs, 3000, 100);
        assert_eq!(msgs.len(), 5);
        assert!(
            msgs.iter()
                .all(|m| m.blobs.len() == 2 && m.session_id == "s")
        );
        let big = vec![(ChunkId([1; 32]), vec![0u8; 10_000])];
        assert_eq!(upload_messages("s", big, 3000, 100).len(), 1);
        let tiny: Vec<_> = (0..100u8)
            .map(|i| (ChunkId([i; 32]), vec![0u8; 10]))
            .collect();
        let msgs = upload_messages("s", tiny, 1 << 20, 16);
        assert_eq!(msgs.len(), 7, "100 tiny blobs at 16 per message");
        assert!(msgs.iter().all(|m| m.blobs.len() <= 16));
    }
}
