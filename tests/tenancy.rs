//! "No key can hurt another": the tenancy promises of the contract over HTTP, each written
//! so that it fails on a server that does not keep it.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use agent_api::Config;
use agent_api::config::parse_api_keys;
use common::{FakeOpenAi, TestApp};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn keys(c: &mut Config) {
    c.api_keys = parse_api_keys(
        &[
            "alice=key-a".into(),
            "bob=key-b".into(),
            "mallory=key-m".into(),
        ],
        "API_KEYS",
    )
    .unwrap();
}

async fn call(
    app: &TestApp,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let url = format!("{}{path}", app.url);
    let req = match method {
        "GET" => app.client.get(url),
        "DELETE" => app.client.delete(url),
        _ => app.client.post(url),
    };
    let req = req.header("x-api-key", key);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    req.send().await.unwrap()
}

async fn json_of(res: reqwest::Response) -> (u16, Value) {
    common::answer(res).await
}

#[tokio::test]
async fn the_per_key_limit_holds_on_every_keyed_route() {
    let app = TestApp::echo(|c| {
        keys(c);
        c.rate_limit_per_key_per_minute = Some(1);
        c.rate_limit_burst = 5;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let res = call(
            &app,
            "key-a",
            "POST",
            "/chat",
            Some(json!({"message": "hi"})),
        )
        .await;
        if res.status() == 429 {
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1);
        }
        statuses.push(res.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 25);
    // Other routes of the same key are limited too; another key is not.
    assert_eq!(
        call(&app, "key-a", "GET", "/conversations", None)
            .await
            .status(),
        429
    );
    assert_eq!(
        call(&app, "key-a", "GET", "/v1/models", None)
            .await
            .status(),
        429
    );
    assert_eq!(
        call(&app, "key-b", "GET", "/conversations", None)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn failed_first_turns_of_one_key_evict_nothing_of_another() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| {
        keys(c);
        c.max_conversations = 50;
    })
    .await;
    for i in 0..10 {
        let body = json!({"message": "keep", "conversation_id": format!("mine-{i}")});
        assert_eq!(
            call(&app, "key-a", "POST", "/chat", Some(body))
                .await
                .status(),
            200
        );
    }
    fake.set(|b| b.status = 500);
    for i in 0..50 {
        let body = json!({"message": "x", "conversation_id": format!("junk-{i}")});
        assert_eq!(
            call(&app, "key-m", "POST", "/chat", Some(body))
                .await
                .status(),
            502
        );
    }
    for i in 0..10 {
        let res = call(
            &app,
            "key-a",
            "GET",
            &format!("/conversation/mine-{i}"),
            None,
        )
        .await;
        assert_eq!(
            res.status(),
            200,
            "mine-{i} was lost to another key's failures"
        );
    }
    let (_, list) = json_of(call(&app, "key-m", "GET", "/conversations", None).await).await;
    assert_eq!(list["count"], 0, "failed first turns leave nothing");
    assert_eq!(app.state.conversations.count().await.unwrap(), 10);
}

#[tokio::test]
async fn a_key_at_its_quota_evicts_its_own_and_nobody_elses() {
    let app = TestApp::echo(|c| {
        keys(c);
        c.max_conversations_per_key = 3;
    })
    .await;
    for i in 0..2 {
        let body = json!({"message": "hi", "conversation_id": format!("a{i}")});
        assert_eq!(
            call(&app, "key-a", "POST", "/chat", Some(body))
                .await
                .status(),
            200
        );
    }
    for i in 0..20 {
        let body = json!({"message": "hi", "conversation_id": format!("m{i}")});
        assert_eq!(
            call(&app, "key-m", "POST", "/chat", Some(body))
                .await
                .status(),
            200
        );
    }
    let (_, mine) = json_of(call(&app, "key-m", "GET", "/conversations", None).await).await;
    assert_eq!(mine["count"], 3);
    assert_eq!(mine["conversations"][0]["conversation_id"], "m19");
    for i in 0..2 {
        let res = call(&app, "key-a", "GET", &format!("/conversation/a{i}"), None).await;
        assert_eq!(res.status(), 200);
    }
}

#[tokio::test]
async fn conversation_ids_are_per_key_and_reveal_nothing() {
    let app = TestApp::echo(keys).await;
    let body = |m: &str| Some(json!({"message": m, "conversation_id": "support-1"}));
    assert_eq!(
        call(&app, "key-a", "POST", "/chat", body("alice here"))
            .await
            .status(),
        200
    );
    // Squatting is impossible: bob's support-1 is his own, and alice's stays hers.
    assert_eq!(
        call(&app, "key-m", "POST", "/chat", body("squat"))
            .await
            .status(),
        200
    );
    let (s, theirs) =
        json_of(call(&app, "key-a", "GET", "/conversation/support-1", None).await).await;
    assert_eq!(s, 200);
    assert_eq!(theirs["messages"][1]["content"], "alice here");
    assert_eq!(theirs["message_count"], 3);
    // An id bob never used and one only alice has answer alike: existence is not revealed.
    let (s1, b1) = json_of(call(&app, "key-b", "GET", "/conversation/support-1", None).await).await;
    let (s2, b2) =
        json_of(call(&app, "key-b", "GET", "/conversation/never-made", None).await).await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(b1, b2);
    assert_eq!(
        call(&app, "key-b", "DELETE", "/conversation/support-1", None)
            .await
            .status(),
        404
    );
    assert_eq!(
        call(&app, "key-a", "GET", "/conversation/support-1", None)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn models_and_output_tokens_are_the_operators_choice() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| c.max_output_tokens = 2000).await;
    let (s, body) = app
        .post(
            "/chat",
            json!({"message": "hi", "model": "gpt-4-32k-expensive"}),
        )
        .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "model"]));
    let (s, body) = app
        .post("/task", json!({"prompt": "hi", "model": "o1-pro"}))
        .await;
    assert_eq!(s, 422, "{body}");
    let (s, body) = app
        .post("/chat", json!({"message": "hi", "max_tokens": 3000}))
        .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "max_tokens"]));

    let msgs = json!([{"role": "user", "content": "hi"}]);
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            json!({"model": "o1-pro", "messages": msgs}),
        )
        .await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    let (s, body) = app
        .post(
            "/v1/chat/completions",
            json!({"messages": msgs, "max_tokens": 1_000_000}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["param"], "max_tokens");
    let (s, body) = app
        .post("/v1/chat/completions", json!({"messages": msgs, "n": 8}))
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["param"], "n");
    // None of them reached the upstream; the default model and the tutorial default of
    // min(1000, MAX_OUTPUT_TOKENS) do.
    assert!(fake.requests().is_empty());
    assert_eq!(app.post("/chat", json!({"message": "hi"})).await.0, 200);
    assert_eq!(fake.requests()[0]["max_tokens"], 1000);

    let any = TestApp::with_fake(&fake, |c| {
        c.any_model = true;
        c.max_output_tokens = 500;
    })
    .await;
    assert_eq!(
        any.post("/chat", json!({"message": "hi", "model": "anything"}))
            .await
            .0,
        200
    );
    assert_eq!(fake.requests()[1]["max_tokens"], 500);
}

#[tokio::test]
async fn forwarded_for_with_ports_or_garbage_opens_no_new_buckets() {
    let app = TestApp::echo(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = 2;
    })
    .await;
    let send = |xff: String| {
        let req = app
            .client
            .get(format!("{}/conversations", app.url))
            .header("x-forwarded-for", xff);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // A load balancer that writes ports: the client is 1.2.3.4 every time, whatever is spoofed
    // to its left.
    let mut got = Vec::new();
    for i in 0..4 {
        got.push(send(format!("10.9.9.{i}, 1.2.3.4:5678")).await);
    }
    assert_eq!(got, [200, 200, 429, 429]);
    // `unknown` ends the walk at the proxy that passed it on (127.0.0.1): one bucket.
    let mut got = Vec::new();
    for i in 0..4 {
        got.push(send(format!("10.8.8.{i}, unknown")).await);
    }
    assert_eq!(got, [200, 200, 429, 429]);
}

#[tokio::test]
async fn ready_is_cached_and_quotes_no_upstream_text() {
    let fake = FakeOpenAi::start().await;
    fake.set(|b| b.models_status = 500);
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let calls: Vec<_> = (0..20).map(|_| app.get("/ready")).collect();
    for (status, body) in futures::future::join_all(calls).await {
        assert_eq!(status, 503);
        assert_eq!(
            body,
            json!({"status": "not_ready", "store": "ok", "provider": "unavailable"})
        );
        assert!(!body.to_string().contains("secret-internal-detail"));
    }
    assert_eq!(fake.models_calls(), 1, "20 probes, one upstream check");
}

#[tokio::test]
async fn health_never_waits_on_the_store() {
    let app = TestApp::echo(|c| {
        // Nothing listens there: every Redis call waits for its connect timeout.
        c.store = agent_api::config::StoreKind::Redis("redis://127.0.0.1:1/0".into());
    })
    .await;
    let started = std::time::Instant::now();
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(body["active_conversations"].is_null(), "{body}");
}

#[tokio::test]
async fn open_mode_refuses_non_json_bodies_and_foreign_hosts() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    // What any web page may send without a preflight.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let res = app
            .client
            .post(format!("{}/chat", app.url))
            .header("content-type", ct)
            .body(r#"{"message": "spend the key"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 415, "{ct}");
    }
    // DNS rebinding: a page on evil.example resolved to 127.0.0.1.
    let res = app
        .client
        .post(format!("{}/chat", app.url))
        .header("host", "evil.example:8000")
        .json(&json!({"message": "spend the key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(fake.requests().is_empty(), "nothing reached the upstream");
    // No Content-Type at all is read as JSON, and charsets and +json are JSON.
    let res = app
        .client
        .post(format!("{}/chat", app.url))
        .body(r#"{"message": "curl without -H"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .post(format!("{}/chat", app.url))
        .header("content-type", "application/json; charset=utf-8")
        .header("host", "localhost:8000")
        .body(r#"{"message": "fine"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn preflights_count_against_the_per_ip_limit() {
    let app = TestApp::echo(|c| {
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = 3;
        c.cors_origins = vec!["https://app.example".into()];
    })
    .await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let res = app
            .client
            .request(reqwest::Method::OPTIONS, format!("{}/chat", app.url))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            // The refusal is readable by the page.
            assert_eq!(
                res.headers()["access-control-allow-origin"],
                "https://app.example"
            );
        }
        got.push(res.status().as_u16());
    }
    assert_eq!(got, [200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn websocket_frames_that_call_no_model_are_limited() {
    let app = TestApp::echo(|c| c.ws_max_frames_per_minute = 5).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(app.ws_url("/ws/flood"))
        .await
        .unwrap();
    for _ in 0..6 {
        ws.send(WsMessage::text(r#"{"type": "cancel"}"#))
            .await
            .unwrap();
    }
    let mut errors = 0;
    let mut closed = None;
    while let Some(Ok(msg)) = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
    {
        match msg {
            WsMessage::Text(t) if t.contains("error") => errors += 1,
            WsMessage::Close(frame) => {
                closed = frame.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(errors, 6, "five answers, then the error that closes");
    assert_eq!(closed, Some(1008));
}

#[tokio::test]
async fn a_key_at_its_stream_quota_gets_429_on_sse_and_websocket() {
    let app = TestApp::echo(|c| {
        keys(c);
        c.max_streams_per_key = 1;
        c.upstream_timeout = Duration::from_secs(60);
    })
    .await;
    let held = call(
        &app,
        "key-a",
        "POST",
        "/chat/stream",
        Some(json!({"message": "[slow] hold"})),
    )
    .await;
    assert_eq!(held.status(), 200);
    let res = call(
        &app,
        "key-a",
        "POST",
        "/chat/stream",
        Some(json!({"message": "again"})),
    )
    .await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let denied = tokio_tungstenite::connect_async(app.ws_url("/ws/c?api_key=key-a")).await;
    match denied {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 429),
        other => panic!("expected a 429 handshake, got {other:?}"),
    }
    // Another key streams; and the first key's place comes back when its stream ends.
    let res = call(
        &app,
        "key-b",
        "POST",
        "/chat/stream",
        Some(json!({"message": "mine"})),
    )
    .await;
    assert_eq!(res.status(), 200);
    drop(held);
    let mut ok = false;
    for _ in 0..100 {
        let res = call(
            &app,
            "key-a",
            "POST",
            "/chat/stream",
            Some(json!({"message": "now"})),
        )
        .await;
        if res.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the stream's place was not given back");
}

#[tokio::test]
async fn a_key_at_its_task_quota_gets_429() {
    let app = TestApp::echo(|c| {
        keys(c);
        c.max_tasks_per_key = 2;
        c.upstream_timeout = Duration::from_secs(60);
    })
    .await;
    for _ in 0..2 {
        let res = call(
            &app,
            "key-a",
            "POST",
            "/task",
            Some(json!({"prompt": "[slow] work"})),
        )
        .await;
        assert_eq!(res.status(), 202);
    }
    let res = call(
        &app,
        "key-a",
        "POST",
        "/task",
        Some(json!({"prompt": "more"})),
    )
    .await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    let res = call(
        &app,
        "key-b",
        "POST",
        "/task",
        Some(json!({"prompt": "mine"})),
    )
    .await;
    assert_eq!(res.status(), 202);
}

#[tokio::test]
async fn the_store_is_bounded_in_bytes() {
    let app = TestApp::echo(|c| c.max_store_bytes = 1024 * 1024).await;
    let big = "x".repeat(100 * 1024);
    for i in 0..30 {
        let body = json!({"message": big, "conversation_id": format!("c{i}")});
        assert_eq!(app.post("/chat", body).await.0, 200);
    }
    let (_, list) = app.get("/conversations").await;
    let n = list["count"].as_u64().unwrap();
    // Each holds the message and its echo: ~200 KiB, so about five fit in 1 MiB.
    assert!(
        (3..=5).contains(&n),
        "{n} conversations of ~200 KiB in a 1 MiB store"
    );
    assert_eq!(list["conversations"][0]["conversation_id"], "c29");
}

#[tokio::test]
async fn history_is_trimmed_to_max_history_tokens() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| c.max_history_tokens = 300).await;
    let para = "word ".repeat(80); // 400 bytes: ~100 tokens
    for i in 0..6 {
        let body = json!({"message": format!("{i} {para}"), "conversation_id": "long"});
        assert_eq!(app.post("/chat", body).await.0, 200);
    }
    let last = fake.requests().last().unwrap().clone();
    let messages = last["messages"].as_array().unwrap();
    let bytes: usize = messages
        .iter()
        .map(|m| m["content"].as_str().unwrap().len())
        .sum();
    assert!(bytes / 4 <= 300, "{bytes} bytes sent");
    assert_eq!(messages[0]["role"], "system");
    assert!(
        messages.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .starts_with("5 ")
    );
    // The stored conversation keeps what MAX_MESSAGES allows; only what is sent is trimmed.
    assert_eq!(app.get("/conversation/long").await.1["message_count"], 13);

    // One message larger than the whole budget: 422 at the field, nothing sent.
    let sent = fake.requests().len();
    let (s, body) = app
        .post("/chat", json!({"message": "x".repeat(2000)}))
        .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "message"]));
    assert_eq!(fake.requests().len(), sent);
}

#[tokio::test]
async fn an_upstream_context_length_refusal_is_the_callers_4xx() {
    let fake = FakeOpenAi::start().await;
    fake.set(|b| {
        b.status = 400;
        b.error = Some((
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.".into(),
            "context_length_exceeded".into(),
        ));
    });
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (s, body) = app
        .post("/chat", json!({"message": "hi", "conversation_id": "c"}))
        .await;
    assert_eq!(s, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("context"),
        "{body}"
    );
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let (s, body) = app
        .post("/v1/chat/completions", json!({"messages": msgs}))
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn a_slow_body_gets_408_within_the_body_timeout() {
    let app = TestApp::echo(|c| c.body_timeout = Duration::from_millis(300)).await;
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /chat HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"mess",
        app.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
        .await
        .expect("no answer within 3 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn probes_are_never_refused_by_max_in_flight() {
    let app = TestApp::echo(|c| {
        c.max_in_flight = 1;
        c.upstream_timeout = Duration::from_secs(60);
    })
    .await;
    let req = app
        .client
        .post(format!("{}/chat", app.url))
        .json(&json!({"message": "[slow] hold"}));
    #[expect(
        clippy::disallowed_methods,
        reason = "the held request runs beside the test"
    )]
    let held = tokio::spawn(req.send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.post("/chat", json!({"message": "hi"})).await.0, 503);
    for path in ["/health", "/ready", "/metrics"] {
        let res = app
            .client
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    held.abort();
}
