//! Small helpers for tests: an in-process controller on 127.0.0.1:0 and client certificates.
//! Compiled for this crate's tests and, with the `testing` feature, for other crates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::ControllerConfig;
use crate::server::ServeError;

/// A controller serving in this process.
#[derive(Debug)]
pub struct TestController {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub config: ControllerConfig,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), ServeError>>,
}

impl TestController {
    /// Initializes `dir` and serves it on 127.0.0.1:0.
    pub async fn start(dir: &Path) -> TestController {
        Self::start_with(dir, |_| {}).await
    }

    /// Like [`TestController::start`], letting `configure` change the handler state first
    /// (swap the store for a fault-injecting one, shorten the store deadline).
    pub async fn start_with(
        dir: &Path,
        configure: impl FnOnce(&mut crate::service::State),
    ) -> TestController {
        lifeboat_common::tls::install_crypto_provider();
        crate::init::init(dir, "127.0.0.1:0", &[]).expect("init controller dir");
        let config =
            ControllerConfig::load(&dir.join("controller.toml")).expect("load controller.toml");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let mut prepared = crate::server::prepare(&config).expect("prepare");
        configure(prepared.state_mut());
        let handle = tokio::spawn(prepared.run(listener, shutdown.clone()));
        TestController {
            dir: dir.to_owned(),
            addr,
            config,
            shutdown,
            handle,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(f)).expect("read controller file")
    }

    /// A channel with the given client certificate and key (PEM).
    pub async fn channel(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Channel, crate::client::ClientError> {
        crate::client::connect_pem(
            &self.url(),
            "lifeboat-controller",
            &self.read("ca.pem"),
            cert_pem,
            key_pem,
        )
        .await
    }

    /// A channel with the admin certificate.
    pub async fn admin_channel(&self) -> Channel {
        self.channel(&self.read("admin.pem"), &self.read("admin.key"))
            .await
            .expect("admin channel")
    }
}

/// A key pair and a CSR for it, as `lifeboat-agent init` makes them; the CSR asks for `sans`.
pub fn agent_csr(name: &str, sans: Vec<String>) -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::new(sans).expect("params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (csr, key.serialize_pem())
}
