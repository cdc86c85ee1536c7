//! The server: a function of an already-bound listener and a shutdown signal.
//!
//! TLS is terminated here rather than in tonic so that every refused handshake is logged with
//! the peer and the reason (`warn!(peer, error, "TLS handshake refused")`, e.g. "BadCertificate" or
//! "UnknownIssuer"). A client certificate is optional at the handshake but, when presented, must
//! chain to the controller's CA and be within its validity (checked against the enrollment
//! [`crate::enrollment::Clock`]); who it belongs to is decided per call by [`crate::auth`], and
//! a call without one is refused there — except `EnrollmentService.Enroll` (join tokens).
//! Handshakes run in their own tasks (with a timeout) so a slow client cannot stall accepting.
//!
//! Shutdown: when the token is cancelled the accept loop stops, tonic stops taking new
//! connections and lets in-flight calls finish; after [`GRACE`] the remaining ones are dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_common::tls::{ENROLL_SERVER_NAME, TlsError, load_certs, load_key};
use lifeboat_proto::v1::admin_service_server::AdminServiceServer;
use lifeboat_proto::v1::agent_service_server::AgentServiceServer;
use lifeboat_proto::v1::enrollment_service_server::EnrollmentServiceServer;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::MAX_MESSAGE_BYTES;
use crate::ca::{Ca, CaError};
use crate::catalog::{Catalog, CatalogError};
use crate::config::{ConditionalPut, ControllerConfig, StoreConfig};
use crate::service::State;
use crate::service::admin::AdminApi;
use crate::service::agent::AgentApi;
use crate::service::enrollment::EnrollmentApi;
use crate::store::probe::probe_and_configure;
use crate::store::{Store, StoreError};

/// How long in-flight calls may run after shutdown starts.
pub const GRACE: Duration = Duration::from_secs(30);
/// Largest enrollment request (token + CSR) accepted from an unauthenticated client.
pub const ENROLL_MESSAGE_BYTES: usize = 16 << 10;
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("TLS setup failed: {0}")]
    TlsSetup(String),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Replication(#[from] crate::replication::ReplicationError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A controller ready to serve: config loaded, catalog open, TLS built.
#[derive(Debug)]
pub struct Prepared {
    state: State,
    tls: TlsConfigs,
    retention: crate::config::RetentionSettings,
    alerts: crate::config::AlertSettings,
}

/// The two TLS configurations, chosen per connection by the server name the client asks for
/// (SNI, read from the ClientHello before anything else): [`ENROLL_SERVER_NAME`] accepts a client
/// without a certificate (only `EnrollmentService.Enroll` then answers; every other call needs an
/// identity, [`crate::auth`]); every other name requires a client certificate from the fleet CA at
/// the handshake, and a refusal is logged with the peer and the reason.
#[derive(Debug, Clone)]
struct TlsConfigs {
    strict: Arc<rustls::ServerConfig>,
    enroll: Arc<rustls::ServerConfig>,
}

fn tls_config(
    cfg: &ControllerConfig,
    clock: crate::enrollment::Clock,
    certless: bool,
) -> Result<rustls::ServerConfig, ServeError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for c in load_certs(&cfg.ca_cert)? {
        roots
            .add(c)
            .map_err(|e| ServeError::TlsSetup(format!("CA {}: {e}", cfg.ca_cert.display())))?;
    }
    // Under the enrollment name a client certificate is optional, so that EnrollmentService can
    // be reached with a join token alone; a presented certificate must still chain to our CA, and
    // every other call requires an identity ([`crate::auth`]: no certificate → Unauthenticated).
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if certless {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let verifier = builder
        .build()
        .map_err(|e| ServeError::TlsSetup(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_details(provider, Arc::new(clock))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::TlsSetup(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_chain(cfg)?, load_key(&cfg.key)?)
        .map_err(|e| ServeError::TlsSetup(format!("{}: {e}", cfg.cert.display())))?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}

fn open_store(cfg: &StoreConfig) -> Result<Store, StoreError> {
    match cfg {
        StoreConfig::Local { path } => Store::local(path),
        StoreConfig::S3(s3) => Store::s3(s3),
    }
}

fn put_mode(cfg: &StoreConfig) -> ConditionalPut {
    match cfg {
        StoreConfig::Local { .. } => ConditionalPut::Auto,
        StoreConfig::S3(s3) => s3.conditional_put,
    }
}

/// The server certificate followed by the CA certificate: an enrolling agent pins the CA by the
/// fingerprint in its join token, so the CA must be in the chain the server presents.
fn server_chain(
    cfg: &ControllerConfig,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ServeError> {
    let mut chain = load_certs(&cfg.cert)?;
    for ca in load_certs(&cfg.ca_cert)? {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    Ok(chain)
}

/// Loads everything the server needs; fails early with a clear error.
pub fn prepare(cfg: &ControllerConfig) -> Result<Prepared, ServeError> {
    let enrollment = crate::enrollment::Policy::default();
    let tls = TlsConfigs {
        strict: Arc::new(tls_config(cfg, enrollment.clock.clone(), false)?),
        enroll: Arc::new(tls_config(cfg, enrollment.clock.clone(), true)?),
    };
    let ca = Ca::load(&cfg.ca_cert, &cfg.ca_key)?;
    let catalog = Catalog::open(&cfg.catalog)?;
    let store = open_store(&cfg.store)?;
    let secondary = cfg.secondary.as_ref().map(open_store).transpose()?;
    Ok(Prepared {
        state: State {
            catalog,
            store,
            secondary,
            ca: Arc::new(ca),
            store_deadline: crate::deadline::STORE_DEADLINE,
            enrollment: Arc::new(enrollment),
            replication_progress: tokio::sync::watch::channel(0).0,
            streams: Arc::default(),
            reads: Arc::default(),
            gc: cfg.gc.clone(),
            control: Arc::default(),
            counters: Arc::default(),
            replication: crate::replication::Runtime {
                settings: cfg.replication.clone(),
                scrub: Default::default(),
            },
        },
        tls,
        retention: cfg.retention.clone(),
        alerts: cfg.alerts.clone(),
    })
}

/// Serves on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    cfg: &ControllerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut prepared = prepare(cfg)?;
    prepared.probe_store(cfg).await?;
    prepared.run(listener, shutdown).await
}

type Conn = Result<TlsStream<TcpStream>, std::io::Error>;

/// Reads the ClientHello, picks the TLS configuration by server name, completes the handshake.
async fn accept_tls(tcp: TcpStream, tls: &TlsConfigs) -> std::io::Result<TlsStream<TcpStream>> {
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let config = if start.client_hello().server_name() == Some(ENROLL_SERVER_NAME) {
        tls.enroll.clone()
    } else {
        tls.strict.clone()
    };
    start.into_stream(config).await
}

async fn handshake(tls: TlsConfigs, tcp: TcpStream, peer: SocketAddr, tx: mpsc::Sender<Conn>) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_tls(tcp, &tls)).await {
        Ok(Ok(tls)) => {
            // The receiver is gone only during shutdown; the connection is then dropped.
            let _ = tx.send(Ok(tls)).await;
        }
        Ok(Err(e)) => warn!(peer = %peer, error = %e, "TLS handshake refused"),
        Err(_) => warn!(peer = %peer, error = "timed out", "TLS handshake refused"),
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: TlsConfigs,
    tx: mpsc::Sender<Conn>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(handshake(tls.clone(), tcp, peer, tx.clone()));
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    info!("stopped accepting connections");
}

impl Prepared {
    /// The shared handler state (for tests and tools).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The handler state, to swap the store or the deadline before serving (tests).
    pub fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// Runs the object store's start-up probe ([`crate::store::probe`]): fails if the store
    /// cannot be written and read back, and sets the put mode. Call it before announcing
    /// readiness.
    /// With a `[secondary]` store, probes it too and checks the role markers
    /// ([`crate::replication::marker`]): a secondary that is the primary is refused.
    pub async fn probe_store(&mut self, cfg: &ControllerConfig) -> Result<(), ServeError> {
        let (store, _) =
            probe_and_configure(self.state.store.clone(), put_mode(&cfg.store)).await?;
        self.state.store = store;
        if let (Some(secondary), Some(scfg)) = (self.state.secondary.clone(), &cfg.secondary) {
            let (secondary, _) = probe_and_configure(secondary, put_mode(scfg)).await?;
            crate::replication::marker::check_pair(&self.state.store, &secondary).await?;
            self.state.secondary = Some(secondary);
        }
        Ok(())
    }

    /// The `/metrics` endpoint's view of this controller.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        crate::metrics::Metrics {
            catalog: self.state.catalog.clone(),
            secondary: self
                .state
                .secondary
                .as_ref()
                .map(|s| s.location().to_owned()),
            scrub: self.state.replication.scrub.clone(),
            presence: self.state.control.clone(),
            counters: self.state.counters.clone(),
            reads: self.state.reads.clone(),
        }
    }

    /// Serves until `shutdown` is cancelled, then drains for at most [`GRACE`].
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        if let Some(secondary) = &self.state.secondary {
            crate::replication::worker::Worker {
                catalog: self.state.catalog.clone(),
                primary: self.state.store.clone(),
                secondary: secondary.clone(),
                config: Default::default(),
                runtime: self.state.replication.clone(),
                progress: self.state.replication_progress.clone(),
            }
            .spawn(shutdown.clone());
        }
        crate::retention::worker::spawn(
            self.state.catalog.clone(),
            self.retention.clone(),
            shutdown.clone(),
        );
        crate::gc::worker::spawn(self.state.clone(), shutdown.clone());
        crate::fleet::alert_worker::AlertWorker {
            catalog: self.state.catalog.clone(),
            settings: self.alerts.clone(),
            secondary_configured: self.state.secondary.is_some(),
            presence: self.state.control.clone(),
        }
        .spawn(shutdown.clone());
        let control = self.state.control.clone();
        let stop = shutdown.clone();
        // Control streams never end on their own: close them so the drain is not held up.
        tokio::spawn(async move {
            stop.cancelled().await;
            control.close_all();
        });
        let (tx, rx) = mpsc::channel::<Conn>(64);
        let accept = tokio::spawn(accept_loop(
            listener,
            self.tls.clone(),
            tx,
            shutdown.clone(),
        ));
        let agent = AgentServiceServer::new(AgentApi::new(self.state.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let admin = AdminServiceServer::new(AdminApi::new(self.state.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // HTTP/2 flow control sized for 4 MiB upload batches (hyper's default windows are
        // 1 MiB per connection: two uploads in flight would stall on window updates).
        let server = tonic::transport::Server::builder()
            .initial_stream_window_size(crate::H2_STREAM_WINDOW)
            .initial_connection_window_size(crate::H2_CONNECTION_WINDOW)
            .max_frame_size(crate::H2_MAX_FRAME)
            .add_service(agent)
            .add_service(admin)
            .add_service(
                EnrollmentServiceServer::new(EnrollmentApi::new(self.state.clone()))
                    .max_decoding_message_size(ENROLL_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(
                ReceiverStream::new(rx),
                shutdown.clone().cancelled_owned(),
            );
        tokio::pin!(server);
        let grace = async {
            shutdown.cancelled().await;
            info!(
                grace_secs = GRACE.as_secs(),
                "shutting down: finishing in-flight calls"
            );
            tokio::time::sleep(GRACE).await;
        };
        let result = tokio::select! {
            r = &mut server => r.map_err(ServeError::from),
            _ = grace => {
                warn!("grace period over: dropping the remaining connections");
                Ok(())
            }
        };
        accept.abort();
        info!("controller stopped");
        result
    }
}

#[cfg(test)]
mod authz_tests;
#[cfg(test)]
mod enroll_tests;
#[cfg(test)]
mod tests;
