//! Nothing stuck, nothing lost, nothing run twice (API.md): clients that stop reading, busy and
//! deleted conversations, turn deadlines, and the bound on a streamed answer. Each test here
//! failed on the code before the lifecycle work.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::{Behaviour, FakeOpenAi, TestApp};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// An answer of `pieces` pieces of `kib` KiB each.
fn big_answer(pieces: usize, kib: usize) -> Behaviour {
    let word = format!("{} ", "x".repeat(kib * 1024 - 1));
    Behaviour {
        content: word.repeat(pieces),
        chunks: pieces,
        ..Default::default()
    }
}

/// A TCP connection to `app` whose receive window is as small as the kernel allows.
async fn tiny_window(app: &TestApp) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    socket.connect(app.addr).await.unwrap()
}

/// Creates the conversation `id` with one short turn.
async fn converse(app: &TestApp, id: &str) {
    let (status, body) = app
        .post("/chat", json!({"message": "hello", "conversation_id": id}))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A server with a 1 s write timeout and an 8 s turn wait, the conversation `id`, and an upstream
/// that will answer 8 MiB.
async fn about_to_stall(id: &str) -> (FakeOpenAi, TestApp) {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| {
        c.stream_write_timeout = Duration::from_secs(1);
        c.turn_wait = Duration::from_secs(8);
    })
    .await;
    converse(&app, id).await;
    fake.set(|b| *b = big_answer(8 * 1024, 1));
    (fake, app)
}

/// After a client stopped reading a turn on conversation `id`: the conversation is usable again
/// within the write timeout (the turn wait is far longer: before, this waited for it and got
/// 409, or forever), and the stuck turn's upstream call was cancelled, not left running.
async fn free_again(app: &TestApp, fake: &FakeOpenAi, id: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.set(|b| *b = Behaviour::default());
    let started = Instant::now();
    let (status, body) = app
        .post(
            "/chat",
            json!({"message": "anyone?", "conversation_id": id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "{took:?}");
    let cancelled = eventually(5, || fake.cancelled() >= 1).await;
    assert!(cancelled, "upstream call not cancelled");
}

/// Polls until `f` holds, for at most `secs`.
async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test]
async fn an_sse_client_that_stops_reading_lets_go_of_its_conversation_and_upstream() {
    let (fake, app) = about_to_stall("held").await;
    // A client that sends its request and never reads a byte of the answer.
    let mut stuck = tiny_window(&app).await;
    let body = json!({"message": "tell me everything", "conversation_id": "held"}).to_string();
    let request = format!(
        "POST /chat/stream HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stuck.write_all(request.as_bytes()).await.unwrap();
    free_again(&app, &fake, "held").await;
    // And the server let go of the connection: reading now finds its end.
    let mut sink = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stuck.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection was still open");
    assert_eq!(app.state.metrics.open_streams.get(), 0);
}

/// The bytes of one masked client text frame.
fn ws_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn a_websocket_that_stops_reading_lets_go_of_its_conversation_and_upstream() {
    let (fake, app) = about_to_stall("ws-held").await;
    let mut ws = tiny_window(&app).await;
    ws.write_all(
        b"GET /ws/stuck HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    // Read the 101 only, then send a message and never read again.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let msg = json!({"message": "tell me everything", "conversation_id": "ws-held"}).to_string();
    ws.write_all(&ws_text_frame(msg.as_bytes())).await.unwrap();
    free_again(&app, &fake, "ws-held").await;
    assert!(
        eventually(10, || app.state.metrics.open_websockets.get() == 0).await,
        "the socket was still open"
    );
}

#[tokio::test]
async fn if_busy_reject_answers_409_at_once_and_a_bad_value_is_422() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| c.turn_wait = Duration::from_secs(20)).await;
    converse(&app, "busy").await;
    fake.set(|b| b.delay = Duration::from_secs(2));
    let holder = {
        let app_url = app.url.clone();
        let client = app.client.clone();
        async move {
            client
                .post(format!("{app_url}/chat"))
                .json(&json!({"message": "slow", "conversation_id": "busy"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    #[expect(clippy::disallowed_methods, reason = "the holder runs beside the test")]
    let holder = tokio::spawn(holder);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let res = app
        .client
        .post(format!("{}/chat/stream", app.url))
        .json(&json!({"message": "now", "conversation_id": "busy", "if_busy": "reject"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.headers()["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = app
        .post(
            "/chat",
            json!({"message": "now", "conversation_id": "busy", "if_busy": "later"}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "if_busy"]));
    // `wait` (the default) waits for the running turn and then runs.
    let (status, body) = app
        .post(
            "/chat",
            json!({"message": "after", "conversation_id": "busy", "if_busy": "wait"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(holder.await.unwrap(), 200);
    let (_, conv) = app.get("/conversation/busy").await;
    assert_eq!(conv["messages"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn a_delete_during_a_turn_wins() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    converse(&app, "doomed").await;
    fake.set(|b| b.delay = Duration::from_millis(800));
    let turn = {
        let url = app.url.clone();
        let client = app.client.clone();
        async move {
            let res = client
                .post(format!("{url}/chat"))
                .json(&json!({"message": "last words", "conversation_id": "doomed"}))
                .send()
                .await
                .unwrap();
            common::answer(res).await
        }
    };
    #[expect(clippy::disallowed_methods, reason = "the turn runs beside the DELETE")]
    let turn = tokio::spawn(turn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = app.delete("/conversation/doomed").await;
    assert_eq!(status, 200);
    let (status, body) = turn.await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("deleted"),
        "{body}"
    );
    let (status, _) = app.get("/conversation/doomed").await;
    assert_eq!(status, 404, "the DELETE was undone by the turn");

    // The same for a streamed turn: its last frame says so.
    converse(&app, "doomed2").await;
    fake.set(|b| {
        b.delay = Duration::ZERO;
        b.chunks = 4;
        b.chunk_delay = Duration::from_millis(300);
    });
    let res = app
        .client
        .post(format!("{}/chat/stream", app.url))
        .json(&json!({"message": "last words", "conversation_id": "doomed2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, _) = app.delete("/conversation/doomed2").await;
    assert_eq!(status, 200);
    let events = common::read_sse(res).await;
    let last = &events.last().unwrap().1;
    assert_eq!(last.event.as_deref(), Some("error"), "{last:?}");
    assert!(last.data.contains("deleted"), "{last:?}");
    let (status, _) = app.get("/conversation/doomed2").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_turn_past_turn_timeout_fails_with_504_and_leaves_the_conversation() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| {
        c.turn_timeout = Duration::from_millis(800);
        c.upstream_timeout = Duration::from_secs(30);
    })
    .await;
    converse(&app, "slow").await;
    // A model that answers, but slower than the turn may take in all.
    fake.set(|b| {
        b.chunks = 20;
        b.chunk_delay = Duration::from_millis(100);
        b.content = "one two three four five six seven eight nine ten eleven twelve \
                     thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
            .into();
    });
    let started = Instant::now();
    let res = app
        .client
        .post(format!("{}/chat/stream", app.url))
        .json(&json!({"message": "take your time", "conversation_id": "slow"}))
        .send()
        .await
        .unwrap();
    let events = common::read_sse(res).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let last = &events.last().unwrap().1;
    assert_eq!(last.event.as_deref(), Some("error"), "{last:?}");
    assert!(last.data.contains("did not answer within"), "{last:?}");
    fake.set(|b| b.delay = Duration::from_secs(3));
    let (status, body) = app
        .post(
            "/chat",
            json!({"message": "and you?", "conversation_id": "slow"}),
        )
        .await;
    assert_eq!(status, 504, "{body}");
    let (_, conv) = app.get("/conversation/slow").await;
    assert_eq!(conv["messages"].as_array().unwrap().len(), 3, "{conv}");
}

#[tokio::test]
async fn a_streamed_answer_over_16_mib_fails_with_an_error_frame() {
    let fake = FakeOpenAi::start_with(big_answer(17 * 16, 64)).await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = app
        .client
        .post(format!("{}/chat/stream", app.url))
        .json(&json!({"message": "everything"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let events = common::read_sse(res).await;
    let last = &events.last().unwrap().1;
    assert_eq!(last.event.as_deref(), Some("error"), "{last:?}");
    assert!(last.data.contains("larger than"), "{last:?}");
    let text: usize = events
        .iter()
        .filter_map(|(_, e)| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|v| v["content"].as_str().map(str::len))
        .sum();
    assert!(text <= 16 << 20, "{text}");
}
