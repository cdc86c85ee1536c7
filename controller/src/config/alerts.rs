//! `[alerts]` in `controller.toml`: how often the alert worker judges the fleet, and the webhook
//! it posts to.
//!
//! ```toml
//! [alerts]
//! interval = "30s"                          # default 30s
//! webhook_url = "https://hooks.example/lifeboat"
//! webhook_secret_file = "webhook.secret"    # shared HMAC secret, mode 0600
//! ```
//!
//! Without the section the worker still runs (alerts are logged and their state persisted); a
//! `webhook_url` needs a `webhook_secret_file`, which is read once at load time and must not be
//! readable by group or others.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_common::clock::parse_duration;
use lifeboat_common::config::{ConfigError, resolve};
use serde::Deserialize;

/// Default interval of the alert worker.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertsFile {
    interval: Option<String>,
    webhook_url: Option<String>,
    webhook_secret_file: Option<PathBuf>,
}

/// A webhook target and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Validated `[alerts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    pub interval: Duration,
    pub webhook: Option<WebhookSettings>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            interval: DEFAULT_INTERVAL,
            webhook: None,
        }
    }
}

impl AlertsFile {
    pub(super) fn validate(self, path: &Path) -> Result<AlertSettings, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let interval = match &self.interval {
            None => DEFAULT_INTERVAL,
            Some(s) => parse_duration(s).map_err(|e| invalid(format!("[alerts] interval: {e}")))?,
        };
        if interval < Duration::from_secs(1) {
            return Err(invalid("[alerts] interval must be at least 1s".into()));
        }
        let webhook = match (self.webhook_url, self.webhook_secret_file) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(
                    "[alerts] webhook_secret_file is set but webhook_url is not".into(),
                ));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "[alerts] webhook_url needs webhook_secret_file (the HMAC signing secret)"
                        .into(),
                ));
            }
            (Some(url), Some(file)) => {
                let file = resolve(path, &file);
                Some(WebhookSettings {
                    url,
                    secret: read_secret(&file).map_err(invalid)?,
                })
            }
        };
        Ok(AlertSettings { interval, webhook })
    }
}

fn read_secret(file: &Path) -> Result<Vec<u8>, String> {
    lifeboat_common::tls::check_secret_permissions(file)
        .map_err(|e| format!("[alerts] webhook_secret_file: {e}"))?;
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "[alerts] cannot read webhook_secret_file {}: {e}",
            file.display()
        )
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!(
            "[alerts] webhook_secret_file {} is empty",
            file.display()
        ));
    }
    Ok(secret.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path, alerts: &str) -> Result<AlertSettings, ConfigError> {
        let path = dir.join("controller.toml");
        let f: AlertsFile = toml::from_str(alerts).expect("toml");
        f.validate(&path)
    }

    #[test]
    fn alerts_default_and_webhook_needs_a_private_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            load(dir.path(), "").expect("empty"),
            AlertSettings::default()
        );
        let e = load(dir.path(), "webhook_url = \"http://x/\"").expect_err("no secret");
        assert!(e.to_string().contains("webhook_secret_file"), "{e}");
        let secret = dir.path().join("s");
        std::fs::write(&secret, "k3y\n").expect("write");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let both = "webhook_url = \"http://x/\"\nwebhook_secret_file = \"s\"\ninterval = \"5s\"";
        assert!(
            load(dir.path(), both).is_err(),
            "world-readable secret refused"
        );
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let s = load(dir.path(), both).expect("valid");
        assert_eq!(s.interval, Duration::from_secs(5));
        let w = s.webhook.expect("webhook");
        assert_eq!(w.secret, b"k3y");
        assert!(
            !format!("{w:?}").contains("k3y"),
            "secret redacted in Debug"
        );
    }
}
