//! Every path of the HTTP surface, in one place. Handlers live in the files named here.
//!
//! [`ROUTES`] is the list of what is mounted: `router()` mounts exactly these paths, so tests
//! (auth, OpenAPI) that walk the list cannot miss a route.

pub mod chat;
pub mod conversations;
pub mod health;
pub mod openai;
pub mod page;
pub mod stream;
pub mod tasks;
pub mod ws;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use crate::error::{ApiError, respond};
use crate::openapi;
use crate::state::AppState;

/// A mounted path and the methods it answers.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub path: &'static str,
    pub methods: &'static [&'static str],
}

const fn route(path: &'static str, methods: &'static [&'static str]) -> Route {
    Route { path, methods }
}

/// Everything the server answers.
pub const ROUTES: &[Route] = &[
    route("/", &["GET"]),
    route("/health", &["GET"]),
    route("/ready", &["GET"]),
    route("/chat", &["POST"]),
    route("/chat/stream", &["GET", "POST"]),
    route("/conversations", &["GET"]),
    route("/conversation/{id}", &["GET", "DELETE"]),
    route("/task", &["POST"]),
    route("/tasks", &["GET"]),
    route("/task/{task_id}", &["GET", "DELETE"]),
    route("/ws/{client_id}", &["GET"]),
    route("/v1/chat/completions", &["POST"]),
    route("/v1/models", &["GET"]),
    route("/metrics", &["GET"]),
    route("/openapi.json", &["GET"]),
    route("/docs", &["GET"]),
    route("/docs/", &["GET"]),
    route("/docs/{*file}", &["GET"]),
];

/// The handlers of one path.
fn handlers(path: &str) -> MethodRouter<AppState> {
    match path {
        "/" => get(page::index),
        "/health" => get(health::health),
        "/ready" => get(health::ready),
        "/chat" => post(chat::create_chat),
        "/chat/stream" => post(stream::stream_chat).get(stream::stream_chat_get),
        "/conversations" => get(conversations::list_conversations),
        "/conversation/{id}" => {
            get(conversations::get_conversation).delete(conversations::delete_conversation)
        }
        "/task" => post(tasks::create_task),
        "/tasks" => get(tasks::list_tasks),
        "/task/{task_id}" => get(tasks::get_task).delete(tasks::cancel_task),
        "/ws/{client_id}" => get(ws::connect),
        "/v1/chat/completions" => post(openai::chat_completions),
        "/v1/models" => get(openai::list_models),
        "/metrics" => get(crate::metrics::metrics),
        "/openapi.json" => get(openapi::spec),
        "/docs" => get(openapi::docs_root),
        "/docs/" | "/docs/{*file}" => get(openapi::docs_file),
        // A path in ROUTES without handlers answers 404 like an unknown one; the route table
        // test catches it.
        _ => get(not_found).post(not_found).delete(not_found),
    }
}

pub fn router() -> Router<AppState> {
    ROUTES
        .iter()
        .fold(Router::new(), |r, route| {
            r.route(route.path, handlers(route.path))
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/v1/") {
        return respond(ApiError::NotFound { kind: "route" }, uri.path());
    }
    // FastAPI's answer to an unknown path.
    let body = serde_json::json!({"detail": "Not Found"});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({"detail": "Method Not Allowed"})),
    )
        .into_response()
}
