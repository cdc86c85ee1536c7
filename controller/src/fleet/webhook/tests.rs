use super::*;
use crate::fleet::alerts::Condition;

fn alert() -> Alert {
    Alert {
        agent: "db-01".into(),
        source: "db".into(),
        condition: Condition::RpoBreached,
        firing: true,
        detail: "newest snapshot is 960s old (objective 900s)".into(),
        at_unix_ms: 1,
    }
}

#[test]
fn signature_is_hmac_sha256_of_timestamp_dot_body() {
    // Recomputed independently over the joined message.
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
    let expected = hex::encode(hmac::sign(&key, b"123.{\"a\":1}").as_ref());
    assert_eq!(
        signature(b"Jefe", "123", b"{\"a\":1}"),
        format!("sha256={expected}")
    );
    assert_ne!(
        signature(b"Jefe", "124", b"{\"a\":1}"),
        signature(b"Jefe", "123", b"{\"a\":1}")
    );
    let v: serde_json::Value = serde_json::from_slice(&body(&alert())).expect("json");
    assert_eq!(v["status"], "firing");
    assert_eq!(v["condition"], "rpo_breached");
    assert_eq!(v["agent"], "db-01");
}

#[tokio::test]
async fn delivery_retries_until_the_receiver_accepts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut rx = receiver::serve(listener, b"s3cret".to_vec(), vec![500, 503]);
    let mut hook = Webhook::new(&format!("http://{addr}/hook"), b"s3cret".to_vec()).expect("hook");
    hook.backoff = Duration::from_millis(1);
    let attempts = hook
        .deliver(&alert(), &CancellationToken::new())
        .await
        .expect("delivered");
    assert_eq!(attempts, 3);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(rx.recv().await.expect("request"));
    }
    assert!(got.iter().all(|r| r.signature_valid), "{got:?}");
    assert_eq!(
        got.iter().map(|r| r.status_sent).collect::<Vec<_>>(),
        vec![500, 503, 200]
    );
    assert_eq!(
        got[2].body["detail"],
        "newest snapshot is 960s old (objective 900s)"
    );
    let bad = Webhook::new("ftp://x/", vec![]).expect_err("scheme");
    assert!(bad.to_string().contains("http or https"), "{bad}");
}
