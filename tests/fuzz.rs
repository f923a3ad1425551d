//! Property test: arbitrary methods, paths, headers and bodies never panic the server and never
//! get a 5xx other than the documented ones (502/503/504 come only from upstreams and limits).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use agent_api::config::{Config, parse_api_keys};
use agent_api::{AppState, app};
use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use tower::ServiceExt;

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD",
    ])
}

fn path() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "/",
        "/chat",
        "/chat/stream",
        "/conversations",
        "/conversation/",
        "/task",
        "/tasks",
        "/task/",
        "/ws/",
        "/v1/chat/completions",
        "/v1/models",
        "/health",
        "/ready",
        "/docs",
    ]);
    (known, "[a-zA-Z0-9_%./?=&-]{0,40}").prop_map(|(k, tail)| format!("{k}{tail}"))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        Just(br#"{"message": "hi"}"#.to_vec()),
        "[ -~]{0,120}"
            .prop_map(|s| format!(r#"{{"message": {s:?}, "temperature": 1}}"#).into_bytes()),
        (any::<f64>(), any::<i64>()).prop_map(|(t, m)| {
            format!(r#"{{"message": "x", "temperature": {t}, "max_tokens": {m}}}"#).into_bytes()
        }),
        Just(br#"{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}"#.to_vec()),
        Just(br#"{"prompt": "p", "task_type": 1}"#.to_vec()),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop::sample::select(vec![
        "x-api-key",
        "authorization",
        "content-type",
        "x-forwarded-for",
        "x-request-id",
        "content-length",
        "origin",
        "upgrade",
        "connection",
    ]);
    prop::collection::vec((name, "[ -~]{0,60}"), 0..4)
        .prop_map(|v| v.into_iter().map(|(n, v)| (n.to_owned(), v)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn no_panic_and_no_undocumented_5xx(
        method in method(), path in path(), body in body(), headers in headers(), keyed in any::<bool>()
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = rt.block_on(async move {
            let mut config = Config::for_tests();
            config.echo_delay = std::time::Duration::ZERO;
            if keyed {
                config.api_keys = parse_api_keys(&["k=secret".into()], "API_KEYS").unwrap();
            }
            let state = AppState::build(config).unwrap();
            let mut req = Request::builder().method(method);
            req = match path.parse::<axum::http::Uri>() {
                Ok(uri) => req.uri(uri),
                Err(_) => req.uri("/"),
            };
            for (n, v) in &headers {
                if let Ok(v) = axum::http::HeaderValue::from_str(v) {
                    req = req.header(n.as_str(), v);
                }
            }
            let req = match req.body(Body::from(body)) {
                Ok(r) => r,
                Err(_) => return 200,
            };
            let res = app(state).oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            // Read the body too: a stream must not panic halfway.
            let _ = axum::body::to_bytes(res.into_body(), 1 << 20).await;
            status
        });
        prop_assert!(status < 500 || [502, 503, 504].contains(&status), "status {}", status);
    }
}
