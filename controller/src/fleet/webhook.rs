//! Alert webhooks: one JSON POST per alert, signed, retried with exponential backoff.
//!
//! Signature (so a receiver can check the sender and refuse replays):
//! - `X-Lifeboat-Timestamp: <unix seconds>`;
//! - `X-Lifeboat-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
//!
//! The receiver recomputes the HMAC over the exact bytes received and should refuse a timestamp
//! older than a few minutes. A delivery is retried on a transport error or a non-2xx answer, at
//! most [`DEFAULT_ATTEMPTS`] times with delays doubling from [`DEFAULT_BACKOFF`] (capped at
//! [`MAX_BACKOFF`]); each attempt is re-signed with a fresh timestamp. A delivery that still
//! fails is logged (the alert itself was already logged and persisted, so a restart does not
//! repeat it: delivery is at most once per alert after the retries).

use std::time::Duration;

use aws_lc_rs::hmac;
use serde::Serialize;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::alerts::Alert;

/// Attempts per alert.
pub const DEFAULT_ATTEMPTS: u32 = 6;
/// Delay before the second attempt; doubled for each further one.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// The longest delay between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Timeout of one POST.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Version of the JSON body. Do not change the meaning of a shipped version.
pub const PAYLOAD_FORMAT: u32 = 1;

#[derive(Debug, Error)]
pub enum WebhookError {
    #[error("invalid webhook URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
    #[error("webhook {url} failed after {attempts} attempts: {last}")]
    Exhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("webhook delivery cancelled by shutdown")]
    Cancelled,
}

/// The JSON body of one alert.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    pub format: u32,
    /// "firing" or "resolved".
    pub status: &'static str,
    #[serde(flatten)]
    pub alert: &'a Alert,
}

/// The body posted for `alert`.
pub fn body(alert: &Alert) -> Vec<u8> {
    let p = Payload {
        format: PAYLOAD_FORMAT,
        status: if alert.firing { "firing" } else { "resolved" },
        alert,
    };
    // A struct of strings, integers and enums always serializes.
    serde_json::to_vec(&p).unwrap_or_default()
}

/// `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

/// A configured webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: reqwest::Url,
    secret: Vec<u8>,
    client: reqwest::Client,
    pub attempts: u32,
    pub backoff: Duration,
}

impl Webhook {
    pub fn new(url: &str, secret: Vec<u8>) -> Result<Webhook, WebhookError> {
        let bad = |reason: String| WebhookError::Url {
            url: url.to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https".into()));
        }
        lifeboat_common::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Webhook {
            url: parsed,
            secret,
            client,
            attempts: DEFAULT_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
        })
    }

    /// The URL without credentials or query (for logs).
    pub fn display_url(&self) -> String {
        format!(
            "{}://{}{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or(""),
            self.url.path()
        )
    }

    async fn attempt(&self, body: &[u8]) -> Result<(), String> {
        let ts = (lifeboat_common::clock::now_unix_ms() / 1000).to_string();
        let resp = self
            .client
            .post(self.url.clone())
            .header("Content-Type", "application/json")
            .header("X-Lifeboat-Timestamp", &ts)
            .header("X-Lifeboat-Signature", signature(&self.secret, &ts, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", resp.status()))
        }
    }

    /// Posts `alert`, retrying with backoff; returns the attempts used.
    pub async fn deliver(
        &self,
        alert: &Alert,
        cancel: &CancellationToken,
    ) -> Result<u32, WebhookError> {
        let body = body(alert);
        let mut delay = self.backoff;
        let mut last = String::new();
        for n in 1..=self.attempts.max(1) {
            match self.attempt(&body).await {
                Ok(()) => {
                    info!(url = %self.display_url(), agent = %alert.agent, source = %alert.source, attempts = n, "alert webhook delivered");
                    return Ok(n);
                }
                Err(e) => {
                    warn!(url = %self.display_url(), attempt = n, error = %e, "alert webhook attempt failed");
                    last = e;
                }
            }
            if n < self.attempts {
                tokio::select! {
                    _ = cancel.cancelled() => return Err(WebhookError::Cancelled),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
        Err(WebhookError::Exhausted {
            url: self.display_url(),
            attempts: self.attempts,
            last,
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "testing"))]
pub mod receiver;
