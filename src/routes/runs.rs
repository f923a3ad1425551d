//! `GET /runs/{run_id}`, `DELETE /runs/{run_id}` and `GET /runs/{run_id}/events`: a run (a
//! streamed turn or a task, [`crate::runs`]) as an object, its cancellation, and its event log,
//! replayed from a position and then followed live to its terminal frame.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::AppQuery;
use crate::middleware::auth::Caller;
use crate::openapi::{DetailError, RecordErrors, SseEvent};
use crate::routes::stream::{run_frames, set_run_id, sse_response};
use crate::runs::{Follow, RunInfo, parse_event_id};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// An event id of this run (as its `id:` said): replay what came after it. The
    /// `Last-Event-ID` header wins over it; neither: from the start.
    pub after: Option<String>,
}

impl EventsQuery {
    /// The event id a follower names: `Last-Event-ID` (an EventSource's), else `?after=`.
    pub fn last_event_id(self, headers: &HeaderMap) -> Option<String> {
        headers
            .get("last-event-id")
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .or(self.after)
    }
}

#[utoipa::path(get, path = "/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path, description = "From `X-Run-Id`, a done frame's `run_id`, or a task's `run_id`")),
    responses((status = 200, body = RunInfo), RecordErrors),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<String>,
) -> Result<Json<RunInfo>, ApiError> {
    let run = state.runs.get(&caller.owner, &run_id).await?;
    run.map(Json).ok_or(ApiError::NotFound { kind: "run" })
}

#[utoipa::path(delete, path = "/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path)),
    responses((status = 200, description = "The run after the cancellation (`cancelled`; an ended run as it was)", body = RunInfo), RecordErrors),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn cancel_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<String>,
) -> Result<Json<RunInfo>, ApiError> {
    let run = state.runs.cancel(&caller.owner, &run_id).await?;
    run.map(Json).ok_or(ApiError::NotFound { kind: "run" })
}

#[utoipa::path(get, path = "/runs/{run_id}/events", tag = "runs",
    params(("run_id" = String, Path), EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "An event id of this run: replay what came after it")),
    responses((status = 200, description = "The run's frames after the position, byte for byte as first sent (same `id:`, `event:` and data), then live to its terminal frame (the done frame, or `event: error`)", content_type = "text/event-stream", body = SseEvent,
            headers(("X-Run-Id" = String, description = "The run"))),
        (status = 204, description = "The run has ended and the position is its terminal event: nothing more will come (this stops an EventSource)"),
        (status = 400, description = "The id is not one of this run's", body = DetailError),
        (status = 410, description = "The events after this position were dropped (RUN_LOG_MAX_BYTES)", body = DetailError),
        RecordErrors),
    security(("api_key" = []), ("bearer" = []), ("api_key_query" = [])))]
pub async fn run_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    AppQuery(query): AppQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let pos = match query.last_event_id(&headers).as_deref() {
        None => 0,
        Some(id) => match parse_event_id(id) {
            Some((run, pos)) if run == run_id => pos,
            _ => {
                // Unknown runs are 404 before any talk of positions.
                state
                    .runs
                    .get(&caller.owner, &run_id)
                    .await?
                    .ok_or(ApiError::NotFound { kind: "run" })?;
                return Err(ApiError::BadRequest(
                    "the event id is not one of this run's".into(),
                ));
            }
        },
    };
    follow(&state, &caller, &run_id, pos).await
}

/// The SSE answer that follows `run_id` from `pos`.
pub async fn follow(
    state: &AppState,
    caller: &Caller,
    run_id: &str,
    pos: u64,
) -> Result<Response, ApiError> {
    match state.runs.follow(&caller.owner, run_id, pos).await? {
        Follow::AtEnd => Ok(StatusCode::NO_CONTENT.into_response()),
        Follow::Events(events) => {
            let permit = state.open_stream(&caller.owner).await?;
            let frames = run_frames(run_id.to_owned(), events);
            let mut res = sse_response(state, permit, frames);
            set_run_id(&mut res, run_id);
            Ok(res)
        }
    }
}
