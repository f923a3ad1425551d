//! `/v1/responses` against the fake upstream: what goes up (the translation), the failure paths
//! (upstream 500, bad JSON, timeout, a dropped stream, a client that leaves), retention, and
//! stored responses shared by two replicas through Redis. The SDK tests are in
//! tests/python/test_responses.py.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{Behaviour, FakeOpenAi, TestApp, read_sse};
use serde_json::{Value, json};

async fn stream(app: &TestApp, body: Value) -> Vec<(String, Value)> {
    let res = app
        .client
        .post(format!("{}/v1/responses", app.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    read_sse(res)
        .await
        .into_iter()
        .map(|(_, e)| {
            (
                e.event.unwrap_or_default(),
                serde_json::from_str(&e.data).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_request_goes_up_in_chat_completions_terms() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (status, r) = app
        .post(
            "/v1/responses",
            json!({
                "model": "gpt-4o-mini",
                "instructions": "be brief",
                "input": [
                    {"role": "developer", "content": "house rules"},
                    {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                ],
                "temperature": 0.5, "top_p": 0.9, "max_output_tokens": 50,
                "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
                "tool_choice": {"type": "function", "name": "f"},
                "parallel_tool_calls": false,
                "metadata": {"who": "test"},
                "include": ["reasoning.encrypted_content"],
            }),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["output"][0]["content"][0]["text"],
        "Hello from the fake upstream"
    );
    assert_eq!(r["metadata"], json!({"who": "test"}));
    assert_eq!(r["tools"][0]["name"], "f");
    assert_eq!(r["max_output_tokens"], 50);
    assert!(r["usage"]["input_tokens"].as_u64().is_some());
    let sent = &fake.requests()[0];
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "system", "user"]);
    assert_eq!(sent["messages"][0]["content"], "be brief");
    assert_eq!(sent["messages"][2]["content"], "hi");
    assert_eq!(sent["max_tokens"], 50);
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["top_p"], 0.9);
    assert_eq!(sent["tools"][0]["function"]["name"], "f");
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(sent["parallel_tool_calls"], false);
    assert!(sent.get("include").is_none() && sent.get("metadata").is_none());
    // No instructions: no system message at all.
    app.post("/v1/responses", json!({"input": "plain"})).await;
    let sent = &fake.requests()[1];
    assert_eq!(sent["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn parallel_tool_calls_stream_as_separate_function_call_items() {
    let fake = FakeOpenAi::start_with(Behaviour {
        tool_calls: vec![
            ("weather".into(), r#"{"city":"Paris"}"#.into()),
            ("time".into(), r#"{"zone":"CET"}"#.into()),
        ],
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let tools =
        json!([{"type": "function", "name": "weather"}, {"type": "function", "name": "time"}]);
    let events = stream(
        &app,
        json!({"input": "both", "tools": tools, "stream": true}),
    )
    .await;
    let (kind, last) = events.last().unwrap();
    assert_eq!(kind, "response.completed");
    let calls: Vec<&Value> = last["response"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["name"], "weather");
    assert_eq!(calls[0]["arguments"], r#"{"city":"Paris"}"#);
    assert_eq!(calls[1]["arguments"], r#"{"zone":"CET"}"#);
    let deltas = events
        .iter()
        .filter(|(k, _)| k == "response.function_call_arguments.delta")
        .count();
    assert!(deltas >= 4, "interleaved fragments, each its own delta");
    // Whole: the same two items.
    let (_, r) = app
        .post("/v1/responses", json!({"input": "both", "tools": tools}))
        .await;
    let names: Vec<&str> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["weather", "time"]);
}

#[tokio::test]
async fn upstream_failures_are_errors_whole_and_response_failed_streamed() {
    let fake = FakeOpenAi::start_with(Behaviour {
        status: 500,
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (status, body) = app.post("/v1/responses", json!({"input": "x"})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["type"], "api_error");

    let events = stream(&app, json!({"input": "x", "stream": true})).await;
    let (kind, last) = events.last().unwrap();
    assert_eq!(kind, "response.failed");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "server_error");
    let id = last["response"]["id"].as_str().unwrap();
    let (_, got) = app.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(got["status"], "failed");

    // Bad JSON from the upstream, and a stream that breaks off.
    fake.set(|b| {
        b.status = 200;
        b.garbage = true;
    });
    let (status, _) = app.post("/v1/responses", json!({"input": "x"})).await;
    assert_eq!(status, 502);
    fake.set(|b| {
        b.garbage = false;
        b.stop_after = Some(2);
        b.abort = true;
    });
    let events = stream(&app, json!({"input": "x", "stream": true})).await;
    assert_eq!(events.last().unwrap().0, "response.failed");
}

#[tokio::test]
async fn a_slow_upstream_times_out() {
    let fake = FakeOpenAi::start_with(Behaviour {
        first_chunk_delay: Duration::from_secs(5),
        unary_delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |c| c.turn_timeout = Duration::from_millis(300)).await;
    let (status, body) = app.post("/v1/responses", json!({"input": "x"})).await;
    assert_eq!(status, 504, "{body}");
    let events = stream(&app, json!({"input": "x", "stream": true})).await;
    let (kind, last) = events.last().unwrap();
    assert_eq!(kind, "response.failed");
    assert!(
        last["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within")
    );
}

#[tokio::test]
async fn a_client_that_leaves_a_stream_stops_it_a_background_one_goes_on() {
    let fake = FakeOpenAi::start_with(Behaviour {
        chunks: 20,
        chunk_delay: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let mut res = app
        .client
        .post(format!("{}/v1/responses", app.url))
        .json(&json!({"input": "x", "stream": true}))
        .send()
        .await
        .unwrap();
    // Read until the model's first words: its call is open.
    let mut text = String::new();
    while !text.contains("response.output_text.delta") {
        text.push_str(&String::from_utf8_lossy(
            &res.chunk().await.unwrap().unwrap(),
        ));
    }
    drop(res);
    let waited = std::time::Instant::now();
    while fake.cancelled() == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(2),
            "the upstream call was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its record says so.
    let id = text
        .split("\"id\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let (_, got) = app.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(got["status"], "cancelled", "{got}");

    // A background stream's client may leave: the response completes.
    let mut res = app
        .client
        .post(format!("{}/v1/responses", app.url))
        .json(&json!({"input": "x", "stream": true, "background": true}))
        .send()
        .await
        .unwrap();
    let mut first = String::new();
    while !first.contains("\"id\":\"resp_") {
        first.push_str(&String::from_utf8_lossy(
            &res.chunk().await.unwrap().unwrap(),
        ));
    }
    drop(res);
    let id = first
        .split("\"id\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let waited = std::time::Instant::now();
    loop {
        let (_, got) = app.get(&format!("/v1/responses/{id}")).await;
        if got["status"] == "completed" {
            break;
        }
        assert!(waited.elapsed() < Duration::from_secs(5), "{got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stored_responses_expire_and_belong_to_their_key() {
    let app = TestApp::echo(|c| {
        c.response_ttl = Duration::from_millis(300);
        c.api_keys =
            agent_api::config::parse_api_keys(&["a=key-a".into(), "b=key-b".into()], "API_KEYS")
                .unwrap();
    })
    .await;
    let post = |key: &'static str, body: Value| {
        let app = &app;
        async move {
            let res = app
                .client
                .post(format!("{}/v1/responses", app.url))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            common::answer(res).await
        }
    };
    let get = |key: &'static str, path: String| {
        let app = &app;
        async move {
            let res = app
                .client
                .get(format!("{}{path}", app.url))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            common::answer(res).await
        }
    };
    let (_, r) = post("key-a", json!({"input": "mine"})).await;
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(get("key-a", format!("/v1/responses/{id}")).await.0, 200);
    assert_eq!(get("key-b", format!("/v1/responses/{id}")).await.0, 404);
    assert_eq!(
        get("key-b", format!("/v1/responses/{id}/input_items"))
            .await
            .0,
        404
    );
    let (status, body) = post("key-b", json!({"input": "x", "previous_response_id": id})).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "previous_response_not_found");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get("key-a", format!("/v1/responses/{id}")).await.0, 404);
}

#[tokio::test]
async fn two_replicas_share_stored_responses_through_redis() {
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let redis = |c: &mut agent_api::Config| {
        c.store = agent_api::config::StoreKind::Redis(common::redis_url());
        c.store_prefix = prefix.clone();
    };
    let a = TestApp::echo(|c| {
        redis(c);
        c.echo_delay = Duration::from_millis(5);
    })
    .await;
    let b = TestApp::echo(redis).await;
    let (_, first) = a
        .post("/v1/responses", json!({"input": "one two three"}))
        .await;
    let id = first["id"].as_str().unwrap();
    // B reads it, chains on it, lists its items and deletes it.
    let (status, got) = b.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["output"], first["output"]);
    let (status, second) = b
        .post(
            "/v1/responses",
            json!({"input": "four", "previous_response_id": id}),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    assert!(second["usage"]["input_tokens"].as_u64().unwrap() > 4);
    let (_, items) = b.get(&format!("/v1/responses/{id}/input_items")).await;
    assert_eq!(items["data"][0]["content"][0]["text"], "one two three");
    // A background response made on A: B polls it, follows its events, and cancels it.
    let (_, bg) = a
        .post(
            "/v1/responses",
            json!({"input": "[slow] wait", "background": true}),
        )
        .await;
    let bg_id = bg["id"].as_str().unwrap();
    let (_, polled) = b.get(&format!("/v1/responses/{bg_id}")).await;
    assert_eq!(polled["status"], "in_progress");
    let (status, cancelled) = b
        .post(&format!("/v1/responses/{bg_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let res = b
        .client
        .get(format!("{}/v1/responses/{bg_id}?stream=true", b.url))
        .send()
        .await
        .unwrap();
    let events = read_sse(res).await;
    assert_eq!(events[0].1.event.as_deref(), Some("response.created"));
    assert_eq!(events.last().unwrap().1.event.as_deref(), Some("error"));
    let (status, deleted) = b.delete(&format!("/v1/responses/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(deleted["deleted"], true);
    assert_eq!(a.get(&format!("/v1/responses/{id}")).await.0, 404);
}
