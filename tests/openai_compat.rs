//! `/v1/chat/completions` and `/v1/models`, driven by async-openai as a client.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use common::{Behaviour, FakeOpenAi, TestApp};
use futures::StreamExt;
use serde_json::{Value, json};

fn client(app: &TestApp, key: &str) -> Client<OpenAIConfig> {
    agent_api::llm::openai::install_crypto_provider();
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", app.url))
            .with_api_key(key),
    )
}

fn request(stream: bool) -> async_openai::types::chat::CreateChatCompletionRequest {
    let mut b = CreateChatCompletionRequestArgs::default();
    b.model("gpt-4o-mini")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello")
            .build()
            .unwrap()
            .into()]);
    if stream {
        b.stream(true);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn sdk_non_stream_and_stream_and_models() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| {
        c.api_keys =
            agent_api::config::parse_api_keys(&["alice=k-alice".into()], "API_KEYS").unwrap();
        c.models = vec!["gpt-4o-mini".into(), "gpt-4o".into()];
    })
    .await;
    let oa = client(&app, "k-alice");

    let done = oa.chat().create(request(false)).await.unwrap();
    assert_eq!(
        done.choices[0].message.content.as_deref(),
        Some("Hello from the fake upstream")
    );
    assert_eq!(done.usage.unwrap().total_tokens, 18);

    let mut stream = oa.chat().create_stream(request(true)).await.unwrap();
    let mut text = String::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        if let Some(c) = chunk.choices.first().and_then(|c| c.delta.content.clone()) {
            text.push_str(&c);
        }
    }
    assert_eq!(text, "Hello from the fake upstream");
    assert!(chunks >= 3);

    let models = oa.models().list().await.unwrap();
    let ids: Vec<String> = models.data.into_iter().map(|m| m.id).collect();
    assert_eq!(ids, ["gpt-4o-mini", "gpt-4o", "agent:default"]);

    let wrong = client(&app, "k-wrong");
    let err = wrong.chat().create(request(false)).await.unwrap_err();
    match err {
        async_openai::error::OpenAIError::ApiError(e) => {
            assert_eq!(e.status_code.as_u16(), 401);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unknown_fields_pass_through_unchanged() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| {
        c.passthrough_fields = vec!["some_future_param".into()];
    })
    .await;
    let body = json!({
        "model": "gpt-4o", "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "42"}
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"},
        "max_completion_tokens": 10, "seed": 7, "some_future_param": {"x": [1, 2]}
    });
    let (status, res) = app.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["object"], "chat.completion");
    assert_eq!(
        res["id"], "chatcmpl-fake",
        "the upstream's completion is returned as it is"
    );
    let mut sent = fake.requests()[0].clone();
    assert_eq!(sent["stream"], false);
    sent.as_object_mut().unwrap().remove("stream");
    assert_eq!(sent, body);

    // A field that is neither OpenAI's nor named in PASSTHROUGH_FIELDS never reaches the
    // upstream (a vendor knob billed to the operator).
    let mut extra = body.clone();
    extra["top_k"] = json!(5);
    extra["chat_template_kwargs"] = json!({"enable_thinking": true});
    let (status, res) = app.post("/v1/chat/completions", extra).await;
    assert_eq!(status, 200, "{res}");
    let sent = fake.requests()[1].clone();
    assert!(
        sent.get("top_k").is_none() && sent.get("chat_template_kwargs").is_none(),
        "{sent}"
    );
    assert_eq!(sent["some_future_param"], body["some_future_param"]);
}

#[tokio::test]
async fn stream_ends_with_done_and_hides_usage_unless_asked() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    for (ask, want_usage) in [(json!(null), false), (json!({"include_usage": true}), true)] {
        let mut body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": true});
        if !ask.is_null() {
            body["stream_options"] = ask;
        }
        let res = app
            .client
            .post(format!("{}/v1/chat/completions", app.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let events = common::read_sse(res).await;
        assert_eq!(events.last().unwrap().1.data, "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|(_, e)| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
        let has_usage = chunks.iter().any(|c| c["usage"].is_object());
        assert_eq!(has_usage, want_usage);
    }
}

#[tokio::test]
async fn errors_are_in_openai_shape() {
    let fake = FakeOpenAi::start_with(Behaviour {
        status: 500,
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let ok_body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let (status, res) = app.post("/v1/chat/completions", ok_body.clone()).await;
    assert_eq!(status, 502, "{res}");
    assert!(res["error"]["message"].is_string());
    assert!(res["error"]["type"].is_string());
    assert!(res["error"].get("param").is_some() && res["error"].get("code").is_some());

    for bad in [
        json!({"model": "gpt-4o-mini"}),
        json!({"messages": [], "model": "gpt-4o-mini"}),
        json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
    ] {
        let (status, res) = app.post("/v1/chat/completions", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {res}");
        assert_eq!(res["error"]["type"], "invalid_request_error");
    }
    let (status, res) = app.post_raw("/v1/chat/completions", "{oops").await;
    assert_eq!(status, 400, "{res}");
    assert!(res["error"]["message"].is_string());

    fake.set(|b| b.status = 404);
    let (status, res) = app.post("/v1/chat/completions", ok_body).await;
    assert_eq!(status, 400, "an upstream refusal is the caller's: {res}");

    let (status, res) = app.get("/v1/nothing").await;
    assert_eq!(status, 404);
    assert!(res["error"].is_object());
}

#[tokio::test]
async fn echo_serves_the_openai_routes_too() {
    let app = TestApp::echo(|_| {}).await;
    let oa = client(&app, "unused");
    let done = oa.chat().create(request(false)).await.unwrap();
    assert_eq!(
        done.choices[0].message.content.as_deref(),
        Some("Echo: Say hello")
    );
    let mut stream = oa.chat().create_stream(request(true)).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        if let Some(c) = chunk
            .unwrap()
            .choices
            .first()
            .and_then(|c| c.delta.content.clone())
        {
            text.push_str(&c);
        }
    }
    assert_eq!(text, "Echo: Say hello");
}

#[tokio::test]
async fn leaving_a_v1_stream_cancels_the_upstream_call() {
    let fake = FakeOpenAi::start_with(Behaviour {
        chunks: 10,
        chunk_delay: std::time::Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.url))
        .json(
            &json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    drop(body);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while fake.cancelled() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream stream was not cancelled within 1 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(fake.finished(), 0);
}
