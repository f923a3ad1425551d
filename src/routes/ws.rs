//! `WS /ws/{client_id}`: chat over a WebSocket.
//!
//! In: `{"message", "conversation_id"?, "system_prompt"?, ...}` (any `/chat` field), or
//! `{"type": "cancel"}` to stop the reply in progress. Out: `{"content"}` frames (and, in a turn
//! of an agent with tools, `{"tool_call": {...}}` and `{"tool_result": {...}}`), then
//! `{"done": true, "conversation_id", "tokens_used", "run_id"}` (`"steps"` added in an agent's turn); a bad frame or a failure gets
//! `{"error"}` and the socket stays open. One conversation per socket unless the client names
//! another. Server pings keep it alive; an idle socket is closed; a second socket with the same
//! `client_id` (and key) replaces the first; a client that takes nothing for
//! `STREAM_WRITE_TIMEOUT_SECS` is gone (its reply's turn is cancelled). Shutdown closes an idle
//! socket with 1001 at once, and one with a reply in progress when the reply ends or at the
//! end of the grace (after `{"error": "server shutting down", "retryable": true}`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use futures::stream::BoxStream;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent;
use crate::error::{ApiError, FieldError};
use crate::metrics::GaugeGuard;
use crate::middleware::auth::Caller;
use crate::middleware::rate_limit::ClientIp;
use crate::openapi::{DetailError, ValidationError};
use crate::routes::chat::{ChatInput, valid_id};
use crate::state::AppState;

/// The close code sent to a socket replaced by a newer one with the same client id.
pub const CLOSE_REPLACED: u16 = 4000;

/// The open sockets by owner and client id, so that a newer socket can replace an older one.
#[derive(Default)]
pub struct SocketRegistry {
    next: AtomicU64,
    open: DashMap<String, (u64, CancellationToken)>,
}

impl SocketRegistry {
    /// Registers a socket, cancelling the one it replaces.
    fn register(&self, key: &str) -> (u64, CancellationToken) {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        if let Some((_, old)) = self
            .open
            .insert(key.to_owned(), (generation, token.clone()))
        {
            old.cancel();
        }
        (generation, token)
    }

    fn unregister(&self, key: &str, generation: u64) {
        self.open.remove_if(key, |_, (g, _)| *g == generation);
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Waits until every socket has closed (shutdown).
    pub async fn all_closed(&self) {
        while !self.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[utoipa::path(get, path = "/ws/{client_id}", tag = "chat", params(("client_id" = String, Path)),
    description = "WebSocket chat. In: `{\"message\", \"conversation_id\"?, \"system_prompt\"?, \"agent\"?, ...}` (any `/chat` field) or `{\"type\": \"cancel\"}`. Out: `{\"content\"}` frames (in an agent's turn also `{\"tool_call\": {id, name, arguments}}` and `{\"tool_result\": {id, name, result | error, duration_ms}}`), then `{\"done\": true, \"conversation_id\", \"tokens_used\", \"run_id\"}` (with `\"steps\"` in an agent's turn; the turn is a run: `GET /runs/{run_id}/events` replays it); `{\"error\"}` on a bad frame or failure (the socket stays open). Close codes: 1000 idle, 1001 shutdown, 4000 replaced.",
    responses((status = 101, description = "Switching protocols"),
        (status = 400, description = "Not a WebSocket upgrade", body = DetailError),
        (status = 401, body = DetailError),
        (status = 403, description = "No keys are configured and the Host is not a loopback name", body = DetailError),
        (status = 422, description = "A `client_id` that is not 1 to 128 of `[A-Za-z0-9_-]`", body = ValidationError),
        (status = 429, description = "Rate limited, or the key's streams are at MAX_STREAMS_PER_KEY", body = DetailError)),
    security(("api_key" = []), ("bearer" = []), ("api_key_query" = [])))]
pub async fn connect(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    State(state): State<AppState>,
    caller: Caller,
    ip: Option<axum::Extension<ClientIp>>,
    Path(client_id): Path<String>,
) -> Response {
    if !valid_id(&client_id) {
        return ApiError::Validation(vec![FieldError {
            loc: vec![json!("path"), json!("client_id")],
            msg: "String should be 1 to 128 characters of A-Z, a-z, 0-9, _ or -".into(),
            kind: "string_pattern_mismatch".into(),
        }])
        .into_response();
    }
    // A plain GET (no upgrade headers) gets a JSON error, like every other bad request.
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let body = json!({"detail": rejection.body_text()});
            return (rejection.status(), axum::Json(body)).into_response();
        }
    };
    // The socket is a stream of its key for as long as it is open.
    let permit = match state.open_stream(&caller.owner).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let ip = ip.map(|e| e.0.0).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    // Frames up to 4x the message limit are read (and refused politely); beyond that the
    // connection is dropped, so that memory per socket stays bounded.
    let hard_cap = state.config.ws_max_message_bytes.saturating_mul(4);
    // tungstenite's default 128 KiB read buffer is most of an idle socket's memory; frames are
    // small here, and `max_write_buffer_size` bounds what a slow reader can pile up.
    ws.max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(hard_cap.max(64 * 1024))
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            let key = format!("{}\u{0}{}", caller.owner, client_id);
            let (generation, replaced) = state.sockets.register(&key);
            let (tx, rx) = socket.split();
            let session = Session {
                state: state.clone(),
                owner: caller.owner,
                ip,
                replaced,
            };
            session.run(tx, rx).await;
            state.sockets.unregister(&key, generation);
        })
}

struct Session {
    state: AppState,
    owner: String,
    ip: IpAddr,
    replaced: CancellationToken,
}

type Reply = BoxStream<'static, Value>;

fn text(v: &Value) -> Message {
    Message::Text(Utf8Bytes::from(v.to_string()))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

impl Session {
    /// The socket loop, generic over the sink and stream so that channels can stand in for a
    /// socket in tests. One task: the reply in progress is a stream polled beside the socket.
    async fn run<Tx, Rx, E>(self, mut tx: Tx, mut rx: Rx)
    where
        Tx: Sink<Message> + Unpin,
        Rx: Stream<Item = Result<Message, E>> + Unpin,
    {
        let _open = GaugeGuard::new(&self.state.metrics.open_websockets);
        let cfg = Arc::clone(&self.state.config);
        let closing = self.state.closing.clone();
        let stop = self.state.runner.shutdown_token();
        // Every write is bounded: a client that takes nothing for STREAM_WRITE_TIMEOUT_SECS is
        // gone (its reply is dropped, which cancels its turn).
        let limit = cfg.stream_write_timeout;
        let mut ping = tokio::time::interval_at(Instant::now() + cfg.ws_ping, cfg.ws_ping);
        let mut last_seen = Instant::now();
        let mut reply: Option<Reply> = None;
        let mut conversation: Option<String> = None;
        // Frames that do not call the model (cancel, pings, bad frames), in the current minute.
        let mut frames = FrameWindow::new(cfg.ws_max_frames_per_minute);
        loop {
            let idle_deadline = last_seen + cfg.ws_idle_timeout;
            tokio::select! {
                biased;
                // Shutdown: a reply in progress may finish within the grace; then 1001.
                _ = closing.cancelled(), if reply.is_none() => {
                    deliver(&mut tx, close(close_code::AWAY, "server shutting down"), limit, &stop).await;
                    break;
                }
                _ = stop.cancelled() => {
                    let over = json!({"error": "server shutting down", "retryable": true});
                    if reply.is_none() || last_words(&mut tx, text(&over)).await {
                        last_words(&mut tx, close(close_code::AWAY, "server shutting down")).await;
                    }
                    break;
                }
                _ = self.replaced.cancelled() => {
                    deliver(&mut tx, close(CLOSE_REPLACED, "replaced by a newer connection"), limit, &stop).await;
                    break;
                }
                Some(out) = next_of(&mut reply) => {
                    if out.get("done").is_some() {
                        conversation = out["conversation_id"].as_str().map(str::to_owned);
                    }
                    let finished = out.get("done").is_some() || out.get("error").is_some();
                    if finished {
                        reply = None;
                    }
                    if !deliver(&mut tx, text(&out), limit, &stop).await {
                        break;
                    }
                }
                incoming = rx.next() => {
                    let Some(Ok(msg)) = incoming else { break };
                    let data = match msg {
                        Message::Text(t) => Some(t.as_str().to_owned()),
                        Message::Binary(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                        Message::Close(_) => break,
                        // Pongs answer our pings; they say the peer is there, not that it is
                        // using the socket, so they do not reset the idle timer.
                        Message::Ping(_) | Message::Pong(_) => None,
                    };
                    let was_idle = reply.is_none();
                    let answer = data.and_then(|d| self.handle(&d, &mut reply, &conversation));
                    if was_idle && reply.is_some() {
                        // Only a message that calls the model resets the idle timer.
                        last_seen = Instant::now();
                    } else if !frames.take() {
                        let over = json!({"error": format!(
                            "more than {} frames a minute that do not call the model",
                            cfg.ws_max_frames_per_minute
                        )});
                        if deliver(&mut tx, text(&over), limit, &stop).await {
                            deliver(&mut tx, close(close_code::POLICY, "too many frames"), limit, &stop).await;
                        }
                        break;
                    }
                    if let Some(answer) = answer
                        && !deliver(&mut tx, text(&answer), limit, &stop).await
                    {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if !deliver(&mut tx, Message::Ping(Default::default()), limit, &stop).await {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline), if reply.is_none() => {
                    deliver(&mut tx, close(close_code::NORMAL, "idle timeout"), limit, &stop).await;
                    break;
                }
            }
        }
        // Dropping `reply` here cancels the upstream call of a reply still running.
        drop(reply);
        let limit = if stop.is_cancelled() {
            Duration::from_secs(1)
        } else {
            limit
        };
        let _ = tokio::time::timeout(limit, tx.close()).await;
    }

    /// Handles one client frame; returns an immediate answer, if any.
    fn handle(
        &self,
        data: &str,
        reply: &mut Option<Reply>,
        conversation: &Option<String>,
    ) -> Option<Value> {
        let max = self.state.config.ws_max_message_bytes;
        if data.len() > max {
            return Some(json!({"error": format!("message larger than {max} bytes")}));
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Some(json!({"error": "frames must be JSON objects"})),
        };
        if value.get("type").and_then(Value::as_str) == Some("cancel") {
            return Some(match reply.take() {
                Some(_) => json!({"cancelled": true}),
                None => json!({"error": "no reply in progress"}),
            });
        }
        if reply.is_some() {
            return Some(
                json!({"error": "a reply is in progress; send {\"type\": \"cancel\"} to stop it"}),
            );
        }
        let mut input: ChatInput = match serde_json::from_value(value) {
            Ok(i) => i,
            Err(e) => return Some(json!({"error": format!("invalid message: {e}")})),
        };
        if input.conversation_id.is_none() {
            input.conversation_id = conversation.clone();
        }
        let mut turn = match input.validate(&self.state.config, &self.state.agents, "body") {
            Ok(t) => t,
            Err(e) => return Some(json!({"error": e.message()})),
        };
        // A WebSocket turn follows its socket: `{"type": "cancel"}` and a socket that goes
        // cancel it, whatever `on_disconnect` says.
        turn.keep_going = false;
        let state = self.state.clone();
        let owner = self.owner.clone();
        let ip = self.ip;
        let started =
            async move {
                // Every message that calls the model counts against the limit, like a request.
                let key = state.keys.enabled().then_some(owner.as_str());
                let refused = match state.limiter.check(ip, key).await {
                    Ok(d) if d.allowed => None,
                    Ok(d) => {
                        state.metrics.rate_limited.inc();
                        Some(ApiError::RateLimited {
                            retry_after: d.reset,
                        })
                    }
                    Err(e) => Some(ApiError::Store(e)),
                };
                if let Some(err) = refused {
                    let frame = json!({"error": err.message()});
                    return futures::stream::once(async move { frame }).boxed();
                }
                match agent::stream_turn(
                    &state.llm,
                    state.conversations.as_ref(),
                    &state.runner,
                    &state.agents,
                    &owner,
                    turn,
                    &state.runs,
                )
                .await
                {
                    Ok(started) => started.events.map(frame_json).boxed(),
                    Err(e) => futures::stream::once(async move {
                        json!({"error": ApiError::from(e).message()})
                    })
                    .boxed(),
                }
            };
        *reply = Some(futures::stream::once(started).flatten().boxed());
        None
    }
}

/// A fixed one-minute window of frames that do not call the model (`WS_MAX_FRAMES_PER_MINUTE`).
struct FrameWindow {
    started: Instant,
    taken: u32,
    max: u32,
}

impl FrameWindow {
    fn new(max: u32) -> Self {
        Self {
            started: Instant::now(),
            taken: 0,
            max,
        }
    }

    /// Counts one frame; false when the minute's allowance is spent.
    fn take(&mut self) -> bool {
        if self.started.elapsed() >= std::time::Duration::from_secs(60) {
            self.started = Instant::now();
            self.taken = 0;
        }
        self.taken += 1;
        self.taken <= self.max
    }
}

/// A frame of the turn's run as the WebSocket sends it: the logged data itself (content and
/// done frames), `{"<event>": data}` for a tool call or result, `{"error": detail}` for an error.
fn frame_json(
    agent::Sent {
        frame: (name, data),
        ..
    }: agent::Sent,
) -> Value {
    let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
    match name {
        None => v,
        Some("error") => json!({ "error": v.get("detail").cloned().unwrap_or(v) }),
        Some(name) => json!({ name: v }),
    }
}

/// Sends one frame within `limit`: false when the client is gone, took nothing for that long,
/// or the shutdown's grace ran out meanwhile (`stop`).
async fn deliver<Tx: Sink<Message> + Unpin>(
    tx: &mut Tx,
    msg: Message,
    limit: Duration,
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        // A frame that goes out at once goes out, whatever else happened.
        biased;
        sent = tokio::time::timeout(limit, tx.send(msg)) => matches!(sent, Ok(Ok(()))),
        () = stop.cancelled() => false,
    }
}

/// The last frames after the grace ran out: a second at most each.
async fn last_words<Tx: Sink<Message> + Unpin>(tx: &mut Tx, msg: Message) -> bool {
    let limit = Duration::from_secs(1);
    matches!(tokio::time::timeout(limit, tx.send(msg)).await, Ok(Ok(())))
}

/// The next item of the reply in progress; pending forever when there is none.
async fn next_of(reply: &mut Option<Reply>) -> Option<Value> {
    match reply {
        Some(r) => match r.next().await {
            Some(v) => Some(v),
            // A reply stream that ended without done or error: report it rather than hang.
            None => Some(json!({"error": "the reply ended unexpectedly"})),
        },
        None => std::future::pending().await,
    }
}
