//! `/metrics`, `/openapi.json` (with a snapshot) and the offline `/docs`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeSet;

use agent_api::routes::ROUTES;
use common::{FakeOpenAi, TestApp};
use serde_json::{Value, json};

async fn scrape(app: &TestApp) -> String {
    let res = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    res.text().await.unwrap()
}

/// The value of the first series whose line starts with `prefix` (0 when absent).
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_with_requests() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| {
        c.api_keys = agent_api::config::parse_api_keys(&["k=key".into()], "API_KEYS").unwrap();
    })
    .await;
    let before = scrape(&app).await;
    let requests = r#"agent_api_http_requests_total{method="POST",route="/chat",status="200"}"#;
    let overhead = r#"agent_api_gateway_overhead_seconds_count{method="POST",route="/chat"}"#;
    let upstream = r#"agent_api_upstream_duration_seconds_count{call="complete"}"#;
    let tokens = r#"agent_api_tokens_total{kind="completion"}"#;
    let rejected = "agent_api_auth_rejected_total";
    let res = app
        .client
        .post(format!("{}/chat", app.url))
        .header("x-api-key", "key")
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, _) = app.post("/chat", json!({"message": "no key"})).await;
    assert_eq!(status, 401);
    let after = scrape(&app).await;
    let shown: Vec<&str> = after.lines().filter(|l| !l.contains("bucket")).collect();
    assert_eq!(
        value(&after, requests) - value(&before, requests),
        1.0,
        "{shown:#?}"
    );
    assert_eq!(value(&after, overhead) - value(&before, overhead), 1.0);
    assert_eq!(value(&after, upstream) - value(&before, upstream), 1.0);
    assert_eq!(value(&after, tokens) - value(&before, tokens), 7.0);
    assert_eq!(value(&after, rejected) - value(&before, rejected), 1.0);
    for name in [
        "agent_api_http_request_duration_seconds_bucket",
        "agent_api_open_streams",
        "agent_api_open_websockets",
        "agent_api_rate_limited_total",
        "# TYPE agent_api_tasks gauge",
        "# UNIT agent_api_gateway_overhead_seconds seconds",
    ] {
        assert!(after.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn tasks_by_state_are_counted() {
    let app = TestApp::echo(|_| {}).await;
    let (_, t) = app.post("/task", json!({"prompt": "x"})).await;
    app.wait_task(t["task_id"].as_str().unwrap(), 5).await;
    let text = scrape(&app).await;
    assert_eq!(
        value(
            &text,
            r#"agent_api_tasks_finished_total{state="completed"}"#
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn openapi_lists_every_route_and_matches_the_snapshot() {
    let app = TestApp::echo(|_| {}).await;
    let (status, spec) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let documented: BTreeSet<String> = spec["paths"].as_object().unwrap().keys().cloned().collect();
    let undocumented = ["/", "/openapi.json", "/docs", "/docs/", "/docs/{*file}"];
    for route in ROUTES.iter().filter(|r| !undocumented.contains(&r.path)) {
        assert!(
            documented.contains(route.path),
            "{} is not in /openapi.json",
            route.path
        );
        for method in route.methods {
            let op = &spec["paths"][route.path][method.to_lowercase()];
            assert!(op.is_object(), "{method} {} is not documented", route.path);
        }
    }
    for schema in [
        "ChatInput",
        "ChatResponse",
        "TaskResponse",
        "DetailError",
        "ValidationError",
        "OpenAiErrorBody",
    ] {
        assert!(
            spec["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
    }

    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/openapi.json");
    let pretty = serde_json::to_string_pretty(&spec).unwrap() + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() || !path.exists() {
        std::fs::write(&path, &pretty).unwrap();
    }
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        saved == spec,
        "/openapi.json changed; if on purpose, run UPDATE_SNAPSHOTS=1 cargo test --test observability and commit tests/snapshots/openapi.json"
    );
}

#[tokio::test]
async fn docs_are_served_offline() {
    let app = TestApp::echo(|c| {
        c.api_keys = agent_api::config::parse_api_keys(&["k=key".into()], "API_KEYS").unwrap();
    })
    .await;
    let res = app
        .client
        .get(format!("{}/docs/", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "docs are public");
    let html = res.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // Every script and stylesheet it loads is served here, from no other host.
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        assert!(html.contains(asset), "{asset}");
        let res = app
            .client
            .get(format!("{}/docs/{asset}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{asset}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external host: {html}"
    );
    let init = app
        .client
        .get(format!("{}/docs/swagger-initializer.js", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
    let (status, _) = app.get("/openapi.json").await;
    assert_eq!(status, 200, "the spec is public");
}

#[tokio::test]
async fn openapi_is_true_to_the_server_where_generators_look() {
    let app = TestApp::echo(|_| {}).await;
    let (_, spec) = app.get("/openapi.json").await;
    // The query of GET /chat/stream is a query, not a path.
    let params = spec["paths"]["/chat/stream"]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(!params.is_empty());
    assert!(params.iter().all(|p| p["in"] == "query"), "{params:?}");
    // A 422's loc holds names and positions.
    let loc = &spec["components"]["schemas"]["LocItem"]["oneOf"];
    let types: Vec<&str> = loc
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["string", "integer"]);
    // Every keyed route takes either header, /v1 included.
    for (path, method) in [
        ("/v1/chat/completions", "post"),
        ("/v1/models", "get"),
        ("/chat", "post"),
    ] {
        let schemes: Vec<String> = spec["paths"][path][method]["security"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s.as_object().unwrap().keys().cloned())
            .collect();
        assert!(
            schemes.contains(&"api_key".into()) && schemes.contains(&"bearer".into()),
            "{path}: {schemes:?}"
        );
    }
    // Streams document their events.
    let stream = &spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"];
    assert!(stream["text/event-stream"].is_object() && stream["application/json"].is_object());
}
