//! The `[store]` table of `controller.toml`: where the controller keeps its objects.
//!
//! ```toml
//! [store]
//! kind = "local"                  # a directory on this host, fsync'd after every write
//! path = "objects"
//! ```
//!
//! ```toml
//! [store]
//! kind = "s3"                      # S3-compatible: AWS S3, OCI Object Storage, MinIO, SeaweedFS
//! endpoint = "https://ns.compat.objectstorage.eu-frankfurt-1.oraclecloud.com"  # omit for AWS
//! region = "eu-frankfurt-1"
//! bucket = "lifeboat"
//! prefix = "dr-1"                  # optional key prefix (one controller per prefix)
//! virtual_hosted_style = false     # path-style requests (OCI needs them)
//! allow_http = false               # plain-HTTP endpoints only for tests
//! credentials_file = "s3.credentials"  # TOML: access_key_id, secret_access_key (mode 0600)
//! conditional_put = "auto"         # "auto" (probe at start-up) | "etag" | "disabled"
//! ```
//!
//! Secrets are never inline: `access_key_id` / `secret_access_key` in `[store]` are rejected with
//! an error that says where they belong. Without `credentials_file` the standard environment
//! variables `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and optionally `AWS_SESSION_TOKEN`)
//! are used; they are read when the store is opened ([`crate::store::s3`]), not here.

use std::path::{Path, PathBuf};

use lifeboat_common::config::{ConfigError, resolve};
use serde::Deserialize;

/// The raw `[store]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoreFile {
    kind: String,
    path: Option<PathBuf>,
    endpoint: Option<String>,
    region: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    virtual_hosted_style: Option<bool>,
    allow_http: Option<bool>,
    credentials_file: Option<PathBuf>,
    conditional_put: Option<String>,
    // Accepted by the parser only to be refused with a clear message.
    access_key_id: Option<toml::Value>,
    secret_access_key: Option<toml::Value>,
    session_token: Option<toml::Value>,
}

/// How puts that must not overwrite are made on an S3 store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConditionalPut {
    /// Probe the store at start-up: use `If-None-Match: *` if it is honoured, else HEAD + put.
    #[default]
    Auto,
    /// Always send `If-None-Match: *` (start-up fails if the probe shows it is ignored).
    Etag,
    /// Never send it: HEAD first, then a plain put.
    Disabled,
}

impl ConditionalPut {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionalPut::Auto => "auto",
            ConditionalPut::Etag => "etag",
            ConditionalPut::Disabled => "disabled",
        }
    }
}

/// A validated `[store] kind = "s3"` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `https://host[:port]`; `None` for AWS (derived from the region).
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; `None` for the bucket root.
    pub prefix: Option<String>,
    pub virtual_hosted_style: bool,
    pub allow_http: bool,
    /// Resolved path of the credentials file; `None` means the AWS_* environment variables.
    pub credentials_file: Option<PathBuf>,
    pub conditional_put: ConditionalPut,
}

impl S3Config {
    /// A description naming endpoint and bucket, for errors and logs (no secrets).
    pub fn describe(&self) -> String {
        let endpoint = self.endpoint.as_deref().unwrap_or("AWS S3");
        match &self.prefix {
            Some(p) => format!("bucket {:?} prefix {p:?} at {endpoint}", self.bucket),
            None => format!("bucket {:?} at {endpoint}", self.bucket),
        }
    }
}

/// Where the controller keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// A local directory (fsync'd after every write).
    Local { path: PathBuf },
    /// An S3-compatible bucket.
    S3(S3Config),
}

fn invalid(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl StoreFile {
    /// Validates the table of the config file at `path`.
    pub(super) fn validate(self, path: &Path) -> Result<StoreConfig, ConfigError> {
        for (name, v) in [
            ("access_key_id", &self.access_key_id),
            ("secret_access_key", &self.secret_access_key),
            ("session_token", &self.session_token),
        ] {
            if v.is_some() {
                return Err(invalid(
                    path,
                    format!(
                        "[store] {name} must not be written in controller.toml: put access_key_id and \
                         secret_access_key in a file named by credentials_file = \"s3.credentials\" \
                         (mode 0600), or set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                    ),
                ));
            }
        }
        match self.kind.as_str() {
            "local" => self.local(path),
            "s3" => self.s3(path).map(StoreConfig::S3),
            other => Err(invalid(
                path,
                format!("[store] kind = {other:?} is not supported (use \"local\" or \"s3\")"),
            )),
        }
    }

    fn local(self, path: &Path) -> Result<StoreConfig, ConfigError> {
        let s3_only = [
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("bucket", self.bucket.is_some()),
            ("prefix", self.prefix.is_some()),
            ("virtual_hosted_style", self.virtual_hosted_style.is_some()),
            ("allow_http", self.allow_http.is_some()),
            ("credentials_file", self.credentials_file.is_some()),
            ("conditional_put", self.conditional_put.is_some()),
        ];
        if let Some((name, _)) = s3_only.iter().find(|(_, set)| *set) {
            return Err(invalid(
                path,
                format!("[store] {name} only applies to kind = \"s3\" (this store is \"local\")"),
            ));
        }
        let p = self
            .path
            .ok_or_else(|| invalid(path, "[store] kind = \"local\" needs path = \"DIR\""))?;
        Ok(StoreConfig::Local {
            path: resolve(path, &p),
        })
    }

    fn s3(self, path: &Path) -> Result<S3Config, ConfigError> {
        if self.path.is_some() {
            return Err(invalid(
                path,
                "[store] path only applies to kind = \"local\" (for \"s3\" use bucket and prefix)",
            ));
        }
        let required = |v: Option<String>, name: &str, example: &str| {
            v.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                invalid(
                    path,
                    format!("[store] kind = \"s3\" needs {name} = \"{example}\""),
                )
            })
        };
        let region = required(self.region, "region", "eu-frankfurt-1")?;
        let bucket = required(self.bucket, "bucket", "lifeboat")?;
        let allow_http = self.allow_http.unwrap_or(false);
        if let Some(e) = &self.endpoint {
            validate_endpoint(path, e, allow_http)?;
        }
        let conditional_put = match self.conditional_put.as_deref() {
            None | Some("auto") => ConditionalPut::Auto,
            Some("etag") => ConditionalPut::Etag,
            Some("disabled") => ConditionalPut::Disabled,
            Some(other) => {
                return Err(invalid(
                    path,
                    format!(
                        "[store] conditional_put = {other:?} is not one of \"auto\", \"etag\", \"disabled\""
                    ),
                ));
            }
        };
        Ok(S3Config {
            endpoint: self.endpoint.map(|e| e.trim_end_matches('/').to_owned()),
            region,
            bucket,
            prefix: validate_prefix(path, self.prefix)?,
            virtual_hosted_style: self.virtual_hosted_style.unwrap_or(false),
            allow_http,
            credentials_file: self.credentials_file.map(|p| resolve(path, &p)),
            conditional_put,
        })
    }
}

fn validate_endpoint(path: &Path, e: &str, allow_http: bool) -> Result<(), ConfigError> {
    let rest = if let Some(r) = e.strip_prefix("https://") {
        r
    } else if let Some(r) = e.strip_prefix("http://") {
        if !allow_http {
            return Err(invalid(
                path,
                format!(
                    "[store] endpoint {e:?} is plain HTTP: use https:// (or set allow_http = true, for tests only)"
                ),
            ));
        }
        r
    } else {
        return Err(invalid(
            path,
            format!("[store] endpoint {e:?} must start with https://"),
        ));
    };
    if rest.trim_end_matches('/').is_empty() || rest.contains(char::is_whitespace) {
        return Err(invalid(
            path,
            format!("[store] endpoint {e:?} has no valid host"),
        ));
    }
    Ok(())
}

fn validate_prefix(path: &Path, prefix: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(p) = prefix else { return Ok(None) };
    let p = p.trim_matches('/');
    if p.is_empty() {
        return Ok(None);
    }
    let ok = p.split('/').all(|part| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    });
    if !ok {
        return Err(invalid(
            path,
            format!(
                "[store] prefix {p:?} is invalid: use segments of letters, digits, '-', '_', '.' separated by '/'"
            ),
        ));
    }
    Ok(Some(p.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ControllerConfig, controller_toml};

    fn load_with_store(store: &str) -> Result<ControllerConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("controller.toml");
        let text = controller_toml("127.0.0.1:9");
        let head = &text[..text.find("[store]").expect("store table")];
        std::fs::write(&p, format!("{head}[store]\n{store}\n")).expect("write");
        ControllerConfig::load(&p)
    }

    #[test]
    fn s3_store_parses_with_defaults() {
        let c = load_with_store(
            "kind = \"s3\"\nendpoint = \"http://127.0.0.1:9000/\"\nregion = \"r\"\nbucket = \"b\"\n\
             prefix = \"/dr-1/\"\nallow_http = true\ncredentials_file = \"s3.credentials\"",
        )
        .expect("parse");
        let StoreConfig::S3(s3) = c.store else {
            panic!("not s3: {:?}", c.store)
        };
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.prefix.as_deref(), Some("dr-1"));
        assert!(!s3.virtual_hosted_style);
        assert_eq!(s3.conditional_put, ConditionalPut::Auto);
        assert!(
            s3.credentials_file
                .as_deref()
                .is_some_and(|p| p.is_absolute() && p.ends_with("s3.credentials"))
        );
        assert!(
            s3.describe().contains("127.0.0.1:9000"),
            "{}",
            s3.describe()
        );
    }

    #[test]
    fn bad_s3_stores_are_clear_errors() {
        let cases = [
            (
                "kind = \"s3\"\nregion = \"r\"\nbucket = \"b\"\naccess_key_id = \"AKIA\"",
                "credentials_file",
            ),
            (
                "kind = \"s3\"\nregion = \"r\"\nbucket = \"b\"\nsecret_access_key = \"x\"",
                "AWS_SECRET_ACCESS_KEY",
            ),
            ("kind = \"s3\"\nregion = \"r\"", "bucket"),
            ("kind = \"s3\"\nbucket = \"b\"", "region"),
            (
                "kind = \"s3\"\nregion = \"r\"\nbucket = \"b\"\nendpoint = \"http://x\"",
                "allow_http",
            ),
            (
                "kind = \"s3\"\nregion = \"r\"\nbucket = \"b\"\nendpoint = \"ftp://x\"",
                "https://",
            ),
            (
                "kind = \"s3\"\nregion = \"r\"\nbucket = \"b\"\nprefix = \"a/../b\"",
                "prefix",
            ),
            (
                "kind = \"s3\"\nregion = \"r\"\nbucket = \"b\"\nconditional_put = \"maybe\"",
                "maybe",
            ),
            (
                "kind = \"s3\"\nregion = \"r\"\nbucket = \"b\"\npath = \"objects\"",
                "path",
            ),
            (
                "kind = \"local\"\npath = \"objects\"\nbucket = \"b\"",
                "only applies",
            ),
        ];
        for (store, needle) in cases {
            let e = load_with_store(store).expect_err(store).to_string();
            assert!(e.contains(needle), "{store}: {e}");
        }
    }

    #[test]
    fn example_configs_in_deploy_parse() {
        // The runtime value, as in common/tests/golden.rs.
        let dir =
            std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
        let deploy = Path::new(&dir).join("../deploy");
        for (name, virtual_hosted) in [
            ("controller.oci.toml", false),
            ("controller.aws.toml", true),
        ] {
            let c = ControllerConfig::load(&deploy.join(name)).expect(name);
            let StoreConfig::S3(s3) = c.store else {
                panic!("{name} is not an s3 store")
            };
            assert_eq!(s3.virtual_hosted_style, virtual_hosted, "{name}");
            assert!(!s3.allow_http, "{name}");
            assert!(s3.credentials_file.is_some(), "{name}");
        }
    }
}
