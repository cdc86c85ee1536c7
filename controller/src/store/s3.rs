//! S3-compatible buckets (AWS S3, OCI Object Storage, MinIO, SeaweedFS) through
//! `object_store`'s `AmazonS3`.
//!
//! Credentials come from `credentials_file` (TOML `access_key_id`, `secret_access_key`, optional
//! `session_token`; refused if group or others can read it) or, without one, from the
//! environment variables `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (`AWS_SESSION_TOKEN`).
//! No other `AWS_*` variable is read, so the config file alone decides where data goes.
//! Secrets are never logged: [`Credentials`]' `Debug` redacts them.
//!
//! Failure modes: every request has a connect timeout ([`CONNECT_TIMEOUT`]) and a whole-request
//! timeout ([`REQUEST_TIMEOUT`]); timeouts, connection errors and 5xx answers are retried
//! [`MAX_RETRIES`] times with exponential backoff, then surface as a
//! [`super::StoreError::Backend`] naming the operation and key. A hanging store therefore gives
//! a clear error within about [`RETRY_TIMEOUT`], never a stuck upload.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use serde::Deserialize;

use super::StoreError;
use crate::config::{ConditionalPut, S3Config};

/// How long to wait for a TCP + TLS connection to the store.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take (a 16 MiB pack at ~300 KB/s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries after the first attempt.
pub const MAX_RETRIES: usize = 5;
/// No retry starts after this long since the first attempt.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(150);

/// Static S3 credentials.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Reads a credentials file, refusing one that other users can read.
pub fn read_credentials_file(path: &Path) -> Result<Credentials, StoreError> {
    let err = |reason: String| StoreError::Credentials {
        path: path.to_owned(),
        reason,
    };
    lifeboat_common::tls::check_secret_permissions(path).map_err(|e| err(e.to_string()))?;
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let c: Credentials = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    if c.access_key_id.trim().is_empty() || c.secret_access_key.trim().is_empty() {
        return Err(err("access_key_id or secret_access_key is empty".into()));
    }
    Ok(c)
}

fn env_credentials() -> Option<Credentials> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Some(Credentials {
        access_key_id: get("AWS_ACCESS_KEY_ID")?,
        secret_access_key: get("AWS_SECRET_ACCESS_KEY")?,
        session_token: get("AWS_SESSION_TOKEN"),
    })
}

/// The credentials `cfg` names: its file, else the environment.
pub fn credentials(cfg: &S3Config) -> Result<Credentials, StoreError> {
    match &cfg.credentials_file {
        Some(p) => read_credentials_file(p),
        None => env_credentials().ok_or_else(|| StoreError::NoCredentials {
            store: cfg.describe(),
        }),
    }
}

/// The retry policy for every S3 request.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    }
}

/// Builds the client for `cfg` with explicit credentials (no network access yet).
pub fn open_with(cfg: &S3Config, creds: Credentials) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let options = ClientOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_allow_http(cfg.allow_http);
    let mut b = AmazonS3Builder::new()
        .with_region(&cfg.region)
        .with_bucket_name(&cfg.bucket)
        .with_access_key_id(creds.access_key_id)
        .with_secret_access_key(creds.secret_access_key)
        .with_virtual_hosted_style_request(cfg.virtual_hosted_style)
        .with_client_options(options)
        .with_retry(retry_config())
        .with_conditional_put(match cfg.conditional_put {
            ConditionalPut::Disabled => S3ConditionalPut::Disabled,
            ConditionalPut::Auto | ConditionalPut::Etag => S3ConditionalPut::ETagMatch,
        });
    if let Some(t) = creds.session_token {
        b = b.with_token(t);
    }
    if let Some(e) = &cfg.endpoint {
        b = b.with_endpoint(e);
    }
    let s3 = b.build().map_err(|e| StoreError::S3Setup {
        store: cfg.describe(),
        message: e.to_string(),
    })?;
    Ok(match &cfg.prefix {
        Some(p) => Arc::new(PrefixStore::new(s3, p.as_str())),
        None => Arc::new(s3),
    })
}

/// Builds the client for `cfg`, loading its credentials.
pub fn open(cfg: &S3Config) -> Result<Arc<dyn ObjectStore>, StoreError> {
    open_with(cfg, credentials(cfg)?)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn cfg(file: Option<std::path::PathBuf>) -> S3Config {
        S3Config {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: "us-east-1".into(),
            bucket: "b".into(),
            prefix: Some("p".into()),
            virtual_hosted_style: false,
            allow_http: true,
            credentials_file: file,
            conditional_put: ConditionalPut::Auto,
        }
    }

    #[test]
    fn credentials_file_is_read_and_permissions_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s3.credentials");
        std::fs::write(
            &p,
            "access_key_id = \"AK\"\nsecret_access_key = \"very-secret\"\n",
        )
        .expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = credentials(&cfg(Some(p.clone()))).expect_err("0644");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = credentials(&cfg(Some(p.clone()))).expect("read");
        assert_eq!(c.access_key_id, "AK");
        assert!(!format!("{c:?}").contains("very-secret"), "Debug redacts");
        std::fs::write(&p, "access_key_id = \"AK\"\n").expect("write");
        let e = credentials(&cfg(Some(p))).expect_err("missing secret");
        assert!(e.to_string().contains("secret_access_key"), "{e}");
        assert!(open(&cfg(Some(dir.path().join("nope")))).is_err());
    }

    #[test]
    fn client_builds_without_network() {
        let c = Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "SK".into(),
            session_token: None,
        };
        let s = open_with(&cfg(None), c).expect("build");
        assert!(s.to_string().contains('b'), "{s}");
    }
}
