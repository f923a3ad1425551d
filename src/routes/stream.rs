//! `POST /chat/stream` and `GET /chat/stream` (for a browser's `EventSource`): one turn, answered
//! as Server-Sent Events while the model writes it. The stream opens with an `: open` comment
//! as soon as the upstream has accepted the call.
//!
//! Errors before the first byte (validation, unknown conversation, the upstream refusing the
//! call) are ordinary JSON errors. After it, an error is one `event: error` frame with
//! `{"detail": ...}`, and the stream ends. A client that leaves (or takes no frame for
//! `STREAM_WRITE_TIMEOUT_SECS`) drops the stream, which cancels the turn and its upstream call
//! and leaves the conversation as it was. A stream still open when the shutdown's grace is over
//! ends with `event: error` `{"detail": "server shutting down", "retryable": true}`.
//!
//! Every such stream is a run (`X-Run-Id`; [`crate::runs`]): each event's `id:` names the run
//! and the position after it, so that `GET /runs/{id}/events` and an `EventSource`'s reconnect
//! (`GET /chat/stream` with `Last-Event-ID`) replay it; with `on_disconnect: "continue"` the
//! turn goes on without its client.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::json;

use crate::agent::{self, ChatTurn, Sent};
use crate::error::ApiError;
use crate::extract::{AppJson, AppQuery};
use crate::metrics::GaugeGuard;
use crate::middleware::auth::Caller;
use crate::middleware::streams::StreamPermit;
use crate::openapi::{DetailError, ModelCallErrors, SseEvent};
use crate::routes::chat::{ChatInput, ChatQuery};
use crate::runs::{LogEvent, event_id, parse_event_id};
use crate::state::AppState;

#[utoipa::path(post, path = "/chat/stream", tag = "chat", request_body = ChatInput,
    responses((status = 200, description = "Server-Sent Events: `data: {\"content\"}` frames, then `data: {\"done\": true, \"conversation_id\", \"tokens_used\", \"run_id\"}` (with `\"steps\"` in an agent's turn); every event's `id:` names the run and its position (the `: open` comment carries position 0), for `GET /runs/{run_id}/events`; an agent's tool calls as `event: tool_call` (`{id, name, arguments}`) and `event: tool_result` (`{id, name, result | error, duration_ms}`); an error after the first byte (the upstream failing, TURN_TIMEOUT_SECS, the conversation deleted meanwhile) is `event: error` with `{\"detail\"}`; at shutdown `{\"detail\": \"server shutting down\", \"retryable\": true}`", content_type = "text/event-stream", body = SseEvent,
            headers(("X-Run-Id" = String, description = "The turn's run (`GET /runs/{run_id}`)"))),
        (status = 409, description = "The conversation is busy with another turn: at once with `if_busy: reject`, else after TURN_WAIT_SECS (Retry-After set); or it belongs to another agent than the one named (no Retry-After)", body = DetailError),
        ModelCallErrors), security(("api_key" = []), ("bearer" = [])))]
pub async fn stream_chat(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(input): AppJson<ChatInput>,
) -> Result<Response, ApiError> {
    let turn = input.validate(&state.config, &state.agents, "body")?;
    start(state, caller, turn).await
}

#[utoipa::path(get, path = "/chat/stream", tag = "chat", params(ChatQuery),
    responses((status = 200, description = "The same stream as POST, for a browser's EventSource (`?api_key=` accepted here); with a `Last-Event-ID` header (an EventSource reconnecting), the named run's events after that id, then live to its end, and no turn is started", content_type = "text/event-stream", body = SseEvent,
            headers(("X-Run-Id" = String, description = "The turn's run"))),
        (status = 204, description = "`Last-Event-ID` names a run that has ended there, or no run of the caller's: nothing to resume (this stops an EventSource)"),
        (status = 409, description = "The conversation is busy with another turn: at once with `if_busy: reject`, else after TURN_WAIT_SECS (Retry-After set); or it belongs to another agent than the one named (no Retry-After)", body = DetailError),
        ModelCallErrors), security(("api_key" = []), ("bearer" = []), ("api_key_query" = [])))]
pub async fn stream_chat_get(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    AppQuery(query): AppQuery<ChatQuery>,
) -> Result<Response, ApiError> {
    if let Some(last) = headers.get("last-event-id") {
        return resume(state, caller, last.to_str().unwrap_or_default()).await;
    }
    let turn = query
        .into_input()?
        .validate(&state.config, &state.agents, "query")?;
    start(state, caller, turn).await
}

async fn start(state: AppState, caller: Caller, turn: ChatTurn) -> Result<Response, ApiError> {
    let permit = state.open_stream(&caller.owner).await?;
    let started = agent::stream_turn(
        &state.llm,
        state.conversations.as_ref(),
        &state.runner,
        &state.agents,
        &caller.owner,
        turn,
        &state.runs,
    )
    .await?;
    let run_id = started.run_id;
    // A comment first: the client has a byte as soon as the model accepted the call (an
    // OpenAI stream's first chunk carries the role, not text), and proxies see a live stream.
    // Its id (position 0) is an EventSource's Last-Event-ID should it drop before any event.
    let open = Event::default().comment("open").id(event_id(&run_id, 0));
    let opened = futures::stream::once(std::future::ready(Ok(open)));
    let events = sse_events(run_id.clone(), started.events);
    let mut res = sse_response(&state, permit, opened.chain(events));
    set_run_id(&mut res, &run_id);
    Ok(res)
}

/// `GET /chat/stream` with `Last-Event-ID`: an `EventSource` reconnecting. It resumes the run
/// the id names, and never starts a turn: a run that has ended there, or an id that names no
/// run of the caller's, is answered 204 (which stops an `EventSource`).
async fn resume(state: AppState, caller: Caller, last: &str) -> Result<Response, ApiError> {
    let Some((run_id, pos)) = parse_event_id(last) else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    match crate::routes::runs::follow(&state, &caller, run_id, pos).await {
        Err(ApiError::NotFound { .. }) => Ok(StatusCode::NO_CONTENT.into_response()),
        other => other,
    }
}

/// The `X-Run-Id` header.
pub fn set_run_id(res: &mut Response, run_id: &str) {
    if let Ok(v) = HeaderValue::from_str(run_id) {
        res.headers_mut().insert(X_RUN_ID, v);
    }
}

const X_RUN_ID: HeaderName = HeaderName::from_static("x-run-id");

/// A run's logged frames as SSE events, each with its id.
pub fn run_frames(
    run_id: String,
    events: impl Stream<Item = LogEvent> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    events.map(move |e| Ok(sse_event(&run_id, e.seq + 1, e.event, &e.data)))
}

fn sse_event(run_id: &str, pos: u64, name: Option<&str>, data: &str) -> Event {
    let event = Event::default().id(event_id(run_id, pos));
    match name {
        Some(name) => event.event(name),
        None => event,
    }
    .data(data)
}

/// Tells nginx-style proxies not to buffer the stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// An SSE answer as both stream routes (`/chat/stream`, `/v1/chat/completions`) send it:
/// keep-alive comments, counted in the open-streams gauge (and holding the key's stream
/// permit) while it lasts, and headers that keep proxies from buffering or caching it.
pub fn sse_response(
    state: &AppState,
    permit: Option<StreamPermit>,
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let keep_alive = KeepAlive::new()
        .interval(state.config.sse_keepalive)
        .text("keep-alive");
    let open = (GaugeGuard::new(&state.metrics.open_streams), permit);
    let events = until_stopped(events, state.runner.shutdown_token()).map(move |e| {
        let _held = &open;
        e
    });
    let mut res = Sse::new(events).keep_alive(keep_alive).into_response();
    let headers = res.headers_mut();
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// The frame a stream still open when the shutdown's grace is over ends with.
fn shutting_down() -> Event {
    Event::default()
        .event("error")
        .data(json!({"detail": "server shutting down", "retryable": true}).to_string())
}

/// `events` until they end, or until `stop` (the end of the shutdown's grace): then one
/// [`shutting_down`] frame, and the stream ends (dropping `events` cancels their turn). The
/// wait on `stop` is made once per stream, not once per frame.
fn until_stopped(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    stop: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let st = (Box::pin(events), Box::pin(stop.cancelled_owned()));
    futures::stream::unfold(Some(st), |st| async move {
        let (mut events, mut stop) = st?;
        tokio::select! {
            biased;
            () = &mut stop => Some((Ok(shutting_down()), None)),
            e = events.next() => e.map(|e| (e, Some((events, stop)))),
        }
    })
}

/// A run's frames, as its producer sends them, as SSE events with their ids.
fn sse_events(
    run_id: String,
    events: impl Stream<Item = Sent> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    events.map(
        move |Sent {
                  pos,
                  frame: (name, data),
              }| Ok(sse_event(&run_id, pos, name, &data)),
    )
}
