//! A tiny webhook receiver for tests (unit and end-to-end): accepts HTTP/1.1 POSTs on a bound
//! listener, checks the signature with the shared secret, answers with the next status of a
//! script (then 200), and hands each request to the test over a channel.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::signature;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: serde_json::Value,
    /// The signature header matched the HMAC of the timestamp and body under the secret.
    pub signature_valid: bool,
    pub status_sent: u16,
}

/// Serves on `listener` until the receiver of the returned channel is dropped. `script` gives
/// the statuses of the first requests (e.g. `[500]` fails the first attempt).
pub fn serve(
    listener: TcpListener,
    secret: Vec<u8>,
    script: Vec<u16>,
) -> mpsc::UnboundedReceiver<Received> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut script = script.into_iter();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            let status = script.next().unwrap_or(200);
            match answer(tcp, &secret, status).await {
                Ok(r) => {
                    if tx.send(r).is_err() {
                        break;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "test webhook receiver: bad request"),
            }
        }
    });
    rx
}

async fn answer(mut tcp: TcpStream, secret: &[u8], status: u16) -> std::io::Result<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the head ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..(head_end + len).min(buf.len())];
    let ts = header("x-lifeboat-timestamp").unwrap_or_default();
    let sig = header("x-lifeboat-signature").unwrap_or_default();
    let signature_valid = !ts.is_empty() && sig == signature(secret, &ts, body);
    let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    tcp.write_all(resp.as_bytes()).await?;
    let _ = tcp.shutdown().await;
    Ok(Received {
        body: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
        signature_valid,
        status_sent: status,
    })
}
