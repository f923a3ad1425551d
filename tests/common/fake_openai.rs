//! A fake OpenAI upstream on a random port: the real wire format (a `chat.completion` JSON, or a
//! chunked `text/event-stream` of `chat.completion.chunk`s ending with `data: [DONE]`), with knobs
//! for failures, and a record of what it was sent and of streams cut short by the client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Behaviour {
    /// The answer; streamed in `chunks` pieces split at word boundaries.
    pub content: String,
    pub chunks: usize,
    /// Non-200: answer this status with an OpenAI error body.
    pub status: u16,
    /// Wait before answering at all (headers included).
    pub delay: Duration,
    /// Non-streamed calls only: wait this much more before answering.
    pub unary_delay: Duration,
    /// Streams: wait after the headers before the first chunk.
    pub first_chunk_delay: Duration,
    /// Streams: wait between chunks.
    pub chunk_delay: Duration,
    /// Answer 200 with a body that is not JSON.
    pub garbage: bool,
    /// Streams: stop after this many content chunks, without a finish chunk or `[DONE]`.
    pub stop_after: Option<usize>,
    /// With `stop_after`: break the connection instead of ending the body cleanly.
    pub abort: bool,
    /// Send usage (in the completion, or as a last chunk when asked for).
    pub usage: bool,
    /// With a non-200 `status`: send this `Retry-After` (seconds).
    pub retry_after: Option<u64>,
    /// Streams: send this as the `data:` of the second content chunk instead of the chunk.
    pub bad_chunk: Option<String>,
    /// With a non-200 `status`: the error's `message` and `code` instead of the default ones.
    pub error: Option<(String, String)>,
    /// `GET /v1/models` answers this status (the `/ready` probe).
    pub models_status: u16,
    /// When the request offers tools (and `tool_choice` is not `"none"`): answer with these
    /// calls (name, arguments text) while the request holds fewer than `tool_rounds` assistant
    /// messages with tool calls; then answer `content`. Streamed, each call's arguments come
    /// in three fragments, the calls' fragments interleaved.
    pub tool_calls: Vec<(String, String)>,
    pub tool_rounds: usize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            content: "Hello from the fake upstream".into(),
            chunks: 5,
            status: 200,
            delay: Duration::ZERO,
            unary_delay: Duration::ZERO,
            first_chunk_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            garbage: false,
            stop_after: None,
            abort: false,
            usage: true,
            retry_after: None,
            bad_chunk: None,
            error: None,
            models_status: 200,
            tool_calls: Vec::new(),
            tool_rounds: 1,
        }
    }
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Value>>,
    auth_headers: Mutex<Vec<String>>,
    /// Streams whose body was dropped before it was all sent (the client went away).
    cancelled: AtomicUsize,
    /// Streams sent to the end.
    finished: AtomicUsize,
    /// `GET /v1/models` calls.
    models: AtomicUsize,
}

#[derive(Clone)]
pub struct FakeOpenAi {
    /// Base URL including `/v1`.
    pub url: String,
    shared: Arc<Shared>,
}

pub const USAGE: (u64, u64, u64) = (11, 7, 18);

impl FakeOpenAi {
    pub async fn start() -> Self {
        Self::start_with(Behaviour::default()).await
    }

    pub async fn start_with(behaviour: Behaviour) -> Self {
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            ..Default::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/v1/models", get(models))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        #[expect(
            clippy::disallowed_methods,
            reason = "the fake server is test scaffolding"
        )]
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, shared }
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.behaviour.lock().unwrap());
    }

    /// Every chat request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn auth_headers(&self) -> Vec<String> {
        self.shared.auth_headers.lock().unwrap().clone()
    }

    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    pub fn finished(&self) -> usize {
        self.shared.finished.load(Ordering::SeqCst)
    }

    /// How many times `GET /v1/models` was called.
    pub fn models_calls(&self) -> usize {
        self.shared.models.load(Ordering::SeqCst)
    }
}

fn split_words(text: &str, n: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let n = n.max(1).min(words.len().max(1));
    let per = words.len().div_ceil(n);
    words.chunks(per.max(1)).map(|c| c.concat()).collect()
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": model, "system_fingerprint": null,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    shared.models.fetch_add(1, Ordering::SeqCst);
    let status = shared.behaviour.lock().unwrap().models_status;
    if status != 200 {
        let body = json!({"error": {"message": "models down: secret-internal-detail",
            "type": "server_error", "param": null, "code": null}});
        return (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
    }
    Json(json!({"object": "list", "data": [
        {"id": "fake-model", "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
    ]}))
    .into_response()
}

/// Counts a stream as cancelled when its body is dropped before the end.
struct DropGuard {
    shared: Arc<Shared>,
    done: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let counter = if self.done {
            &self.shared.finished
        } else {
            &self.shared.cancelled
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let req: Value = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()));
    shared.requests.lock().unwrap().push(req.clone());
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        shared
            .auth_headers
            .lock()
            .unwrap()
            .push(a.to_str().unwrap_or("").to_owned());
    }
    let b = shared.behaviour.lock().unwrap().clone();
    tokio::time::sleep(b.delay).await;
    if b.status != 200 {
        let status = StatusCode::from_u16(b.status).unwrap();
        let (message, code) = match &b.error {
            Some((m, c)) => (m.clone(), json!(c)),
            None => (format!("fake upstream says {}", b.status), Value::Null),
        };
        let body = json!({"error": {"message": message,
            "type": "server_error", "param": null, "code": code}});
        let mut res = (status, Json(body)).into_response();
        if let Some(secs) = b.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
        }
        return res;
    }
    if b.garbage {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            "<html>this is not json</html>",
        )
            .into_response();
    }
    let model = req["model"].as_str().unwrap_or("unknown").to_owned();
    let usage =
        json!({"prompt_tokens": USAGE.0, "completion_tokens": USAGE.1, "total_tokens": USAGE.2});
    let rounds = req["messages"].as_array().map_or(0, |m| {
        m.iter().filter(|m| m["tool_calls"].is_array()).count()
    });
    let offered = req["tools"].as_array().is_some_and(|t| !t.is_empty());
    let calling = offered
        && req["tool_choice"] != json!("none")
        && !b.tool_calls.is_empty()
        && rounds < b.tool_rounds;
    if calling {
        return tool_answer(&req, &b, &model, usage, rounds);
    }
    if req["stream"] != json!(true) {
        tokio::time::sleep(b.unary_delay).await;
        let mut completion = json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000,
            "model": model, "system_fingerprint": null,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": b.content, "refusal": null},
                "logprobs": null, "finish_reason": "stop"}],
        });
        if b.usage {
            completion["usage"] = usage;
        }
        return Json(completion).into_response();
    }
    let include_usage = b.usage && req["stream_options"]["include_usage"] == json!(true);
    let mut events: Vec<Value> = vec![chunk(
        &model,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    let pieces = split_words(&b.content, b.chunks);
    let content_count = pieces.len();
    for (i, p) in pieces.into_iter().enumerate() {
        match &b.bad_chunk {
            Some(bad) if i == 1 => events.push(Value::String(bad.clone())),
            _ => events.push(chunk(&model, json!({"content": p}), None)),
        }
    }
    events.push(chunk(&model, json!({}), Some("stop")));
    if include_usage {
        let mut u = chunk(&model, json!({}), None);
        u["choices"] = json!([]);
        u["usage"] = usage;
        events.push(u);
    }
    let cut = b.stop_after.map(|n| n + 1); // + the role chunk
    let guard = DropGuard {
        shared: Arc::clone(&shared),
        done: false,
    };
    let state = (events.into_iter().enumerate(), guard, false);
    // Shared, not cloned per chunk: the content may be many MiB.
    let b = Arc::new(b);
    let stream = futures::stream::unfold(state, move |(mut it, mut guard, ended)| {
        let b = Arc::clone(&b);
        async move {
            if ended {
                return None;
            }
            match it.next() {
                Some((i, ev)) => {
                    if cut == Some(i) {
                        guard.done = true;
                        if b.abort {
                            return Some((
                                Err(std::io::Error::other("fake upstream breaks the connection")),
                                (it, guard, true),
                            ));
                        }
                        return None;
                    }
                    if i == 1 {
                        tokio::time::sleep(b.first_chunk_delay).await;
                    } else if i > 1 && i <= content_count {
                        tokio::time::sleep(b.chunk_delay).await;
                    }
                    let data = match ev {
                        Value::String(raw) => raw,
                        ev => ev.to_string(),
                    };
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from(format!("data: {data}\n\n"))),
                        (it, guard, false),
                    ))
                }
                None => {
                    guard.done = true;
                    Some((
                        Ok(Bytes::from_static(b"data: [DONE]\n\n")),
                        (it, guard, true),
                    ))
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// An answer that calls `b.tool_calls` (ids `call_<round>_<i>`), whole or streamed.
fn tool_answer(req: &Value, b: &Behaviour, model: &str, usage: Value, round: usize) -> Response {
    let ids: Vec<String> = (0..b.tool_calls.len())
        .map(|i| format!("call_{round}_{i}"))
        .collect();
    if req["stream"] != json!(true) {
        let calls: Vec<Value> = b.tool_calls.iter().zip(&ids).map(|((name, args), id)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
        }).collect();
        return Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000,
            "model": model, "system_fingerprint": null,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "tool_calls": calls, "refusal": null}, "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": usage,
        }))
        .into_response();
    }
    let mut events = vec![chunk(
        model,
        json!({"role": "assistant", "content": null}),
        None,
    )];
    for (i, ((name, _), id)) in b.tool_calls.iter().zip(&ids).enumerate() {
        events.push(chunk(
            model,
            json!({"tool_calls": [{"index": i, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
    }
    // Three fragments per call, interleaved: call 0's first, call 1's first, ...
    let thirds: Vec<Vec<String>> = b
        .tool_calls
        .iter()
        .map(|(_, args)| {
            let chars: Vec<char> = args.chars().collect();
            let n = chars.len().div_ceil(3).max(1);
            chars.chunks(n).map(|c| c.iter().collect()).collect()
        })
        .collect();
    for piece in 0..3 {
        for (i, parts) in thirds.iter().enumerate() {
            if let Some(p) = parts.get(piece) {
                events.push(chunk(
                    model,
                    json!({"tool_calls": [{"index": i, "function": {"arguments": p}}]}),
                    None,
                ));
            }
        }
    }
    events.push(chunk(model, json!({}), Some("tool_calls")));
    if req["stream_options"]["include_usage"] == json!(true) {
        let mut u = chunk(model, json!({}), None);
        u["choices"] = json!([]);
        u["usage"] = usage;
        events.push(u);
    }
    let mut body = String::new();
    for e in events {
        body.push_str(&format!("data: {e}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    let pieces: Vec<Result<Bytes, std::io::Error>> = body
        .split_inclusive("\n\n")
        .map(|p| Ok(Bytes::from(p.to_owned())))
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(futures::stream::iter(pieces)))
        .unwrap()
}
