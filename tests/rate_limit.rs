//! Rate limits per client IP (GCRA), trusted proxies, load shedding, request limits.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{Behaviour, FakeOpenAi, TestApp};
use serde_json::json;

async fn limited(burst: u32, trusted: &str) -> TestApp {
    let trusted = trusted.to_owned();
    TestApp::echo(move |c| {
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = burst;
        c.trusted_proxies = trusted
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
    })
    .await
}

async fn chat(app: &TestApp, xff: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .post(format!("{}/chat", app.url))
        .json(&json!({"message": "hi"}));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_burst_of_20_admits_exactly_the_burst() {
    let app = limited(5, "").await;
    let calls = (0..20).map(|_| chat(&app, None));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<_> = results.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(ok, 5);
    assert_eq!(limited.len(), 15);
    let h = limited[0].headers();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(h["ratelimit-limit"], "5");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert!(h.contains_key("ratelimit-reset"));
    let ok_headers = results
        .iter()
        .find(|r| r.status() == 200)
        .unwrap()
        .headers();
    assert_eq!(ok_headers["ratelimit-limit"], "5");

    // Liveness and scrapes are never limited; `/ready`, which checks the store and the
    // upstream, is limited like any request.
    for path in ["/health", "/metrics"] {
        let res = app
            .client
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    let (status, _) = app.get("/ready").await;
    assert_eq!(status, 429, "/ready");
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_buys_nothing() {
    let app = limited(2, "").await;
    for i in 0..2 {
        assert_eq!(chat(&app, Some(&format!("9.9.9.{i}"))).await.status(), 200);
    }
    for i in 2..6 {
        assert_eq!(chat(&app, Some(&format!("9.9.9.{i}"))).await.status(), 429);
    }
}

#[tokio::test]
async fn a_trusted_proxy_gives_distinct_clients_distinct_budgets() {
    let app = limited(2, "127.0.0.1/32").await;
    for client in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        for _ in 0..2 {
            assert_eq!(chat(&app, Some(client)).await.status(), 200, "{client}");
        }
        assert_eq!(chat(&app, Some(client)).await.status(), 429, "{client}");
    }
    // A spoofed left-most entry does not help: the rightmost untrusted hop counts.
    assert_eq!(chat(&app, Some("7.7.7.7, 1.1.1.1")).await.status(), 429);
}

#[tokio::test]
async fn websocket_messages_count_against_the_limit() {
    let app = limited(2, "").await;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(app.ws_url("/ws/limited"))
        .await
        .unwrap();
    // The upgrade itself took one token; one message fits, the next is refused.
    let mut errors = 0;
    let mut dones = 0;
    for _ in 0..2 {
        ws.send(Message::text(json!({"message": "hi"}).to_string()))
            .await
            .unwrap();
        loop {
            let msg = ws.next().await.unwrap().unwrap();
            let Message::Text(t) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["done"] == true {
                dones += 1;
                break;
            }
            if let Some(e) = v["error"].as_str() {
                assert!(e.contains("rate limit"), "{e}");
                errors += 1;
                break;
            }
        }
    }
    assert_eq!((dones, errors), (1, 1));
}

#[tokio::test]
async fn in_flight_cap_sheds_load_with_503() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_millis(600),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |c| c.max_in_flight = 2).await;
    let calls = (0..6).map(|_| chat(&app, None));
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status() == 200).count();
    let shed: Vec<_> = results.iter().filter(|r| r.status() == 503).collect();
    assert_eq!(ok, 2);
    assert_eq!(shed.len(), 4);
    assert_eq!(shed[0].headers()["retry-after"], "1");
}

#[tokio::test]
async fn non_streaming_requests_time_out() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |c| c.request_timeout = Duration::from_millis(300)).await;
    let res = chat(&app, None).await;
    assert_eq!(res.status(), 504);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("longer than"));
}

#[tokio::test]
async fn cors_is_closed_by_default_and_configurable() {
    let closed = TestApp::echo(|_| {}).await;
    let res = closed
        .client
        .get(format!("{}/health", closed.url))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
    let open = TestApp::echo(|c| c.cors_origins = vec!["https://app.example".into()]).await;
    let res = open
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/chat", open.url))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}
