//! `GET /health` (liveness, never needs a key) and `GET /ready` (503 until the store and the
//! provider answer).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::state::AppState;

/// The answer of `GET /health` (fields in alphabetical order, as the JSON has them).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Conversations held; `null` when the store does not answer.
    pub active_conversations: Option<u64>,
    pub active_tasks: u64,
    pub provider: &'static str,
    /// Always `healthy`: the process answers.
    pub status: &'static str,
    #[serde(serialize_with = "crate::routes::rfc3339")]
    pub timestamp: DateTime<Utc>,
    pub uptime_seconds: u64,
    pub version: &'static str,
}

/// Typed rather than `json!`: a probe that load balancers call often should not build a map.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Liveness; never needs a key", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let active = state.conversations.count().await.ok();
    Json(Health {
        active_conversations: active.map(|n| n as u64),
        active_tasks: state.runner.active() as u64,
        provider: state.llm.name(),
        status: "healthy",
        timestamp: Utc::now(),
        uptime_seconds: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
    })
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
