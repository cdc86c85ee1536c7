//! Configuration files: `controller.toml` (read by `lifeboat-controller serve`) and
//! `lifeboatctl.toml` (read by `lifeboatctl`).
//!
//! Both are parsed with `deny_unknown_fields` (a misspelt key is an error naming it) and every
//! relative path is resolved against the directory of the config file, so a controller directory
//! can be moved as a whole. Precedence for the listen address and the controller address:
//! file < environment (`LIFEBOAT_LISTEN`, `LIFEBOAT_ADDRESS`) < command-line flag.

use std::path::{Path, PathBuf};

use lifeboat_common::config::{ConfigError, load_toml, resolve};
use serde::Deserialize;

mod store;

pub use store::{ConditionalPut, S3Config, StoreConfig};

/// Default listen address of the controller.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// Environment variable that overrides `listen` in `controller.toml`.
pub const ENV_LISTEN: &str = "LIFEBOAT_LISTEN";
/// Environment variable that overrides `address` in `lifeboatctl.toml`.
pub const ENV_ADDRESS: &str = "LIFEBOAT_ADDRESS";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControllerFile {
    listen: Option<String>,
    tls: TlsFile,
    catalog: CatalogFile,
    store: store::StoreFile,
    /// The secondary object store (another region): same shape as `[store]`.
    secondary: Option<store::StoreFile>,
    /// Plain-HTTP Prometheus listener (default 127.0.0.1:9464).
    metrics_listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    path: PathBuf,
}

/// The controller's validated configuration, all paths absolute or relative to the cwd.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub listen: String,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub catalog: PathBuf,
    pub store: StoreConfig,
    /// `[secondary]`: where objects are replicated to; `None` without replication.
    pub secondary: Option<StoreConfig>,
    /// Address of the plain-HTTP `/metrics` listener.
    pub metrics_listen: String,
}

impl ControllerConfig {
    /// Reads `controller.toml`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let f: ControllerFile = load_toml(path)?;
        let store = f.store.validate(path)?;
        let secondary = f.secondary.map(|s| s.validate(path)).transpose()?;
        Ok(ControllerConfig {
            listen: f.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            ca_cert: resolve(path, &f.tls.ca_cert),
            ca_key: resolve(path, &f.tls.ca_key),
            cert: resolve(path, &f.tls.cert),
            key: resolve(path, &f.tls.key),
            catalog: resolve(path, &f.catalog.path),
            store,
            secondary,
            metrics_listen: f
                .metrics_listen
                .unwrap_or_else(|| crate::metrics::DEFAULT_METRICS_LISTEN.to_owned()),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CtlFile {
    address: String,
    server_name: Option<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// `lifeboatctl`'s validated configuration.
#[derive(Debug, Clone)]
pub struct CtlConfig {
    /// `https://host:port`.
    pub address: String,
    /// The name checked against the controller's certificate.
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CtlConfig {
    /// Reads `lifeboatctl.toml`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let f: CtlFile = load_toml(path)?;
        Ok(CtlConfig {
            address: f.address,
            server_name: f
                .server_name
                .unwrap_or_else(|| "lifeboat-controller".to_owned()),
            ca: resolve(path, &f.ca),
            cert: resolve(path, &f.cert),
            key: resolve(path, &f.key),
        })
    }
}

/// The commented `controller.toml` written by `init`.
pub fn controller_toml(listen: &str) -> String {
    format!(
        r#"# Lifeboat controller configuration (written by `lifeboat-controller init`).
# Relative paths are resolved against the directory holding this file.

# Address to serve gRPC (mTLS) on. Env LIFEBOAT_LISTEN overrides it, and --listen overrides both.
listen = "{listen}"
# Prometheus /metrics (plain HTTP; keep it on localhost). Flag --metrics-listen overrides it.
# metrics_listen = "127.0.0.1:9464"

[tls]
# The controller's private CA: it signs agent and admin certificates. Keep ca.key secret (mode 0600).
ca_cert = "ca.pem"
ca_key = "ca.key"
# The controller's server certificate and key.
cert = "server.pem"
key = "server.key"

[catalog]
# SQLite catalog: an index of the object store (WAL, synchronous=FULL).
path = "catalog.db"

[store]
# "local": a directory on this host, fsync'd after every write.
kind = "local"
path = "objects"
# "s3": an S3-compatible bucket (AWS S3, OCI Object Storage, MinIO, SeaweedFS). Replace the two
# lines above with, for example:
# kind = "s3"
# endpoint = "https://NAMESPACE.compat.objectstorage.REGION.oraclecloud.com"  # omit for AWS
# region = "eu-frankfurt-1"
# bucket = "lifeboat"
# prefix = "controller-1"            # optional key prefix inside the bucket
# virtual_hosted_style = false       # path-style requests (OCI needs them)
# allow_http = false                 # plain http:// endpoints: tests only
# credentials_file = "s3.credentials"  # access_key_id = "..." / secret_access_key = "..." (mode 0600);
#                                    # without it: env AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
#                                    # Never put keys in this file.
# conditional_put = "auto"           # "auto": probe If-None-Match at start-up; "etag"; "disabled"

# [secondary]
# Replication to a second object store (another region): same keys as [store], any backend,
# its own credentials_file. Every object is copied there; reads fall back to it.
# kind = "local"
# path = "/mnt/dr-copy/objects"
"#
    )
}

/// The commented `lifeboatctl.toml` written by `init`.
pub fn ctl_toml(address: &str) -> String {
    format!(
        r#"# lifeboatctl configuration (written by `lifeboat-controller init`).
# Relative paths are resolved against the directory holding this file.

# The controller's address. Env LIFEBOAT_ADDRESS overrides it, and --address overrides both.
address = "{address}"
# The name checked against the controller's certificate.
server_name = "lifeboat-controller"
# The controller's CA certificate, and the admin client certificate and key (keep admin.key secret).
ca = "ca.pem"
cert = "admin.pem"
key = "admin.key"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_configs_parse_and_resolve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("controller.toml");
        std::fs::write(&p, controller_toml("127.0.0.1:9")).expect("write");
        let c = ControllerConfig::load(&p).expect("parse");
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.catalog, dir.path().join("catalog.db"));
        assert_eq!(
            c.store,
            StoreConfig::Local {
                path: dir.path().join("objects")
            }
        );
        let p = dir.path().join("lifeboatctl.toml");
        std::fs::write(&p, ctl_toml("https://127.0.0.1:9")).expect("write");
        let c = CtlConfig::load(&p).expect("parse");
        assert_eq!(c.key, dir.path().join("admin.key"));
        assert_eq!(c.server_name, "lifeboat-controller");
    }

    #[test]
    fn secondary_and_metrics_listen_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("controller.toml");
        let text = format!(
            "{}\n[secondary]\nkind = \"local\"\npath = \"dr\"\n",
            controller_toml("127.0.0.1:9")
        )
        .replace("# metrics_listen = ", "metrics_listen = ")
        .replace("\"127.0.0.1:9464\"", "\"127.0.0.1:0\"");
        std::fs::write(&p, text).expect("write");
        let c = ControllerConfig::load(&p).expect("parse");
        assert_eq!(
            c.secondary,
            Some(StoreConfig::Local {
                path: dir.path().join("dr")
            })
        );
        assert_eq!(c.metrics_listen, "127.0.0.1:0");
    }

    #[test]
    fn unknown_store_kind_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("controller.toml");
        let text = controller_toml("127.0.0.1:9").replace("kind = \"local\"", "kind = \"ftp\"");
        std::fs::write(&p, text).expect("write");
        let e = ControllerConfig::load(&p).expect_err("ftp").to_string();
        assert!(e.contains("ftp"), "{e}");
    }
}
