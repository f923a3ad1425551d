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

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::json;

use crate::agent::{self, ChatTurn, TurnEvent};
use crate::error::ApiError;
use crate::extract::{AppJson, AppQuery};
use crate::metrics::GaugeGuard;
use crate::middleware::auth::Caller;
use crate::middleware::streams::StreamPermit;
use crate::openapi::{DetailError, ModelCallErrors, SseEvent};
use crate::routes::chat::{ChatInput, ChatQuery};
use crate::state::AppState;

#[utoipa::path(post, path = "/chat/stream", tag = "chat", request_body = ChatInput,
    responses((status = 200, description = "Server-Sent Events: `data: {\"content\"}` frames, then `data: {\"done\": true, \"conversation_id\", \"tokens_used\"}` (with `\"steps\"` in an agent's turn); an agent's tool calls as `event: tool_call` (`{id, name, arguments}`) and `event: tool_result` (`{id, name, result | error, duration_ms}`); an error after the first byte (the upstream failing, TURN_TIMEOUT_SECS, the conversation deleted meanwhile) is `event: error` with `{\"detail\"}`; at shutdown `{\"detail\": \"server shutting down\", \"retryable\": true}`", content_type = "text/event-stream", body = SseEvent),
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
    responses((status = 200, description = "The same stream as POST, for a browser's EventSource (`?api_key=` accepted here)", content_type = "text/event-stream", body = SseEvent),
        (status = 409, description = "The conversation is busy with another turn: at once with `if_busy: reject`, else after TURN_WAIT_SECS (Retry-After set); or it belongs to another agent than the one named (no Retry-After)", body = DetailError),
        ModelCallErrors), security(("api_key" = []), ("bearer" = []), ("api_key_query" = [])))]
pub async fn stream_chat_get(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(query): AppQuery<ChatQuery>,
) -> Result<Response, ApiError> {
    let turn = query
        .into_input()?
        .validate(&state.config, &state.agents, "query")?;
    start(state, caller, turn).await
}

async fn start(state: AppState, caller: Caller, turn: ChatTurn) -> Result<Response, ApiError> {
    let permit = state.open_stream(&caller.owner).await?;
    let (_, events) = agent::stream_turn(
        &state.llm,
        state.conversations.as_ref(),
        &state.runner,
        &state.agents,
        &caller.owner,
        turn,
    )
    .await?;
    // A comment first: the client has a byte as soon as the model accepted the call (an
    // OpenAI stream's first chunk carries the role, not text), and proxies see a live stream.
    let opened = futures::stream::once(std::future::ready(Ok(Event::default().comment("open"))));
    Ok(sse_response(
        &state,
        permit,
        opened.chain(sse_events(events)),
    ))
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

/// Turns the domain's events into SSE frames, each with an increasing `id:`.
pub fn sse_events(
    events: impl Stream<Item = TurnEvent> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    events
        .enumerate()
        .map(|(i, event)| Ok(frame(event).id(i.to_string())))
}

/// One frame: the pure part of the stream, tested below.
pub fn frame(event: TurnEvent) -> Event {
    match event {
        TurnEvent::Delta(text) => Event::default().data(json!({ "content": text }).to_string()),
        // Serialized from the struct, in its field order (id, name, ...).
        TurnEvent::ToolCall(call) => Event::default()
            .event("tool_call")
            .data(serde_json::to_string(&call).unwrap_or_default()),
        TurnEvent::ToolResult(result) => Event::default()
            .event("tool_result")
            .data(serde_json::to_string(&result).unwrap_or_default()),
        done @ TurnEvent::Done { .. } => Event::default().data(done_json(done).to_string()),
        TurnEvent::Failed(e) => Event::default()
            .event("error")
            .data(ApiError::from(e).detail_body().to_string()),
    }
}

/// The done frame (SSE and WebSocket alike): `steps` only for an agent's loop, so that the
/// tutorial's frame is unchanged.
pub fn done_json(event: TurnEvent) -> serde_json::Value {
    let TurnEvent::Done {
        conversation_id,
        tokens_used,
        steps,
    } = event
    else {
        return json!({});
    };
    let mut v =
        json!({"done": true, "conversation_id": conversation_id, "tokens_used": tokens_used});
    if let Some(steps) = steps {
        v["steps"] = json!(steps);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentError;
    use crate::llm::LlmError;

    fn text(e: Event) -> String {
        // Event implements no Display; render it through the SSE body it would produce.
        format!("{e:?}")
    }

    #[test]
    fn frames() {
        let d = text(frame(TurnEvent::Delta("Hel".into())));
        assert!(d.contains(r#"{\"content\":\"Hel\"}"#), "{d}");
        let e = text(frame(TurnEvent::Failed(AgentError::Llm(
            LlmError::Incomplete,
        ))));
        assert!(e.contains("error"), "{e}");
        assert!(e.contains("detail"), "{e}");
    }
}
