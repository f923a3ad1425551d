//! `POST /chat` and conversations against the fake upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{Behaviour, FakeOpenAi, TestApp};
use serde_json::{Value, json};

#[tokio::test]
async fn chat_answers_with_the_contract_shape() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (status, body) = app.post("/chat", json!({"message": "Hi there"})).await;
    assert_eq!(status, 200, "{body}");
    let obj = body.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["conversation_id", "response", "timestamp", "tokens_used"]
    );
    assert_eq!(body["response"], "Hello from the fake upstream");
    assert_eq!(body["tokens_used"], 18);
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    let id = body["conversation_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok());

    // The upstream got the defaults explicitly and never the key in the clear elsewhere.
    let sent = &fake.requests()[0];
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["temperature"], 0.7);
    assert_eq!(sent["max_tokens"], 1000);
    assert_eq!(sent["stream"], false);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "You are a helpful AI assistant."},
            {"role": "user", "content": "Hi there"}
        ])
    );
    assert_eq!(fake.auth_headers()[0], "Bearer sk-test-secret-key");
}

#[tokio::test]
async fn whole_history_and_settings_reach_the_upstream() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| c.any_model = true).await;
    let first = json!({"message": "one", "conversation_id": "my-conv_1", "system_prompt": "Be brief.",
        "temperature": 0.2, "max_tokens": 50, "model": "gpt-x"});
    let (status, body) = app.post("/chat", first).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversation_id"], "my-conv_1");
    let (status, _) = app
        .post(
            "/chat",
            json!({"message": "two", "conversation_id": "my-conv_1", "max_completion_tokens": 77}),
        )
        .await;
    assert_eq!(status, 200);
    let sent = fake.requests();
    assert_eq!(sent[0]["model"], "gpt-x");
    assert_eq!(sent[0]["temperature"], 0.2);
    assert_eq!(sent[0]["max_tokens"], 50);
    assert_eq!(sent[1]["max_tokens"], 77);
    assert_eq!(
        sent[1]["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "Hello from the fake upstream"},
            {"role": "user", "content": "two"}
        ])
    );

    let (status, conv) = app.get("/conversation/my-conv_1").await;
    assert_eq!(status, 200);
    assert_eq!(conv["conversation_id"], "my-conv_1");
    assert_eq!(conv["message_count"], 5);
    assert_eq!(conv["messages"].as_array().unwrap().len(), 5);
    assert_eq!(
        conv["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
}

#[tokio::test]
async fn conversations_list_get_and_delete() {
    let app = TestApp::echo(|_| {}).await;
    for id in ["a1", "b2"] {
        let (s, _) = app
            .post("/chat", json!({"message": "hi", "conversation_id": id}))
            .await;
        assert_eq!(s, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, list) = app.get("/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(list["count"], 2);
    // newest first
    assert_eq!(list["conversations"][0]["conversation_id"], "b2");
    assert_eq!(list["conversations"][1]["conversation_id"], "a1");
    assert_eq!(list["conversations"][0]["message_count"], 3);

    let (status, body) = app.delete("/conversation/a1").await;
    assert_eq!((status, body), (200, json!({"status": "deleted"})));
    let (status, body) = app.get("/conversation/a1").await;
    assert_eq!(status, 404);
    assert!(body["detail"].is_string(), "{body}");
    let (status, body) = app.delete("/conversation/a1").await;
    assert_eq!(status, 404);
    assert!(body["detail"].is_string());
    let (_, list) = app.get("/conversations").await;
    assert_eq!(list["count"], 1);
    let (status, body) = app.get("/conversations?limit=0").await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn validation_errors_are_fastapi_422s() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let cases = [
        (json!({"message": ""}), "message"),
        (json!({"message": "hi", "temperature": 2.5}), "temperature"),
        (json!({"message": "hi", "max_tokens": 0}), "max_tokens"),
        (json!({"message": "hi", "max_tokens": 5000}), "max_tokens"),
        (json!({"message": 42}), "message"),
        (
            json!({"message": "hi", "temperature": "warm"}),
            "temperature",
        ),
        (json!({"message": "hi", "max_tokens": 1.5}), "max_tokens"),
        (json!({"temperature": 1}), "message"),
        (
            json!({"message": "hi", "conversation_id": "no spaces"}),
            "conversation_id",
        ),
    ];
    for (body, field) in cases {
        let (status, res) = app.post("/chat", body.clone()).await;
        assert_eq!(status, 422, "{body} -> {res}");
        let detail = res["detail"].as_array().unwrap_or_else(|| panic!("{res}"));
        assert_eq!(detail[0]["loc"], json!(["body", field]), "{body} -> {res}");
        assert!(detail[0]["msg"].is_string());
        assert!(detail[0]["type"].is_string());
    }
    for raw in ["{not json", "", "[1,2]", "null"] {
        let (status, res) = app.post_raw("/chat", raw.to_owned()).await;
        assert_eq!(status, 422, "{raw:?} -> {res}");
        assert!(res["detail"].is_array(), "{res}");
    }
    assert!(
        fake.requests().is_empty(),
        "nothing invalid reaches the upstream"
    );
}

#[tokio::test]
async fn unknown_ids_are_404_with_detail() {
    let app = TestApp::echo(|_| {}).await;
    for path in ["/conversation/nope", "/task/nope"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 404);
        assert!(body["detail"].is_string(), "{body}");
    }
    let (status, body) = app.get("/no/such/route").await;
    assert_eq!((status, body), (404, json!({"detail": "Not Found"})));
}

#[tokio::test]
async fn upstream_500_is_502_and_leaves_no_dangling_message() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (s, _) = app
        .post("/chat", json!({"message": "first", "conversation_id": "c"}))
        .await;
    assert_eq!(s, 200);
    fake.set(|b| b.status = 500);
    let (status, body) = app
        .post(
            "/chat",
            json!({"message": "second", "conversation_id": "c"}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("500"), "{detail}");
    assert!(!detail.contains("sk-test-secret-key"));
    let (_, conv) = app.get("/conversation/c").await;
    assert_eq!(conv["message_count"], 3, "{conv}");

    // A new conversation whose first turn fails does not exist afterwards.
    let (status, _) = app
        .post("/chat", json!({"message": "x", "conversation_id": "fresh"}))
        .await;
    assert_eq!(status, 502);
    let (status, _) = app.get("/conversation/fresh").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn upstream_garbage_is_502_and_upstream_down_is_502() {
    let fake = FakeOpenAi::start_with(Behaviour {
        garbage: true,
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (status, body) = app.post("/chat", json!({"message": "hi"})).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["detail"].is_string());

    let down = TestApp::echo(|c| {
        c.provider = agent_api::config::ProviderKind::OpenAi;
        c.openai_base_url = "http://127.0.0.1:9/v1".into();
    })
    .await;
    let (status, body) = down.post("/chat", json!({"message": "hi"})).await;
    assert_eq!(status, 502, "{body}");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |c| c.upstream_timeout = Duration::from_millis(300)).await;
    let (status, body) = app
        .post("/chat", json!({"message": "hi", "conversation_id": "slow"}))
        .await;
    assert_eq!(status, 504, "{body}");
    assert!(body["detail"].is_string());
    let (status, _) = app.get("/conversation/slow").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn concurrent_turns_on_one_conversation_are_serialized() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (s, _) = app
        .post(
            "/chat",
            json!({"message": "start", "conversation_id": "busy"}),
        )
        .await;
    assert_eq!(s, 200);
    let calls = (0..20).map(|i| {
        let app = &app;
        async move {
            app.post(
                "/chat",
                json!({"message": format!("m{i}"), "conversation_id": "busy"}),
            )
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let (_, conv) = app.get("/conversation/busy").await;
    let messages = conv["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3 + 40);
    for (i, m) in messages[3..].iter().enumerate() {
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        assert_eq!(m["role"], want, "message {i}: {m}");
    }
    // Each upstream call saw the complete history before it: 3, 5, 7, ... messages.
    let mut sizes: Vec<usize> = fake
        .requests()
        .iter()
        .map(|r| r["messages"].as_array().unwrap().len())
        .collect();
    sizes.sort();
    let want: Vec<usize> = (0..21).map(|i| 2 + 2 * i).collect();
    assert_eq!(sizes, want);
}

#[tokio::test]
async fn a_full_store_is_503_while_all_are_busy_and_then_evicts_the_oldest_idle() {
    let app = TestApp::echo(|c| {
        c.max_conversations = 2;
        c.upstream_timeout = Duration::from_secs(60);
    })
    .await;
    let chat = |id: &str| json!({"message": "hi", "conversation_id": id});
    let count = || async { app.get("/health").await.1["active_conversations"].clone() };
    // Until `done` holds, at most ~4 s.
    async fn eventually(mut done: impl AsyncFnMut() -> bool) -> bool {
        for _ in 0..200 {
            if done().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    // Two conversations, then a turn on each that holds it (the echo provider's [slow] waits a
    // minute). A new conversation counts only once its first turn is committed.
    for id in ["s1", "s2"] {
        assert_eq!(app.post("/chat", chat(id)).await.0, 200);
    }
    assert_eq!(count().await, 2);
    let mut slow = Vec::new();
    for id in ["s1", "s2"] {
        let req = app
            .client
            .post(format!("{}/chat", app.url))
            .json(&json!({"message": "[slow] hold", "conversation_id": id}));
        #[expect(
            clippy::disallowed_methods,
            reason = "the held turns run beside the test"
        )]
        slow.push(tokio::spawn(req.send()));
    }
    // Time for both turns to begin (a probe now could itself take a conversation's place).
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every conversation is busy: a new one is refused at once, not queued.
    let refused = app
        .client
        .post(format!("{}/chat", app.url))
        .json(&chat("c0"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("maximum of 2"),
        "{body}"
    );
    // The clients leave: their turns are cancelled, and their conversations can go.
    for s in slow {
        s.abort();
    }
    assert!(eventually(async || app.post("/chat", chat("c0")).await.0 == 200).await);

    // Oldest first: s2 and c0 go; c1, used again, gets a second chance, so c2 goes instead.
    for id in ["c1", "c2", "c1", "c3"] {
        let (status, body) = app.post("/chat", chat(id)).await;
        assert_eq!(status, 200, "{body}");
    }
    for (id, status) in [
        ("s1", 404),
        ("s2", 404),
        ("c0", 404),
        ("c2", 404),
        ("c1", 200),
        ("c3", 200),
    ] {
        assert_eq!(
            app.get(&format!("/conversation/{id}")).await.0,
            status,
            "{id}"
        );
    }
    assert_eq!(
        app.get("/conversation/c1").await.1["messages"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(count().await, 2);
}

#[tokio::test]
async fn body_over_the_limit_is_413_json() {
    let app = TestApp::echo(|c| c.max_body_bytes = 1024).await;
    let big = json!({"message": "x".repeat(4096)}).to_string();
    let (status, body) = app.post_raw("/chat", big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("1024"), "{body}");
}

#[tokio::test]
async fn request_id_is_generated_or_echoed() {
    let app = TestApp::echo(|_| {}).await;
    let res = app
        .client
        .get(format!("{}/health", app.url))
        .send()
        .await
        .unwrap();
    let generated = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok());
    let res = app
        .client
        .post(format!("{}/chat", app.url))
        .header("x-request-id", "my-trace-42")
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "my-trace-42");
}

#[tokio::test]
async fn health_and_ready() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["active_conversations"], 0);
    assert!(body["timestamp"].is_string());
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");

    let down = TestApp::echo(|c| {
        c.provider = agent_api::config::ProviderKind::OpenAi;
        c.openai_base_url = "http://127.0.0.1:9/v1".into();
    })
    .await;
    let (status, body) = down.get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
}

#[tokio::test]
async fn an_upstream_429_surfaces_as_429_with_retry_after() {
    let fake = FakeOpenAi::start_with(Behaviour {
        status: 429,
        retry_after: Some(7),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = app
        .client
        .post(format!("{}/chat", app.url))
        .json(&json!({"message": "hi", "conversation_id": "busy-upstream"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 7, "the upstream's Retry-After");
    let body: Value = res.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("rate limited"),
        "{body}"
    );
    assert_eq!(fake.requests().len(), 1, "not retried");
    let (status, _) = app.get("/conversation/busy-upstream").await;
    assert_eq!(status, 404, "nothing saved");
}

/// A forward proxy that only tunnels (`CONNECT host:port`), recording each CONNECT's target and
/// `Proxy-Authorization`.
#[expect(clippy::disallowed_methods, reason = "the proxy runs beside the test")]
async fn connect_proxy() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("proxy-authorization: "))
                    .or_else(|| {
                        head.lines()
                            .find_map(|l| l.strip_prefix("Proxy-Authorization: "))
                    })
                    .unwrap_or("")
                    .to_owned();
                log.lock().unwrap().push((target.clone(), auth));
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn upstream_calls_go_through_the_configured_proxy_unless_no_proxy_says_otherwise() {
    let fake = FakeOpenAi::start().await;
    let upstream = fake
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    let (proxy, seen) = connect_proxy().await;
    let with_auth = proxy.replace("http://", "http://user:secret@");
    let app = TestApp::with_fake(&fake, |c| c.upstream_proxy.http = Some(with_auth)).await;
    let (status, body) = app.post("/chat", json!({"message": "via proxy"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app
        .post("/chat/stream", json!({"message": "streamed"}))
        .await;
    assert_eq!(status, 200);
    {
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "the proxy was used");
        for (target, auth) in seen.iter() {
            assert_eq!(target, upstream);
            assert_eq!(auth, "Basic dXNlcjpzZWNyZXQ=", "user:secret");
        }
    }
    assert_eq!(fake.requests().len(), 2);

    let before = seen.lock().unwrap().len();
    let app = TestApp::with_fake(&fake, |c| {
        c.upstream_proxy.all = Some(proxy.clone());
        c.upstream_proxy.no = Some("127.0.0.1".into());
    })
    .await;
    let (status, _) = app.post("/chat", json!({"message": "direct"})).await;
    assert_eq!(status, 200);
    assert_eq!(seen.lock().unwrap().len(), before, "NO_PROXY bypasses it");
}

#[tokio::test]
async fn the_hyper_client_variant_serves_unary_and_streamed_turns_and_upstream_errors() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| {
        c.upstream_http_client = agent_api::config::UpstreamHttpClient::Hyper;
    })
    .await;
    let (status, body) = app.post("/chat", json!({"message": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"], "Hello from the fake upstream");
    let res = app
        .client
        .post(format!("{}/chat/stream", app.url))
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    let events = common::read_sse(res).await;
    let text: String = events
        .iter()
        .filter_map(|(_, e)| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|v| v["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello from the fake upstream");
    // The upstream's key went along, and its errors and Retry-After come through.
    assert!(
        fake.auth_headers()
            .iter()
            .all(|h| h == "Bearer sk-test-secret-key")
    );
    fake.set(|b| {
        b.status = 429;
        b.retry_after = Some(7);
    });
    let res = app
        .client
        .post(format!("{}/chat", app.url))
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "7");
}
