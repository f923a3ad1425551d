//! `GET /health` (liveness, never needs a key) and `GET /ready` (503 until the store and the
//! provider answer).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"healthy\", \"timestamp\", \"active_conversations\", ...}`; never needs a key", body = Object)))]
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let active = state.conversations.count().await.ok();
    Json(json!({
        "status": "healthy",
        "timestamp": chrono::Utc::now(),
        "active_conversations": active,
        "active_tasks": state.runner.active(),
        "provider": state.llm.name(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
}

#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Store and provider answer", body = Object),
        (status = 503, description = "Store or provider unavailable", body = Object)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (store, tasks, llm) = tokio::join!(
        state.conversations.ready(),
        state.tasks.ready(),
        state.llm.ready()
    );
    let store_err = store.err().or(tasks.err()).map(|e| e.to_string());
    let llm_err = llm.err().map(|e| e.to_string());
    let ok = store_err.is_none() && llm_err.is_none();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ok { "ready" } else { "not_ready" },
            "store": store_err.unwrap_or_else(|| "ok".into()),
            "provider": llm_err.unwrap_or_else(|| "ok".into()),
        })),
    )
}
