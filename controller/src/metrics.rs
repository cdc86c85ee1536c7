//! The Prometheus endpoint: plain HTTP on its own listener (`metrics_listen`, default
//! 127.0.0.1:9464, localhost so that only the host's scraper sees it), serving `GET /metrics`
//! in the text exposition format. The figures come from [`crate::replication::status`] and
//! [`crate::fleet::status`], the same code behind `lifeboatctl replication status` and
//! `lifeboatctl status`, so they agree.
//!
//! The server is deliberately tiny (no HTTP library): one request per connection, at most
//! [`MAX_REQUEST_BYTES`] of request head read within [`REQUEST_TIMEOUT`], then the answer and
//! close. Anything but `GET /metrics` gets 404 (405 for other methods).

use std::time::Duration;

use lifeboat_common::clock::now_unix_ms;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::catalog::Catalog;
use crate::replication::status;

/// Default address of the metrics listener.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// The longest request head read.
pub const MAX_REQUEST_BYTES: usize = 8192;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoint reads.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub catalog: Catalog,
    /// The secondary's location; `None` without a `[secondary]` store.
    pub secondary: Option<String>,
    /// Scrub totals since start-up ([`crate::replication::scrub`]).
    pub scrub: std::sync::Arc<crate::replication::scrub::ScrubCounters>,
    /// Which agents are connected (the control-stream registry), for `lifeboat_agent_connected`.
    pub presence: std::sync::Arc<dyn crate::fleet::status::Presence>,
    /// Committed bytes and snapshots since start-up ([`crate::fleet::counters`]).
    pub counters: std::sync::Arc<crate::fleet::counters::BackupCounters>,
    /// Restore streams reading and waiting ([`crate::read_limit`]).
    pub reads: std::sync::Arc<crate::read_limit::ReadLimiter>,
}

impl Metrics {
    /// The exposition text.
    pub async fn render(&self) -> Result<String, crate::catalog::CatalogError> {
        let r = status::report(&self.catalog, self.secondary.clone(), now_unix_ms()).await?;
        let mut text = status::prometheus_text(&r);
        if r.configured {
            text.push_str(&self.scrub.prometheus_text());
        }
        let (now, secondary, presence) = (
            crate::fleet::clock::now_ms(),
            r.configured,
            self.presence.clone(),
        );
        let fleet = self
            .catalog
            .run(move |c| crate::fleet::status::collect(c, now, secondary, presence.as_ref()))
            .await?;
        text.push_str(&crate::fleet::status::prometheus_text(&fleet));
        text.push_str(&self.counters.prometheus_text());
        text.push_str(&self.reads.prometheus_text());
        Ok(text)
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        if let Ok(addr) = listener.local_addr() {
            info!(addr = %addr, "metrics serving");
        }
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((tcp, _)) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.answer(tcp).await {
                            debug!(error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn answer(&self, mut tcp: TcpStream) -> std::io::Result<()> {
        let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut tcp))
            .await
            .map_err(|_| std::io::Error::other("request timed out"))??;
        let line = head.lines().next().unwrap_or("");
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (code, body) = match (method, target) {
            ("GET", "/metrics") => match self.render().await {
                Ok(text) => ("200 OK", text),
                Err(e) => {
                    warn!(error = %e, "metrics unavailable");
                    ("500 Internal Server Error", format!("catalog error: {e}\n"))
                }
            },
            ("GET", _) => ("404 Not Found", "only /metrics is served\n".to_owned()),
            _ => ("405 Method Not Allowed", "only GET /metrics\n".to_owned()),
        };
        let resp = format!(
            "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(resp.as_bytes()).await?;
        tcp.shutdown().await
    }
}

/// Reads until the end of the request head (or [`MAX_REQUEST_BYTES`]).
async fn read_head(tcp: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while buf.len() < MAX_REQUEST_BYTES && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_404s_elsewhere() {
        let catalog = Catalog::open_in_memory().expect("catalog");
        let m = Metrics {
            catalog,
            secondary: Some("directory /x".into()),
            scrub: Default::default(),
            presence: std::sync::Arc::new(crate::fleet::status::NoPresence),
            counters: std::sync::Arc::default(),
            reads: std::sync::Arc::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let task = tokio::spawn(m.serve(listener, token.clone()));
        let text = get(addr, "/metrics").await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.contains("lifeboat_replication_pending_objects 0\n"),
            "{text}"
        );
        assert!(
            text.contains("lifeboat_replication_lag_seconds 0.000\n"),
            "{text}"
        );
        assert!(
            text.contains("lifeboat_replication_scrub_damaged_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lifeboat_rpo_objective_seconds gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("lifeboat_restore_reads_waiting 0\n"),
            "{text}"
        );
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
        token.cancel();
        task.await.expect("stops");
    }
}
