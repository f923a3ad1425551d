//! Every path of the HTTP surface, in one place. Handlers live in the files named here.

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
use axum::routing::{get, post};

use crate::error::{ApiError, respond};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(page::index))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/chat", post(chat::create_chat))
        .route(
            "/chat/stream",
            post(stream::stream_chat).get(stream::stream_chat_get),
        )
        .route("/conversations", get(conversations::list_conversations))
        .route(
            "/conversation/{id}",
            get(conversations::get_conversation).delete(conversations::delete_conversation),
        )
        .route("/task", post(tasks::create_task))
        .route("/tasks", get(tasks::list_tasks))
        .route(
            "/task/{task_id}",
            get(tasks::get_task).delete(tasks::cancel_task),
        )
        .route("/ws/{client_id}", get(ws::connect))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::list_models))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/v1/") {
        return respond(ApiError::NotFound { kind: "route" }, uri.path());
    }
    (StatusCode::NOT_FOUND, axum::Json(chat::not_found_body())).into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({"detail": "Method Not Allowed"})),
    )
        .into_response()
}
