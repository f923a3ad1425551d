//! `/v1/responses`: OpenAI's Responses API (API.md, "OpenAI Responses API"), on
//! [`crate::responses`]. Errors are OpenAI's shape; every bad field is a 400 naming its `param`.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, FieldError, OpenAiError};
use crate::extract::{AppJson, AppQuery};
use crate::middleware::auth::Caller;
use crate::openapi::{OpenAiErrorBody, SseEvent};
use crate::responses::object::{ResponseObject, ResponseStatus};
use crate::responses::{Prepared, engine, prepare};
use crate::routes::stream::{run_frames, set_run_id, sse_response};
use crate::runs::{Follow, NewRun, RunStatus, Runs};
use crate::state::AppState;
use crate::store::StoredResponse;

fn invalid(location: &str, param: &str, msg: impl Into<String>) -> ApiError {
    ApiError::Validation(vec![FieldError {
        loc: vec![json!(location), json!(param)],
        msg: msg.into(),
        kind: "invalid_value".into(),
    }])
}

const NOT_FOUND: ApiError = ApiError::NotFound { kind: "response" };

#[utoipa::path(post, path = "/v1/responses", tag = "openai",
    request_body(content = Object, description = "OpenAI's `CreateResponse`: `model` (or `agent:<name>`), `input`, `instructions`, `previous_response_id`, `store`, `stream`, `background`, `temperature`, `top_p`, `max_output_tokens`, function `tools`, `tool_choice`, `parallel_tool_calls`, `metadata`; other fields are accepted and ignored"),
    responses((status = 200, description = "The response object; with `stream: true` an SSE stream of typed events (`event: response.created` ... `response.completed`), each with its `sequence_number`",
            content((Object = "application/json"), (SseEvent = "text/event-stream"))),
        (status = 400, description = "Invalid request (`param` names the field)", body = OpenAiErrorBody),
        (status = 401, body = OpenAiErrorBody),
        (status = 404, description = "`model_not_found`, or `previous_response_not_found`", body = OpenAiErrorBody),
        (status = 415, body = OpenAiErrorBody),
        (status = 429, body = OpenAiErrorBody),
        (status = 502, body = OpenAiErrorBody), (status = 504, body = OpenAiErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create_response(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<AppJson<Value>, ApiError>,
) -> Result<Response, OpenAiError> {
    let AppJson(body) = body?;
    let body = crate::routes::openai::object_body(body)?;
    let p = prepare(&state, &caller.owner, body).await?;
    if !p.stream && !p.background {
        let record = engine::run_whole(&state, p).await?;
        return Ok(record.response.into_response());
    }
    start_run(&state, &caller, p).await.map_err(Into::into)
}

/// Starts a streamed or background response as a run: stored first (when `store`), produced
/// on the runner, and for a stream followed from its first event.
async fn start_run(
    state: &AppState,
    caller: &Caller,
    mut p: Prepared,
) -> Result<Response, ApiError> {
    let permit = match p.stream {
        true => state.open_stream(&caller.owner).await?,
        false => None,
    };
    let model = p.record.response.model.clone();
    let writer = state.runs.start(NewRun {
        owner: caller.owner.clone(),
        conversation_id: None,
        agent: model,
        task_id: None,
    });
    let run_id = writer.id().to_owned();
    p.record.run_id = Some(run_id.clone());
    if p.store {
        // A failure here drops the writer: the run ends `interrupted`, nothing was produced.
        state
            .responses
            .put(&p.record, state.config.response_ttl, false)
            .await?;
    }
    let (stream, background) = (p.stream, p.background);
    // A background response answers the object as it starts; a stream, its events.
    let started = (!stream).then(|| p.record.response.clone());
    let producer = state.clone();
    state.runner.spawn(async move {
        engine::run_logged(&producer, p, writer).await;
    });
    if let Some(started) = started {
        return Ok(started.into_response());
    }
    let Follow::Events(events) = state.runs.follow(&caller.owner, &run_id, 0).await? else {
        return Err(ApiError::Internal(
            "a new run had ended before it began".into(),
        ));
    };
    // A foreground stream is its client's: when the client leaves, the response stops.
    let guard = (!background).then(|| StopOnDrop {
        runs: state.runs.clone(),
        run_id: run_id.clone(),
    });
    let events = events.map(move |e| {
        let _stop = &guard;
        e
    });
    let mut res = sse_response(state, permit, run_frames(run_id.clone(), events));
    set_run_id(&mut res, &run_id);
    Ok(res)
}

/// Stops a run when dropped (a no-op once it has ended).
struct StopOnDrop {
    runs: Runs,
    run_id: String,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.runs.cancel_here(&self.run_id);
    }
}

/// A stored response as it is now: one whose producer died (its run ended, the record still
/// running) reads as failed.
async fn settled(state: &AppState, owner: &str, mut r: StoredResponse) -> StoredResponse {
    if r.ended() {
        return r;
    }
    let Some(run_id) = r.run_id.clone() else {
        return r;
    };
    let run = match state.runs.get(owner, &run_id).await {
        Ok(Some(run)) => Some(run.status),
        Ok(None) => None,
        Err(_) => return r,
    };
    if run == Some(RunStatus::Running) {
        return r;
    }
    let res = &mut r.response;
    if run == Some(RunStatus::Cancelled) {
        res.status = ResponseStatus::Cancelled;
    } else {
        res.status = ResponseStatus::Failed;
        res.error = Some(
            json!({"code": "server_error", "message": "the response was interrupted; create it again"}),
        );
    }
    r
}

/// The caller's stored response `id` as it was written; 404 for none.
async fn stored(state: &AppState, owner: &str, id: &str) -> Result<StoredResponse, ApiError> {
    state.responses.get(owner, id).await?.ok_or(NOT_FOUND)
}

/// The same, [`settled`].
async fn held(state: &AppState, owner: &str, id: &str) -> Result<StoredResponse, ApiError> {
    let r = stored(state, owner, id).await?;
    Ok(settled(state, owner, r).await)
}

/// The query of `GET /v1/responses/{id}` (values arrive as strings).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetrieveQuery {
    /// `true`: stream the response's events (a streamed or background response's).
    #[param(value_type = Option<bool>)]
    pub stream: Option<String>,
    /// With `stream`: only the events after this sequence number.
    #[param(value_type = Option<u64>)]
    pub starting_after: Option<String>,
}

#[utoipa::path(get, path = "/v1/responses/{response_id}", tag = "openai",
    params(("response_id" = String, Path), RetrieveQuery),
    responses((status = 200, description = "The response object; with `stream=true` its events (after `starting_after`) as SSE, live until it ends",
            content((Object = "application/json"), (SseEvent = "text/event-stream"))),
        (status = 400, body = OpenAiErrorBody), (status = 401, body = OpenAiErrorBody),
        (status = 404, description = "No such response of this key", body = OpenAiErrorBody),
        (status = 410, description = "Its events are no longer held (RUN_TTL_SECS, RUN_LOG_MAX_BYTES)", body = OpenAiErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_response(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<AppQuery<RetrieveQuery>, ApiError>,
) -> Result<Response, OpenAiError> {
    let AppQuery(query) = query?;
    let stream = match query.stream.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(invalid("query", "stream", "`stream` must be true or false").into()),
    };
    let after = match query.starting_after.as_deref() {
        None => None,
        Some(n) => Some(n.parse::<u64>().map_err(|_| {
            invalid(
                "query",
                "starting_after",
                "`starting_after` must be a sequence number",
            )
        })?),
    };
    let r = held(&state, &caller.owner, &id).await?;
    if !stream {
        return Ok(r.response.into_response());
    }
    let Some(run_id) = r.run_id else {
        return Err(invalid(
            "query",
            "stream",
            "only a streamed or background response has events to stream",
        )
        .into());
    };
    // The event numbered N is the run's (N+1)th: after N is from position N+1.
    let pos = after.map_or(0, |n| n.saturating_add(1));
    let events = match state.runs.follow(&caller.owner, &run_id, pos).await {
        Ok(Follow::Events(events)) => events,
        Ok(Follow::AtEnd) => futures::stream::empty().boxed(),
        Err(crate::runs::FollowError::NotFound) => {
            return Err(ApiError::Gone(
                "this response's events are no longer held (RUN_TTL_SECS)".into(),
            )
            .into());
        }
        Err(crate::runs::FollowError::Replay(crate::runs::ReplayError::Unknown)) => {
            return Err(invalid(
                "query",
                "starting_after",
                "`starting_after` is past this response's last event",
            )
            .into());
        }
        Err(e) => return Err(ApiError::from(e).into()),
    };
    let permit = state.open_stream(&caller.owner).await?;
    let mut res = sse_response(&state, permit, run_frames(run_id.clone(), events));
    set_run_id(&mut res, &run_id);
    Ok(res)
}

#[utoipa::path(delete, path = "/v1/responses/{response_id}", tag = "openai",
    params(("response_id" = String, Path)),
    responses((status = 200, description = "`{\"id\", \"object\": \"response\", \"deleted\": true}`; a response still running is stopped", body = Object),
        (status = 401, body = OpenAiErrorBody),
        (status = 404, description = "No such response of this key", body = OpenAiErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn delete_response(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    let r = stored(&state, &caller.owner, &id).await?;
    if !state
        .responses
        .delete(&caller.owner, &id)
        .await
        .map_err(ApiError::from)?
    {
        return Err(NOT_FOUND.into());
    }
    if !r.ended()
        && let Some(run_id) = &r.run_id
    {
        state
            .runs
            .cancel(&caller.owner, run_id)
            .await
            .map_err(ApiError::from)?;
    }
    Ok(Json(
        json!({"id": id, "object": "response", "deleted": true}),
    ))
}

#[utoipa::path(post, path = "/v1/responses/{response_id}/cancel", tag = "openai",
    params(("response_id" = String, Path)),
    responses((status = 200, description = "The response after the cancellation (`cancelled`; one that had ended, as it was)", body = Object),
        (status = 400, description = "The response is not a background one", body = OpenAiErrorBody),
        (status = 401, body = OpenAiErrorBody),
        (status = 404, description = "No such response of this key", body = OpenAiErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn cancel_response(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<ResponseObject, OpenAiError> {
    let r = held(&state, &caller.owner, &id).await?;
    if !r.background {
        return Err(invalid(
            "path",
            "response_id",
            "only a background response can be cancelled",
        )
        .into());
    }
    if r.ended() {
        return Ok(r.response);
    }
    if let Some(run_id) = &r.run_id {
        // Stops the producer (here or on another replica) and waits for it to end the run; it
        // stores the response as cancelled first.
        state
            .runs
            .cancel(&caller.owner, run_id)
            .await
            .map_err(ApiError::from)?;
    }
    let r = held(&state, &caller.owner, &id).await?;
    Ok(r.response)
}

/// The query of `GET /v1/responses/{id}/input_items` (values arrive as strings).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemsQuery {
    /// `asc` or `desc` (default).
    pub order: Option<String>,
    /// 1 to 100 (default 20).
    #[param(value_type = Option<u32>)]
    pub limit: Option<String>,
    /// An item id: list the items after it (in this order).
    pub after: Option<String>,
}

#[utoipa::path(get, path = "/v1/responses/{response_id}/input_items", tag = "openai",
    params(("response_id" = String, Path), ItemsQuery),
    responses((status = 200, description = "`{\"object\": \"list\", \"data\", \"first_id\", \"last_id\", \"has_more\"}`: the request's input items, each with its id", body = Object),
        (status = 400, body = OpenAiErrorBody), (status = 401, body = OpenAiErrorBody),
        (status = 404, description = "No such response of this key", body = OpenAiErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn input_items(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<AppQuery<ItemsQuery>, ApiError>,
) -> Result<Json<Value>, OpenAiError> {
    let AppQuery(query) = query?;
    let desc = match query.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(invalid("query", "order", "`order` must be asc or desc").into()),
    };
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| invalid("query", "limit", "`limit` must be an integer from 1 to 100"))?,
    };
    let r = stored(&state, &caller.owner, &id).await?;
    let mut items = r.input;
    if desc {
        items.reverse();
    }
    if let Some(after) = &query.after {
        let at = items
            .iter()
            .position(|i| i["id"].as_str() == Some(after))
            .ok_or_else(|| invalid("query", "after", "`after` is not an item of this response"))?;
        items.drain(..=at);
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    let first = items
        .first()
        .map(|i| i["id"].clone())
        .unwrap_or(Value::Null);
    let last = items.last().map(|i| i["id"].clone()).unwrap_or(Value::Null);
    Ok(Json(
        json!({"object": "list", "data": items, "first_id": first, "last_id": last,
        "has_more": has_more}),
    ))
}
