//! An in-process S3 server for tests: `s3s-fs` (objects as files under a directory) behind
//! `s3s`' SigV4 check, served with hyper-util on `127.0.0.1:0`. It honours
//! `If-None-Match: *`, so it exercises conditional puts.
//!
//! The server runs on its own tokio runtime (dropped with [`S3Server`]), so it serves both async
//! tests and real controller processes started from synchronous tests. Objects live at
//! `<root>/<bucket>/<key>`: tests damage them there directly ([`S3Server::object_path`]).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use lifeboat_controller::config::{ConditionalPut, S3Config};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "lifeboat-test-access";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "lifeboat-test-secret-0123456789";
/// The region clients sign for.
pub const REGION: &str = "us-east-1";

/// A running in-process S3 server with one bucket.
pub struct S3Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub bucket: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl S3Server {
    /// Starts a server storing under `root` (created) with an empty bucket `bucket`.
    pub fn start(root: &Path, bucket: &str) -> S3Server {
        std::fs::create_dir_all(root.join(bucket)).expect("create bucket directory");
        let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let svc = service.clone();
                tokio::spawn(async move {
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        S3Server {
            addr,
            root: root.to_owned(),
            bucket: bucket.to_owned(),
            rt: Some(rt),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the server keeps the object `key` (with any prefix included).
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(&self.bucket).join(key)
    }

    /// A store config for this server.
    pub fn config(&self, prefix: Option<&str>, conditional_put: ConditionalPut) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            region: REGION.to_owned(),
            bucket: self.bucket.clone(),
            prefix: prefix.map(str::to_owned),
            virtual_hosted_style: false,
            allow_http: true,
            credentials_file: None,
            conditional_put,
        }
    }

    /// Writes a credentials file (mode 0600) for this server.
    pub fn write_credentials(&self, path: &Path) {
        std::fs::write(
            path,
            format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"),
        )
        .expect("write credentials");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    /// A `[store]` table pointing at this server, with `credentials_file = "s3.credentials"`.
    pub fn store_toml(&self, prefix: &str, conditional_put: &str) -> String {
        format!(
            "[store]\nkind = \"s3\"\nendpoint = \"{}\"\nregion = \"{REGION}\"\nbucket = \"{}\"\n\
             prefix = \"{prefix}\"\nallow_http = true\ncredentials_file = \"s3.credentials\"\n\
             conditional_put = \"{conditional_put}\"\n",
            self.endpoint(),
            self.bucket
        )
    }

    /// Points an initialized controller directory at this server: rewrites the `[store]` table
    /// of its `controller.toml` and writes `s3.credentials` beside it.
    pub fn configure_controller(&self, dir: &Path, prefix: &str, conditional_put: &str) {
        let path = dir.join("controller.toml");
        let text = std::fs::read_to_string(&path).expect("read controller.toml");
        let start = text.find("\n[store]").expect("[store] table") + 1;
        let rest = &text[start + "[store]".len()..];
        let end = rest
            .find("\n[")
            .map_or(text.len(), |i| start + "[store]".len() + i + 1);
        let new = format!(
            "{}{}{}",
            &text[..start],
            self.store_toml(prefix, conditional_put),
            &text[end..]
        );
        std::fs::write(&path, new).expect("write controller.toml");
        self.write_credentials(&dir.join("s3.credentials"));
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
