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

mod alerts;
mod gc;
mod retention;
mod secondary;
mod store;

pub use alerts::{AlertSettings, WebhookSettings};
pub use retention::RetentionSettings;
pub use secondary::{MAX_SCRUB_SAMPLE, ReplicationSettings};
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
    /// The secondary object store (another region): the keys of `[store]` plus the replication
    /// keys of [`secondary`], which are taken out before the rest is validated as a store.
    secondary: Option<toml::Table>,
    /// Plain-HTTP Prometheus listener (default 127.0.0.1:9464).
    metrics_listen: Option<String>,
    /// Default keep rules applied on a schedule (none: keep everything).
    retention: Option<retention::RetentionFile>,
    /// Alert worker interval and webhook (default: every 30 s, log only).
    alerts: Option<alerts::AlertsFile>,
    /// Garbage collection timing (grace, margin, worker interval).
    gc: Option<gc::GcFile>,
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
    /// Delete delay, deletes on/off and scrub settings of `[secondary]` (defaults without one).
    pub replication: ReplicationSettings,
    /// Address of the plain-HTTP `/metrics` listener.
    pub metrics_listen: String,
    /// `[retention]`: default keep rules and how often the worker applies them.
    pub retention: RetentionSettings,
    /// `[alerts]`: the alert worker's interval and webhook.
    pub alerts: AlertSettings,
    /// `[gc]`: garbage collection timing.
    pub gc: crate::gc::GcSettings,
}

impl ControllerConfig {
    /// Reads `controller.toml`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let f: ControllerFile = load_toml(path)?;
        let store = f.store.validate(path)?;
        let (secondary, replication) = match f.secondary {
            None => (None, ReplicationSettings::default()),
            Some(mut table) => {
                let settings = secondary::take(&mut table, path)?;
                let raw =
                    store::StoreFile::deserialize(toml::Value::Table(table)).map_err(|e| {
                        ConfigError::Invalid {
                            path: path.to_owned(),
                            message: format!("[secondary]: {e}"),
                        }
                    })?;
                (Some(raw.validate(path)?), settings)
            }
        };
        Ok(ControllerConfig {
            listen: f.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            ca_cert: resolve(path, &f.tls.ca_cert),
            ca_key: resolve(path, &f.tls.ca_key),
            cert: resolve(path, &f.tls.cert),
            key: resolve(path, &f.tls.key),
            catalog: resolve(path, &f.catalog.path),
            store,
            secondary,
            replication,
            metrics_listen: f
                .metrics_listen
                .unwrap_or_else(|| crate::metrics::DEFAULT_METRICS_LISTEN.to_owned()),
            retention: f.retention.unwrap_or_default().validate(path)?,
            alerts: f.alerts.unwrap_or_default().validate(path)?,
            gc: f.gc.unwrap_or_default().validate(path)?,
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
# delete_delay = "7d"      # deletes (retention, GC) reach the secondary only this long after
# deletes = true           # false: its credentials cannot delete; deletes are only listed
#                          # (`lifeboatctl replication deletes`) for a job or a lifecycle rule
# scrub_interval = "6h"    # read back a random sample of replicated objects ("0s": off);
# scrub_sample = 16        # each read is cross-region traffic

# [retention]
# Default keep rules, applied every `interval` by the controller (docs/retention.md). Without
# any rule nothing is forgotten. Forgotten snapshots are hidden at once; GC frees their objects.
# interval = "1h"
# keep_last = 10
# keep_hourly = 24
# keep_daily = 7
# keep_weekly = 5
# keep_monthly = 12
# keep_yearly = 3
# keep_within = "2d"       # everything within 2 days of the newest snapshot of each source

# [alerts]
# RPO breaches, failing backups and their recoveries: logged, and POSTed as signed JSON to the
# webhook when one is set (docs/operations.md).
# interval = "30s"
# webhook_url = "https://hooks.example.net/lifeboat"
# webhook_secret_file = "webhook.secret"   # mode 0600: the HMAC-SHA256 signing secret
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

/// Loads the config `init` writes with `extra` appended (tests of the optional sections).
#[cfg(test)]
pub(crate) fn load_with(extra: &str) -> Result<ControllerConfig, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("controller.toml");
    let text = format!("{}\n{extra}", controller_toml("127.0.0.1:9"));
    std::fs::write(&p, text).expect("write");
    ControllerConfig::load(&p)
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
        assert_eq!(c.replication, ReplicationSettings::default());
    }

    #[test]
    fn secondary_replication_keys_parse_and_typos_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("controller.toml");
        let base = format!(
            "{}\n[secondary]\nkind = \"local\"\npath = \"dr\"\n",
            controller_toml("127.0.0.1:9")
        );
        let with = |extra: &str| {
            std::fs::write(&p, format!("{base}{extra}")).expect("write");
            ControllerConfig::load(&p)
        };
        let c = with(
            "delete_delay = \"2d\"\ndeletes = false\nscrub_interval = \"10m\"\nscrub_sample = 5\n",
        )
        .expect("parse");
        assert_eq!(
            c.replication,
            ReplicationSettings {
                delete_delay: std::time::Duration::from_secs(2 * 86_400),
                deletes: false,
                scrub_interval: std::time::Duration::from_secs(600),
                scrub_sample: 5,
            }
        );
        let e = with("delete_delay = \"7 days\"\n")
            .expect_err("bad")
            .to_string();
        assert!(e.contains("delete_delay"), "{e}");
        let e = with("scrub_sample = 0\n").expect_err("zero").to_string();
        assert!(e.contains("scrub_sample"), "{e}");
        let e = with("delete_dalay = \"1d\"\n")
            .expect_err("typo")
            .to_string();
        assert!(e.contains("delete_dalay"), "{e}");
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
