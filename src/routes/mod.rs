//! Every path of the HTTP surface, in one place. Handlers live in the files named here.
//!
//! [`ROUTES`] is the list of what is mounted: `router()` mounts exactly these paths, so tests
//! (auth, OpenAPI) that walk the list cannot miss a route.

pub mod agents;
pub mod chat;
pub mod conversations;
pub mod health;
pub mod openai;
pub mod page;
pub mod responses;
pub mod runs;
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
    route("/task/{task_id}/events", &["GET"]),
    route("/runs/{run_id}", &["GET", "DELETE"]),
    route("/runs/{run_id}/events", &["GET"]),
    route("/ws/{client_id}", &["GET"]),
    route("/agents", &["GET"]),
    route("/agents/{name}", &["GET"]),
    route("/v1/chat/completions", &["POST"]),
    route("/v1/models", &["GET"]),
    route("/v1/responses", &["POST"]),
    route("/v1/responses/{response_id}", &["GET", "DELETE"]),
    route("/v1/responses/{response_id}/cancel", &["POST"]),
    route("/v1/responses/{response_id}/input_items", &["GET"]),
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
        "/task/{task_id}/events" => get(tasks::task_events),
        "/runs/{run_id}" => get(runs::get_run).delete(runs::cancel_run),
        "/runs/{run_id}/events" => get(runs::run_events),
        "/ws/{client_id}" => get(ws::connect),
        "/agents" => get(agents::list_agents),
        "/agents/{name}" => get(agents::get_agent),
        "/v1/chat/completions" => post(openai::chat_completions),
        "/v1/models" => get(openai::list_models),
        "/v1/responses" => post(responses::create_response),
        "/v1/responses/{response_id}" => {
            get(responses::get_response).delete(responses::delete_response)
        }
        "/v1/responses/{response_id}/cancel" => post(responses::cancel_response),
        "/v1/responses/{response_id}/input_items" => get(responses::input_items),
        "/metrics" => get(health::metrics),
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

/// Serializes a UTC time exactly as chrono's `Serialize` does (RFC 3339 with `Z`, and 0, 3, 6 or
/// 9 digits of fraction, as few as hold it), but without `fmt`: chrono's goes through
/// `collect_str` and its `Display` (the cost: the README's performance notes). Times outside
/// years 0–9999 or in a leap second are left to chrono.
pub fn rfc3339<S: serde::Serializer>(
    t: &chrono::DateTime<chrono::Utc>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize as _;
    let mut buf = [0u8; 30];
    match format_rfc3339(t, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => t.serialize(s),
    }
}

fn format_rfc3339<'a>(t: &chrono::DateTime<chrono::Utc>, buf: &'a mut [u8; 30]) -> Option<&'a str> {
    use chrono::{Datelike as _, Timelike as _};
    fn put(buf: &mut [u8], mut n: u32) {
        for b in buf.iter_mut().rev() {
            *b = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = t.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    buf[..20].copy_from_slice(b"0000-00-00T00:00:00.");
    put(&mut buf[0..4], year);
    put(&mut buf[5..7], t.month());
    put(&mut buf[8..10], t.day());
    put(&mut buf[11..13], t.hour());
    put(&mut buf[14..16], t.minute());
    put(&mut buf[17..19], t.second());
    let end = if nanos == 0 {
        19
    } else if nanos.is_multiple_of(1_000_000) {
        put(&mut buf[20..23], nanos / 1_000_000);
        23
    } else if nanos.is_multiple_of(1_000) {
        put(&mut buf[20..26], nanos / 1_000);
        26
    } else {
        put(&mut buf[20..29], nanos);
        29
    };
    buf[end] = b'Z';
    std::str::from_utf8(&buf[..=end]).ok()
}

/// The route table's own `&'static str` for a matched path ("unmatched" for none).
pub fn route_label(matched: Option<&str>) -> &'static str {
    matched
        .and_then(|m| ROUTES.iter().find(|r| r.path == m))
        .map(|r| r.path)
        .unwrap_or("unmatched")
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    #[derive(serde::Serialize)]
    struct Ours(#[serde(serialize_with = "super::rfc3339")] DateTime<Utc>);

    proptest! {
        /// The same text as chrono's own serialization, for any time chrono can hold.
        #[test]
        fn rfc3339_is_chronos_text(
            secs in -70_000_000_000i64..300_000_000_000,
            nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|n| n * 1_000_000),
                                 (0u32..1_000_000).prop_map(|n| n * 1000), 0u32..2_000_000_000],
        ) {
            if let Some(t) = DateTime::<Utc>::from_timestamp(secs, nanos) {
                prop_assert_eq!(
                    serde_json::to_string(&Ours(t)).unwrap(),
                    serde_json::to_string(&t).unwrap()
                );
            }
        }
    }

    #[test]
    fn rfc3339_examples() {
        let t = DateTime::<Utc>::from_timestamp(1_795_000_000, 120_000_000).unwrap();
        assert_eq!(
            serde_json::to_string(&Ours(t)).unwrap(),
            "\"2026-11-18T11:06:40.120Z\""
        );
        let t = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        assert_eq!(
            serde_json::to_string(&Ours(t)).unwrap(),
            "\"1970-01-01T00:00:00Z\""
        );
    }
}
