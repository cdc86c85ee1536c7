//! The server: a function of an already-bound listener and a shutdown signal.
//!
//! TLS is terminated here rather than in tonic so that every refused handshake is logged with
//! the peer and the reason (`warn!(peer, error, "TLS handshake refused")`, e.g. "peer sent no
//! certificates" or "UnknownIssuer"). The client verifier requires a certificate chaining to the
//! controller's CA; who the certificate belongs to is decided per call by [`crate::auth`].
//! Handshakes run in their own tasks (with a timeout) so a slow client cannot stall accepting.
//!
//! Shutdown: when the token is cancelled the accept loop stops, tonic stops taking new
//! connections and lets in-flight calls finish; after [`GRACE`] the remaining ones are dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_common::tls::{TlsError, load_certs, load_key};
use lifeboat_proto::v1::admin_service_server::AdminServiceServer;
use lifeboat_proto::v1::agent_service_server::AgentServiceServer;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
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
use crate::store::probe::probe_and_configure;
use crate::store::{Store, StoreError};

/// How long in-flight calls may run after shutdown starts.
pub const GRACE: Duration = Duration::from_secs(30);
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
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A controller ready to serve: config loaded, catalog open, TLS built.
#[derive(Debug)]
pub struct Prepared {
    state: State,
    tls: Arc<rustls::ServerConfig>,
}

fn tls_config(cfg: &ControllerConfig) -> Result<rustls::ServerConfig, ServeError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for c in load_certs(&cfg.ca_cert)? {
        roots
            .add(c)
            .map_err(|e| ServeError::TlsSetup(format!("CA {}: {e}", cfg.ca_cert.display())))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ServeError::TlsSetup(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::TlsSetup(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&cfg.cert)?, load_key(&cfg.key)?)
        .map_err(|e| ServeError::TlsSetup(format!("{}: {e}", cfg.cert.display())))?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}

/// Loads everything the server needs; fails early with a clear error.
pub fn prepare(cfg: &ControllerConfig) -> Result<Prepared, ServeError> {
    let tls = tls_config(cfg)?;
    let ca = Ca::load(&cfg.ca_cert, &cfg.ca_key)?;
    let catalog = Catalog::open(&cfg.catalog)?;
    let store = match &cfg.store {
        StoreConfig::Local { path } => Store::local(path)?,
        StoreConfig::S3(s3) => Store::s3(s3)?,
    };
    Ok(Prepared {
        state: State {
            catalog,
            store,
            ca: Arc::new(ca),
            store_deadline: crate::deadline::STORE_DEADLINE,
        },
        tls: Arc::new(tls),
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

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<Conn>,
) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
    acceptor: TlsAcceptor,
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
                tokio::spawn(handshake(acceptor.clone(), tcp, peer, tx.clone()));
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
    pub async fn probe_store(&mut self, cfg: &ControllerConfig) -> Result<(), ServeError> {
        let mode = match &cfg.store {
            StoreConfig::Local { .. } => ConditionalPut::Auto,
            StoreConfig::S3(s3) => s3.conditional_put,
        };
        let (store, _) = probe_and_configure(self.state.store.clone(), mode).await?;
        self.state.store = store;
        Ok(())
    }

    /// Serves until `shutdown` is cancelled, then drains for at most [`GRACE`].
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let (tx, rx) = mpsc::channel::<Conn>(64);
        let accept = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(self.tls.clone()),
            tx,
            shutdown.clone(),
        ));
        let agent = AgentServiceServer::new(AgentApi::new(self.state.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let admin = AdminServiceServer::new(AdminApi::new(self.state.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let server = tonic::transport::Server::builder()
            .add_service(agent)
            .add_service(admin)
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
mod tests;
