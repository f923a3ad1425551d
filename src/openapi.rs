//! The OpenAPI 3.1 document, generated from the handlers' own types and annotations (utoipa),
//! and the interactive docs at `/docs` (Swagger UI, served from the binary: no external host).

use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::FieldError;

/// `{"detail": "..."}`: the error body of the tutorial-compatible routes.
#[derive(Serialize, ToSchema)]
pub struct DetailError {
    pub detail: String,
}

/// `{"detail": [{"loc", "msg", "type"}]}`: FastAPI's 422 body.
#[derive(Serialize, ToSchema)]
pub struct ValidationError {
    pub detail: Vec<FieldError>,
}

/// One Server-Sent Event as a client's parser sees it: its `data` (JSON text), and its
/// `event` (`message`; `tool_call` and `tool_result` in an agent's turn, whose data is a
/// `ToolCallView`; `error` for a failure after the stream began) and `id`.
#[derive(Serialize, ToSchema)]
pub struct SseEvent {
    pub data: String,
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// OpenAI's error object.
#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// `{"error": {...}}`: the error body of `/v1/*`.
#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

/// The errors of every route that reads a body and may call the model.
#[derive(utoipa::IntoResponses)]
pub enum ModelCallErrors {
    #[response(
        status = 401,
        description = "Missing or unknown API key (WWW-Authenticate set)"
    )]
    Unauthorized(DetailError),
    #[response(
        status = 403,
        description = "No keys are configured and the Host is not a loopback name"
    )]
    Forbidden(DetailError),
    #[response(
        status = 408,
        description = "The body did not arrive within BODY_TIMEOUT_SECS"
    )]
    BodyTimeout(DetailError),
    #[response(status = 413, description = "Body over the limit")]
    TooLarge(DetailError),
    #[response(status = 415, description = "A Content-Type that is not JSON")]
    NotJson(DetailError),
    #[response(
        status = 422,
        description = "Invalid input: FastAPI's field list (also a model outside MODELS, max_tokens over MAX_OUTPUT_TOKENS, a message over MAX_HISTORY_TOKENS, or an upstream's 'context length exceeded')"
    )]
    Invalid(ValidationError),
    #[response(
        status = 429,
        description = "Rate limited, or a per-key quota full: conversations all busy, tasks none finished, streams open (Retry-After set)"
    )]
    RateLimited(DetailError),
    #[response(status = 502, description = "The upstream failed or answered garbage")]
    Upstream(DetailError),
    #[response(
        status = 503,
        description = "Overloaded, or the store full (every conversation in a turn) or unavailable"
    )]
    Unavailable(DetailError),
    #[response(status = 504, description = "The upstream did not answer in time")]
    Timeout(DetailError),
}

/// The errors of the routes that read or delete one owned record.
#[derive(utoipa::IntoResponses)]
pub enum RecordErrors {
    #[response(
        status = 401,
        description = "Missing or unknown API key (WWW-Authenticate set)"
    )]
    Unauthorized(DetailError),
    #[response(
        status = 403,
        description = "No keys are configured and the Host is not a loopback name"
    )]
    Forbidden(DetailError),
    #[response(status = 404, description = "Unknown id, or owned by another key")]
    NotFound(DetailError),
    #[response(status = 429, description = "Rate limited (Retry-After set)")]
    RateLimited(DetailError),
    #[response(status = 503, description = "The store is unavailable")]
    Unavailable(DetailError),
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("api_key"))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agent-api",
        description = "LLM agents behind a fast, safe HTTP API: tutorial-compatible chat, \
            conversations, tasks, SSE and WebSocket streaming, and an OpenAI-compatible surface.",
    ),
    paths(
        crate::routes::chat::create_chat,
        crate::routes::stream::stream_chat,
        crate::routes::stream::stream_chat_get,
        crate::routes::ws::connect,
        crate::routes::conversations::list_conversations,
        crate::routes::conversations::get_conversation,
        crate::routes::conversations::delete_conversation,
        crate::routes::tasks::create_task,
        crate::routes::tasks::list_tasks,
        crate::routes::tasks::get_task,
        crate::routes::tasks::cancel_task,
        crate::routes::tasks::task_events,
        crate::routes::runs::get_run,
        crate::routes::runs::cancel_run,
        crate::routes::runs::run_events,
        crate::routes::agents::list_agents,
        crate::routes::agents::get_agent,
        crate::routes::openai::chat_completions,
        crate::routes::openai::list_models,
        crate::routes::responses::create_response,
        crate::routes::responses::get_response,
        crate::routes::responses::delete_response,
        crate::routes::responses::cancel_response,
        crate::routes::responses::input_items,
        crate::routes::health::health,
        crate::routes::health::ready,
        metrics_doc,
    ),
    components(schemas(DetailError, ValidationError, OpenAiErrorBody, FieldError, SseEvent, crate::routes::health::Ready, crate::agent::ToolCallView)),
    modifiers(&Security),
    tags(
        (name = "chat", description = "Tutorial-compatible chat, streamed or not"),
        (name = "conversations"), (name = "tasks", description = "Background tasks"),
        (name = "agents", description = "The operator's agents (AGENTS_FILE) and their tools"),
        (name = "runs", description = "Streamed turns and tasks as runs: their state, cancellation, and their event logs replayed and followed"),
        (name = "openai", description = "OpenAI-compatible routes"),
        (name = "operations", description = "Probes and metrics; never need a key"),
    )
)]
pub struct ApiDoc;

/// Documents `/metrics` (served by `routes::metrics`).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
#[expect(dead_code, reason = "only its annotation is used")]
fn metrics_doc() {}

static SPEC: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
});

static SWAGGER: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> =
    LazyLock::new(|| Arc::new(utoipa_swagger_ui::Config::from("/openapi.json")));

/// `GET /openapi.json`.
pub async fn spec() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        SPEC.as_str(),
    )
        .into_response()
}

/// `GET /docs` → `/docs/`.
pub async fn docs_root() -> Redirect {
    Redirect::permanent("/docs/")
}

/// `GET /docs/{*file}`: Swagger UI's files, built into the binary.
pub async fn docs_file(file: Option<Path<String>>) -> Response {
    let file = file.map(|p| p.0).unwrap_or_default();
    match utoipa_swagger_ui::serve(&file, Arc::clone(&SWAGGER)) {
        Ok(Some(f)) => (
            [(header::CONTENT_TYPE, f.content_type)],
            f.bytes.into_owned(),
        )
            .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"detail": "Not Found"})),
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"detail": "internal error"})),
        )
            .into_response(),
    }
}
