//! The probes: `GET /health` (liveness, never needs a key), `GET /ready` (503 until the store
//! and the provider answer) and `GET /metrics` (Prometheus text).

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::metrics::StateLabels;
use crate::openapi::DetailError;
use crate::state::AppState;

/// The answer of `GET /health` (fields in alphabetical order, as the JSON has them).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Conversations held; `null` when the store does not answer at once.
    pub active_conversations: Option<u64>,
    pub active_tasks: u64,
    /// Whether requests need an API key (so that a page can ask for one before calling).
    pub auth_required: bool,
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
    // Never waits on the store: a count it already has, or null.
    let active = state.conversations.count_now();
    Json(Health {
        active_conversations: active.map(|n| n as u64),
        active_tasks: state.runner.active() as u64,
        auth_required: state.keys.enabled(),
        provider: state.llm.name(),
        status: "healthy",
        timestamp: Utc::now(),
        uptime_seconds: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// The answer of `GET /ready`: each dependency named, never the upstream's own error text.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// `ok` or `unavailable`.
    pub store: &'static str,
    /// `ok` or `unavailable`.
    pub provider: &'static str,
    /// Each MCP server of the agents file: `ok` (connected) or `unavailable`; absent without any.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub mcp: std::collections::BTreeMap<String, &'static str>,
}

/// How long a `/ready` result (success or failure) is kept: probes at any rate cost the store
/// and the upstream one check per this long.
pub const READY_CACHE: Duration = Duration::from_secs(3);

/// The last `/ready` result and when it was found; the lock also makes concurrent probes wait
/// for one check instead of each making its own.
#[derive(Default)]
pub struct ReadyCache(tokio::sync::Mutex<Option<(Instant, Ready)>>);

#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Store and provider answer (cached for a few seconds)", body = Ready),
        (status = 429, description = "Rate limited like any request", body = DetailError),
        (status = 503, description = "Store, provider or an MCP server unavailable", body = Ready)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
    let mut cached = state.ready.0.lock().await;
    let report = match &*cached {
        Some((at, report)) if at.elapsed() < READY_CACHE => report.clone(),
        _ => {
            let (store, tasks, llm) = tokio::join!(
                state.conversations.ready(),
                state.tasks.ready(),
                state.llm.ready()
            );
            let store_ok = store.is_ok() && tasks.is_ok();
            let llm_ok = llm.is_ok();
            if let Err(e) = &llm {
                tracing::warn!(error = %e, "readiness: the provider does not answer");
            }
            let word = |ok: bool| if ok { "ok" } else { "unavailable" };
            let mcp: std::collections::BTreeMap<String, &'static str> = state
                .agents
                .toolbox
                .mcp_servers()
                .map(|s| (s.name().to_owned(), word(s.connected())))
                .collect();
            let mcp_ok = mcp.values().all(|w| *w == "ok");
            let report = Ready {
                mcp,
                status: if store_ok && llm_ok && mcp_ok {
                    "ready"
                } else {
                    "not_ready"
                },
                store: word(store_ok),
                provider: word(llm_ok),
            };
            *cached = Some((Instant::now(), report.clone()));
            report
        }
    };
    drop(cached);
    let status = if report.status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let (queued, running) = state.runner.counts();
    let m = &state.metrics;
    m.tasks
        .get_or_create(&StateLabels { state: "pending" })
        .set(queued as i64);
    m.tasks
        .get_or_create(&StateLabels { state: "running" })
        .set(running as i64);
    m.runs_held.set(state.runs.len() as i64);
    m.run_bytes_held.set(state.runs.held_bytes() as i64);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        m.encode(),
    )
        .into_response()
}
