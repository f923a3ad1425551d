//! `POST`/`GET /chat/stream`: SSE frames, unbuffered delivery, keep-alives, errors after the
//! first byte, cancellation when the client leaves.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{Behaviour, FakeOpenAi, TestApp, read_sse};
use serde_json::{Value, json};

async fn open(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(format!("{}/chat/stream", app.url))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn frames_concatenate_to_the_upstream_text_and_the_reply_is_stored() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = open(&app, json!({"message": "hi", "conversation_id": "s1"})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    assert!(res.headers().get("content-encoding").is_none());
    let run = res.headers()["x-run-id"].to_str().unwrap().to_owned();
    let events = read_sse(res).await;
    let (last, contents) = events.split_last().unwrap();
    let mut text = String::new();
    // Each id names the run and the position after the event.
    for (i, (_, e)) in events.iter().enumerate() {
        assert_eq!(e.id.as_deref(), Some(format!("{run}-{}", i + 1).as_str()));
    }
    for (_, e) in contents {
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        text.push_str(v["content"].as_str().unwrap());
    }
    assert_eq!(text, "Hello from the fake upstream");
    assert!(contents.len() >= 3, "several frames");
    let done: Value = serde_json::from_str(&last.1.data).unwrap();
    assert_eq!(
        done,
        json!({"done": true, "conversation_id": "s1", "tokens_used": 18, "run_id": run})
    );
    // usage was asked for
    assert_eq!(fake.requests()[0]["stream_options"]["include_usage"], true);
    assert_eq!(fake.requests()[0]["stream"], true);

    let (_, conv) = app.get("/conversation/s1").await;
    assert_eq!(conv["message_count"], 3);
    assert_eq!(
        conv["messages"][2]["content"],
        "Hello from the fake upstream"
    );

    // The next turn carries the history, like /chat.
    let res = open(&app, json!({"message": "again", "conversation_id": "s1"})).await;
    read_sse(res).await;
    assert_eq!(fake.requests()[1]["messages"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn tokens_are_counted_when_the_upstream_reports_no_usage() {
    let fake = FakeOpenAi::start_with(Behaviour {
        usage: false,
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let events = read_sse(open(&app, json!({"message": "count me"})).await).await;
    let done: Value = serde_json::from_str(&events.last().unwrap().1.data).unwrap();
    assert!(done["tokens_used"].as_u64().unwrap() > 0, "{done}");
}

#[tokio::test]
async fn first_frame_arrives_before_the_last_chunk_is_sent() {
    let fake = FakeOpenAi::start_with(Behaviour {
        chunks: 5,
        chunk_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let events = read_sse(open(&app, json!({"message": "hi"})).await).await;
    let first = events.first().unwrap().0;
    let last = events.last().unwrap().0;
    assert!(
        last >= Duration::from_millis(1100),
        "upstream takes 4 x 300 ms: {last:?}"
    );
    assert!(
        first + Duration::from_millis(900) < last,
        "first frame at {first:?}, last at {last:?}: frames must not be buffered"
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_call() {
    let fake = FakeOpenAi::start_with(Behaviour {
        chunks: 10,
        chunk_delay: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = open(&app, json!({"message": "hi", "conversation_id": "gone"})).await;
    let mut body = res.bytes_stream();
    use futures::StreamExt;
    // The `: open` comment, then the first content frame: the client leaves mid-answer.
    let mut seen = String::new();
    while !seen.contains("content") {
        seen.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    assert!(seen.starts_with(": open"), "{seen}");
    drop(body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while fake.cancelled() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream stream was not cancelled within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.finished(), 0);
    // The abandoned turn left nothing behind, and the conversation is usable again.
    let (status, _) = app.get("/conversation/gone").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn dropped_upstream_stream_gives_an_error_frame_and_the_server_keeps_serving() {
    for abort in [false, true] {
        let fake = FakeOpenAi::start_with(Behaviour {
            chunks: 5,
            stop_after: Some(2),
            abort,
            ..Default::default()
        })
        .await;
        let app = TestApp::with_fake(&fake, |_| {}).await;
        let events =
            read_sse(open(&app, json!({"message": "hi", "conversation_id": "d"})).await).await;
        let last = &events.last().unwrap().1;
        assert_eq!(
            last.event.as_deref(),
            Some("error"),
            "abort={abort}: {events:?}"
        );
        let detail: Value = serde_json::from_str(&last.data).unwrap();
        assert!(detail["detail"].is_string(), "{detail}");
        assert!(events.len() >= 2, "content came before the error");
        let (status, _) = app.get("/conversation/d").await;
        assert_eq!(status, 404, "a failed stream saves nothing");
        fake.set(|b| b.stop_after = None);
        let (status, _) = app.post("/chat", json!({"message": "still there?"})).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn an_error_object_or_garbage_mid_stream_ends_with_an_error_frame() {
    let cases = [
        (
            r#"{"error": {"message": "upstream overloaded"}}"#,
            "upstream overloaded",
        ),
        ("this is not json", "not a chat completion"),
        (r#"{"choices": {"not": "a list"}}"#, "not a chat completion"),
    ];
    for (bad, expected) in cases {
        let fake = FakeOpenAi::start_with(Behaviour {
            chunks: 4,
            bad_chunk: Some(bad.into()),
            ..Default::default()
        })
        .await;
        let app = TestApp::with_fake(&fake, |_| {}).await;
        let events =
            read_sse(open(&app, json!({"message": "hi", "conversation_id": "bad"})).await).await;
        let last = &events.last().unwrap().1;
        assert_eq!(last.event.as_deref(), Some("error"), "{bad}: {events:?}");
        let detail: Value = serde_json::from_str(&last.data).unwrap();
        assert!(
            detail["detail"].as_str().unwrap().contains(expected),
            "{bad}: {detail}"
        );
        assert_eq!(
            events.len(),
            2,
            "one content frame, then the error: {events:?}"
        );
        let (status, _) = app.get("/conversation/bad").await;
        assert_eq!(status, 404, "a failed stream saves nothing");
    }
}

#[tokio::test]
async fn an_upstream_429_keeps_its_retry_after() {
    let fake = FakeOpenAi::start_with(Behaviour {
        status: 429,
        retry_after: Some(7),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = open(&app, json!({"message": "hi"})).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "7");
    let body: Value = res.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("fake upstream says 429"),
        "{body}"
    );
    assert_eq!(fake.requests().len(), 1, "not retried");
}

#[tokio::test]
async fn errors_before_the_first_byte_are_json() {
    let fake = FakeOpenAi::start_with(Behaviour {
        status: 500,
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = open(&app, json!({"message": "hi"})).await;
    assert_eq!(res.status(), 502);
    let body: Value = res.json().await.unwrap();
    assert!(body["detail"].is_string());
    let res = open(&app, json!({"message": ""})).await;
    assert_eq!(res.status(), 422);
}

#[tokio::test]
async fn the_stream_opens_before_the_first_token() {
    let fake = FakeOpenAi::start_with(Behaviour {
        first_chunk_delay: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let mut res = open(&app, json!({"message": "hi"})).await;
    assert_eq!(res.status(), 200);
    let first = tokio::time::timeout(Duration::from_millis(1000), res.chunk())
        .await
        .expect("a first byte long before the first token")
        .unwrap()
        .unwrap();
    let run = res.headers()["x-run-id"].to_str().unwrap().to_owned();
    assert_eq!(first, format!(": open\nid: {run}-0\n\n").as_bytes());
    let rest = res.text().await.unwrap();
    assert!(rest.contains(r#""done":true"#), "{rest}");
}

#[tokio::test]
async fn keep_alive_comments_during_a_slow_first_token() {
    let fake = FakeOpenAi::start_with(Behaviour {
        first_chunk_delay: Duration::from_millis(1300),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |c| c.sse_keepalive = Duration::from_millis(200)).await;
    let events = read_sse(open(&app, json!({"message": "hi"})).await).await;
    assert!(
        events[0].1.comments >= 3,
        "keep-alive comments before the first frame: {events:?}"
    );
}

#[tokio::test]
async fn get_stream_serves_event_source() {
    let app = TestApp::echo(|_| {}).await;
    let res = app
        .client
        .get(format!(
            "{}/chat/stream?message=hello%20world&conversation_id=g1",
            app.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let events = read_sse(res).await;
    let text = common::content_of(&events[..events.len() - 1]);
    assert_eq!(text, "Echo: hello world");
    let done: Value = serde_json::from_str(&events.last().unwrap().1.data).unwrap();
    assert_eq!(done["conversation_id"], "g1");
    let res = app
        .client
        .get(format!(
            "{}/chat/stream?message=hi&temperature=hot",
            app.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["detail"][0]["loc"], json!(["query", "temperature"]));
}
