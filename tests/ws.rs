//! `WS /ws/{client_id}`: chat, continuity, bad frames, cancel, replacement, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{Behaviour, FakeOpenAi, TestApp};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, client_id: &str) -> Ws {
    connect_async(app.ws_url(&format!("/ws/{client_id}")))
        .await
        .unwrap()
        .0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON frame (pings are skipped), or the close frame as `{"close": code}`.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("socket open")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(frame) => {
                return json!({"close": frame.as_ref().map(|f| u16::from(f.code)),
                    "reason": frame.map(|f| f.reason.to_string())});
            }
            _ => continue,
        }
    }
}

/// Reads content frames until `done` (or an error); returns the text and the last frame.
async fn reply(ws: &mut Ws) -> (String, Value) {
    let mut text = String::new();
    loop {
        let v = next(ws).await;
        if let Some(c) = v["content"].as_str() {
            text.push_str(c);
        } else {
            return (text, v);
        }
    }
}

#[tokio::test]
async fn chat_over_a_socket_keeps_one_conversation() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let mut ws = connect(&app, "client-1").await;
    send(
        &mut ws,
        json!({"message": "hello", "system_prompt": "Be nice."}),
    )
    .await;
    let (text, done) = reply(&mut ws).await;
    assert_eq!(text, "Hello from the fake upstream");
    assert_eq!(done["done"], true);
    assert_eq!(done["tokens_used"], 18);
    let conv = done["conversation_id"].as_str().unwrap().to_owned();

    send(&mut ws, json!({"message": "and again"})).await;
    let (_, done2) = reply(&mut ws).await;
    assert_eq!(done2["conversation_id"], conv.as_str(), "same conversation");
    assert_eq!(fake.requests()[1]["messages"].as_array().unwrap().len(), 4);
    assert_eq!(fake.requests()[1]["messages"][0]["content"], "Be nice.");

    // Naming another conversation switches to it.
    send(
        &mut ws,
        json!({"message": "elsewhere", "conversation_id": "other"}),
    )
    .await;
    let (_, done3) = reply(&mut ws).await;
    assert_eq!(done3["conversation_id"], "other");
    let (_, c) = app.get(&format!("/conversation/{conv}")).await;
    assert_eq!(c["message_count"], 5);
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_socket_stays_open() {
    let app = TestApp::echo(|c| c.ws_max_message_bytes = 1000).await;
    let mut ws = connect(&app, "c2").await;
    for bad in [
        Message::text("not json"),
        Message::text("[1,2]"),
        Message::text(json!({"nomessage": 1}).to_string()),
        Message::text(json!({"message": ""}).to_string()),
        Message::text(json!({"message": "x".repeat(2000)}).to_string()),
    ] {
        ws.send(bad.clone()).await.unwrap();
        let v = next(&mut ws).await;
        assert!(v["error"].is_string(), "{bad:?} -> {v}");
    }
    send(&mut ws, json!({"message": "fine now"})).await;
    let (text, done) = reply(&mut ws).await;
    assert_eq!(text, "Echo: fine now");
    assert_eq!(done["done"], true);
}

#[tokio::test]
async fn upstream_failure_is_an_error_frame() {
    let fake = FakeOpenAi::start_with(Behaviour {
        status: 500,
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let mut ws = connect(&app, "c3").await;
    send(&mut ws, json!({"message": "hi"})).await;
    let v = next(&mut ws).await;
    assert!(v["error"].as_str().unwrap().contains("500"), "{v}");
    fake.set(|b| b.status = 200);
    send(&mut ws, json!({"message": "hi"})).await;
    let (_, done) = reply(&mut ws).await;
    assert_eq!(done["done"], true);
}

#[tokio::test]
async fn cancel_stops_the_reply_and_the_upstream_call() {
    let fake = FakeOpenAi::start_with(Behaviour {
        chunks: 10,
        chunk_delay: Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let mut ws = connect(&app, "c4").await;
    send(
        &mut ws,
        json!({"message": "long answer please", "conversation_id": "wc"}),
    )
    .await;
    let first = next(&mut ws).await;
    assert!(first["content"].is_string(), "{first}");
    send(&mut ws, json!({"type": "cancel"})).await;
    let mut v = next(&mut ws).await;
    while v.get("content").is_some() {
        v = next(&mut ws).await;
    }
    assert_eq!(v, json!({"cancelled": true}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while fake.cancelled() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = app.get("/conversation/wc").await;
    assert_eq!(status, 404, "a cancelled reply is not saved");
    // The socket still works.
    fake.set(|b| b.chunk_delay = Duration::ZERO);
    send(&mut ws, json!({"message": "short"})).await;
    let (_, done) = reply(&mut ws).await;
    assert_eq!(done["done"], true);
}

#[tokio::test]
async fn a_second_socket_with_the_same_id_replaces_the_first() {
    let app = TestApp::echo(|_| {}).await;
    let mut first = connect(&app, "same").await;
    let mut second = connect(&app, "same").await;
    let closed = next(&mut first).await;
    assert_eq!(closed["close"], 4000, "{closed}");
    assert!(closed["reason"].as_str().unwrap().contains("replaced"));
    send(&mut second, json!({"message": "still here"})).await;
    let (text, _) = reply(&mut second).await;
    assert_eq!(text, "Echo: still here");
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let app = TestApp::echo(|_| {}).await;
    let mut ws = connect(&app, "bye").await;
    send(&mut ws, json!({"message": "hi"})).await;
    reply(&mut ws).await;
    let stopping = tokio::spawn_stop(app);
    let closed = next(&mut ws).await;
    assert_eq!(closed["close"], 1001, "{closed}");
    stopping.await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_a_reply_run_within_the_grace_then_says_so_and_closes_1001() {
    let fake = FakeOpenAi::start_with(Behaviour {
        chunks: 50,
        chunk_delay: Duration::from_millis(100),
        content: "word ".repeat(50),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |c| c.shutdown_grace = Duration::from_secs(1)).await;
    let mut ws = connect(&app, "long").await;
    send(&mut ws, json!({"message": "a long one"})).await;
    assert!(next(&mut ws).await["content"].is_string());
    let stopping = tokio::spawn_stop(app);
    // The reply goes on while the grace lasts (5 s of answer, 1 s of grace).
    let mut contents = 0;
    let last = loop {
        let v = next(&mut ws).await;
        if v["content"].is_string() {
            contents += 1;
        } else {
            break v;
        }
    };
    assert!(contents >= 3, "{contents}");
    assert_eq!(
        last,
        json!({"error": "server shutting down", "retryable": true})
    );
    assert_eq!(next(&mut ws).await["close"], 1001);
    stopping.await.unwrap();
}

#[tokio::test]
async fn idle_sockets_are_closed_and_pings_are_sent() {
    let app = TestApp::echo(|c| {
        c.ws_ping = Duration::from_millis(100);
        c.ws_idle_timeout = Duration::from_millis(600);
    })
    .await;
    let mut ws = connect(&app, "idle").await;
    let mut pings = 0;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(f))) => break f,
            other => panic!("{other:?}"),
        }
    };
    assert!(pings >= 3, "{pings} pings");
    assert_eq!(u16::from(closed.unwrap().code), 1000);
}

/// `TestApp::stop` in the background, so that the test can watch the socket meanwhile.
mod tokio {
    pub use ::tokio::*;
    pub fn spawn_stop(app: super::TestApp) -> ::tokio::task::JoinHandle<()> {
        #[expect(clippy::disallowed_methods, reason = "the stop runs beside the test")]
        ::tokio::spawn(app.stop())
    }
}

#[tokio::test]
async fn a_socket_turn_is_a_run_that_replays_over_sse() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let mut ws = connect(&app, "client-run").await;
    // `continue` is checked but a socket's turn follows its socket.
    send(
        &mut ws,
        json!({"message": "hi", "on_disconnect": "continue"}),
    )
    .await;
    let (text, done) = reply(&mut ws).await;
    assert_eq!(done["done"], true, "{done}");
    let run = done["run_id"].as_str().unwrap().to_owned();
    let (s, info) = app.get(&format!("/runs/{run}")).await;
    assert_eq!(s, 200);
    assert_eq!(info["status"], "completed");
    assert_eq!(info["conversation_id"], done["conversation_id"]);
    // The same log over SSE: the same pieces, the same done frame.
    let res = app
        .client
        .get(format!("{}/runs/{run}/events", app.url))
        .send()
        .await
        .unwrap();
    let events = common::read_sse(res).await;
    let last = events.last().unwrap();
    assert_eq!(common::content_of(&events), text);
    assert_eq!(serde_json::from_str::<Value>(&last.1.data).unwrap(), done);
}
