//! `POST /task`, `GET`/`DELETE /task/{task_id}`, `GET /task/{task_id}/events` and `GET /tasks`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::response::sse::Event;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::agent::runner::NewTask;
use crate::agent::{Agents, ToolCallView};
use crate::config::Config;
use crate::error::{ApiError, FieldError};
use crate::extract::{AppJson, AppQuery};
use crate::middleware::auth::Caller;
use crate::openapi::{DetailError, ModelCallErrors, RecordErrors, SseEvent, ValidationError};
use crate::routes::chat::model_error;
use crate::routes::conversations::ListQuery;
use crate::routes::runs::EventsQuery;
use crate::routes::stream::{run_frames, sse_response};
use crate::runs::{Follow, frames, parse_event_id};
use crate::state::AppState;
use crate::store::{Task, TaskStatus};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateTaskRequest {
    /// At least one non-blank character.
    #[schema(min_length = 1, pattern = "\\S")]
    pub prompt: String,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "\\S")]
    pub task_type: Option<String>,
    /// One of `MODELS` (default `TASK_MODEL`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub model: Option<String>,
    /// One of `GET /agents` (default `default`): its instructions, model and tools run the task.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub agent: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskResponse {
    pub task_id: String,
    pub status: TaskStatus,
    pub result: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The agent it ran as, when it named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The tools its run called, each with its `result` or `error`; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<ToolCallView>>)]
    pub tool_calls: Option<serde_json::Value>,
    /// Its run, once it has started (`GET /task/{id}/events`, `GET /runs/{run_id}`); absent
    /// before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl From<Task> for TaskResponse {
    fn from(t: Task) -> Self {
        Self {
            task_id: t.task_id,
            status: t.status,
            result: t.result,
            created_at: t.created_at,
            completed_at: t.completed_at,
            agent: t.agent,
            tool_calls: t.tool_calls.and_then(|c| serde_json::from_str(&c).ok()),
            run_id: t.run_id,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskResponse>,
    pub count: usize,
}

impl CreateTaskRequest {
    fn validate(
        self,
        config: &Config,
        agents: &Agents,
        owner: String,
    ) -> Result<NewTask, ApiError> {
        let mut errors = Vec::new();
        if self.prompt.trim().is_empty() {
            errors.push(FieldError::body(
                "prompt",
                "String should have at least 1 non-blank character",
                "string_too_short",
            ));
        }
        let task_type = self.task_type.unwrap_or_else(|| "analysis".into());
        if task_type.trim().is_empty() || task_type.len() > 64 {
            errors.push(FieldError::body(
                "task_type",
                "String should have 1 to 64 characters",
                "string_length",
            ));
        }
        if let Some(e) = self
            .model
            .as_deref()
            .and_then(|m| model_error(config, "body", m))
        {
            errors.push(e);
        }
        if let Some(name) = &self.agent {
            match agents.get(name) {
                None => errors.push(FieldError::body(
                    "agent",
                    "Input should be the name of one of this server's agents (GET /agents)",
                    "enum",
                )),
                Some(agent) => {
                    if let (Some(own), Some(named)) = (&agent.model, &self.model)
                        && own != named
                    {
                        errors.push(FieldError::body(
                            "model",
                            "The agent uses a model of its own",
                            "value_error",
                        ));
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok(NewTask {
            owner,
            prompt: self.prompt,
            task_type,
            model: self.model.unwrap_or_else(|| config.task_model.clone()),
            agent: self.agent,
        })
    }
}

#[utoipa::path(post, path = "/task", tag = "tasks", request_body = CreateTaskRequest,
    responses((status = 202, body = TaskResponse), ModelCallErrors), security(("api_key" = []), ("bearer" = [])))]
pub async fn create_task(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<CreateTaskRequest>,
) -> Result<(StatusCode, Json<TaskResponse>), ApiError> {
    let new = body.validate(&state.config, &state.agents, caller.owner)?;
    let task = state.runner.submit(new).await?;
    Ok((StatusCode::ACCEPTED, Json(task.into())))
}

#[utoipa::path(get, path = "/task/{task_id}", tag = "tasks", params(("task_id" = String, Path)),
    responses((status = 200, body = TaskResponse), RecordErrors), security(("api_key" = []), ("bearer" = [])))]
pub async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Json<TaskResponse>, ApiError> {
    let task = state
        .tasks
        .get(Some(&caller.owner), &task_id)
        .await?
        .ok_or(ApiError::NotFound { kind: "task" })?;
    Ok(Json(task.into()))
}

/// Cancels a pending or running task; a finished one is returned as it is.
#[utoipa::path(delete, path = "/task/{task_id}", tag = "tasks", params(("task_id" = String, Path)),
    responses((status = 200, description = "The task, cancelled if it was pending or running", body = TaskResponse),
        RecordErrors), security(("api_key" = []), ("bearer" = [])))]
pub async fn cancel_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Json<TaskResponse>, ApiError> {
    let task = state
        .runner
        .cancel(&caller.owner, &task_id)
        .await?
        .ok_or(ApiError::NotFound { kind: "task" })?;
    Ok(Json(task.into()))
}

#[utoipa::path(get, path = "/tasks", tag = "tasks", params(ListQuery),
    responses((status = 200, description = "The caller's tasks, newest first", body = TaskList),
        (status = 401, body = DetailError), (status = 422, body = ValidationError), (status = 429, body = DetailError)), security(("api_key" = []), ("bearer" = [])))]
pub async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let tasks: Vec<TaskResponse> = state
        .tasks
        .list(&caller.owner, query.limit()?)
        .await?
        .into_iter()
        .map(TaskResponse::from)
        .collect();
    Ok(Json(TaskList {
        count: tasks.len(),
        tasks,
    }))
}

/// How often `GET /task/{id}/events` looks for the run of a task that has not started.
const START_POLL: std::time::Duration = std::time::Duration::from_millis(100);

#[utoipa::path(get, path = "/task/{task_id}/events", tag = "tasks",
    params(("task_id" = String, Path), EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "An event id of the task's run: replay what came after it")),
    responses((status = 200, description = "The task's run: `data: {\"content\"}` frames as the model writes (and an agent's `tool_call` / `tool_result` events), then `data: {\"done\": true, \"task_id\", \"result\", \"run_id\"}`, or `event: error` (failed, cancelled, interrupted). A task still pending: the stream waits for it to start", content_type = "text/event-stream", body = SseEvent),
        (status = 204, description = "The position is the run's terminal event"),
        (status = 400, description = "The id is not one of the task's run's", body = DetailError),
        (status = 410, description = "The events after this position were dropped", body = DetailError),
        RecordErrors),
    security(("api_key" = []), ("bearer" = []), ("api_key_query" = [])))]
pub async fn task_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    AppQuery(query): AppQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let task = state
        .tasks
        .get(Some(&caller.owner), &task_id)
        .await?
        .ok_or(ApiError::NotFound { kind: "task" })?;
    if let Some(last) = query.last_event_id(&headers) {
        let Some((run, pos)) =
            parse_event_id(&last).filter(|(run, _)| task.run_id.as_deref() == Some(*run))
        else {
            return Err(ApiError::BadRequest(
                "the event id is not one of this task's run's".into(),
            ));
        };
        return crate::routes::runs::follow(&state, &caller, run, pos).await;
    }
    if let Some(run_id) = task.run_id.as_deref() {
        return crate::routes::runs::follow(&state, &caller, run_id, 0).await;
    }
    // Not started: open the stream now, and follow the run once there is one.
    let permit = state.open_stream(&caller.owner).await?;
    let (tasks, runs, owner) = (
        Arc::clone(&state.tasks),
        state.runs.clone(),
        caller.owner.clone(),
    );
    let events = futures::stream::once(async move {
        loop {
            match tasks.get(Some(&owner), &task_id).await {
                Ok(Some(Task {
                    run_id: Some(run_id),
                    ..
                })) => {
                    return match runs.follow(&owner, &run_id, 0).await {
                        Ok(Follow::Events(events)) => run_frames(run_id, events).boxed(),
                        Ok(Follow::AtEnd) => futures::stream::empty().boxed(),
                        Err(e) => error_event(frames::error(&ApiError::from(e))),
                    };
                }
                Ok(Some(t)) if t.status.is_final() => {
                    return error_event(frames::error_detail("the task ended before it ran"));
                }
                Ok(Some(_)) => tokio::time::sleep(START_POLL).await,
                Ok(None) => {
                    return error_event(frames::error(&ApiError::NotFound { kind: "task" }));
                }
                Err(e) => return error_event(frames::error(&ApiError::Store(e))),
            }
        }
    })
    .flatten();
    Ok(sse_response(&state, permit, events))
}

/// One `event: error` frame (no id: it is not one of a run's).
fn error_event((name, data): frames::Frame) -> BoxStream<'static, Result<Event, Infallible>> {
    let event = Event::default().event(name.unwrap_or("error")).data(data);
    futures::stream::once(std::future::ready(Ok(event))).boxed()
}
