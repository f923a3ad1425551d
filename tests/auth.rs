//! API keys and ownership. The route table comes from the router itself (`routes::ROUTES`), so
//! a route added later cannot be forgotten here.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use agent_api::config::parse_api_keys;
use agent_api::middleware::auth::is_public;
use agent_api::routes::ROUTES;
use common::TestApp;
use reqwest::Method;
use serde_json::{Value, json};

async fn keyed_app() -> TestApp {
    TestApp::echo(|c| {
        c.api_keys =
            parse_api_keys(&["alice=key-a".into(), "bob=key-b".into()], "API_KEYS").unwrap();
    })
    .await
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "some-id")
        .replace("{task_id}", "some-task")
        .replace("{client_id}", "some-client")
        .replace("{*file}", "index.html")
}

enum Cred {
    None,
    Header(&'static str),
    Bearer(&'static str),
    Query(&'static str),
}

async fn call(app: &TestApp, method: &str, path: &str, cred: &Cred) -> reqwest::Response {
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = match cred {
        Cred::Query(k) => format!("{}{}{}api_key={}", app.url, path, sep, k),
        _ => format!("{}{}", app.url, path),
    };
    let mut req = app
        .client
        .request(Method::from_bytes(method.as_bytes()).unwrap(), url);
    match cred {
        Cred::Header(k) => req = req.header("x-api-key", *k),
        Cred::Bearer(k) => req = req.header("authorization", format!("Bearer {k}")),
        _ => {}
    }
    if method == "POST" {
        req = req.json(&json!({}));
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn every_route_needs_a_key_unless_public() {
    let app = keyed_app().await;
    let mut checked = 0;
    for route in ROUTES {
        let path = concrete(route.path);
        for method in route.methods {
            let public = is_public(route.path);
            for cred in [
                Cred::None,
                Cred::Header("wrong"),
                Cred::Bearer("wrong"),
                Cred::Query("wrong"),
            ] {
                let res = call(&app, method, &path, &cred).await;
                if public {
                    assert_ne!(res.status(), 401, "{method} {path} is public");
                    continue;
                }
                assert_eq!(res.status(), 401, "{method} {path} without a valid key");
                assert!(res.headers().contains_key("www-authenticate"));
                let body: Value = res.json().await.unwrap();
                if path.starts_with("/v1/") {
                    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
                } else {
                    assert!(body["detail"].is_string(), "{body}");
                }
            }
            if public {
                continue;
            }
            for cred in [Cred::Header("key-a"), Cred::Bearer("key-b")] {
                let res = call(&app, method, &path, &cred).await;
                assert_ne!(res.status(), 401, "{method} {path} with a valid key");
            }
            // ?api_key= only where browsers need it.
            // (What an EventSource opens: a stream, and a run's or a task's events.)
            let event_source = [
                "/chat/stream",
                "/runs/{run_id}/events",
                "/task/{task_id}/events",
            ];
            let query_ok = (*method == "GET" && event_source.contains(&route.path))
                || route.path.starts_with("/ws/");
            let res = call(&app, method, &path, &Cred::Query("key-a")).await;
            assert_eq!(
                res.status() != 401,
                query_ok,
                "{method} {path} with ?api_key="
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "{checked}");
}

#[tokio::test]
async fn the_route_table_matches_the_router() {
    let app = keyed_app().await;
    for route in ROUTES {
        let path = concrete(route.path);
        for method in ["GET", "POST", "DELETE", "PUT", "PATCH"] {
            let res = call(&app, method, &path, &Cred::Header("key-a")).await;
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            if route.methods.contains(&method) {
                assert_ne!(status, 405, "{method} {path} is listed but not routed");
                assert_ne!(
                    body,
                    json!({"detail": "Not Found"}),
                    "{method} {path} has no handler"
                );
            } else {
                assert_eq!(status, 405, "{method} {path} answers but is not in ROUTES");
            }
        }
    }
}

#[tokio::test]
async fn conversations_and_tasks_belong_to_their_key() {
    let app = keyed_app().await;
    let post = |key: &'static str, path: &'static str, body: Value| {
        let app = &app;
        async move {
            let res = app
                .client
                .post(format!("{}{}", app.url, path))
                .header("x-api-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let get = |key: &'static str, path: String| {
        let app = &app;
        async move {
            let res = app
                .client
                .get(format!("{}{}", app.url, path))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let (s, _) = post(
        "key-a",
        "/chat",
        json!({"message": "mine", "conversation_id": "alice-conv"}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, task) = post("key-a", "/task", json!({"prompt": "alice's"})).await;
    assert_eq!(s, 202);
    let task_id = task["task_id"].as_str().unwrap().to_owned();

    // Bob sees nothing of Alice's.
    assert_eq!(get("key-b", "/conversation/alice-conv".into()).await.0, 404);
    assert_eq!(get("key-b", format!("/task/{task_id}")).await.0, 404);
    assert_eq!(get("key-b", "/conversations".into()).await.1["count"], 0);
    assert_eq!(get("key-b", "/tasks".into()).await.1["count"], 0);
    let (s, _) = post(
        "key-b",
        "/chat",
        json!({"message": "hijack", "conversation_id": "alice-conv"}),
    )
    .await;
    // Ids are per key: naming another key's id makes the caller's own conversation.
    assert_eq!(
        s, 200,
        "naming another key's conversation id starts one's own"
    );
    let (s, mine) = get("key-b", "/conversation/alice-conv".into()).await;
    assert_eq!(s, 200);
    assert_eq!(mine["messages"][1]["content"], "hijack");
    let res = app
        .client
        .delete(format!("{}/task/{task_id}", app.url))
        .header("x-api-key", "key-b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = app
        .client
        .delete(format!("{}/conversation/alice-conv", app.url))
        .header("x-api-key", "key-b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "bob deletes his own alice-conv");
    assert_eq!(get("key-b", "/conversation/alice-conv".into()).await.0, 404);

    // Alice's things are untouched.
    let (s, conv) = get("key-a", "/conversation/alice-conv".into()).await;
    assert_eq!(s, 200);
    assert_eq!(conv["message_count"], 3);
    assert_eq!(conv["messages"][1]["content"], "mine");
    assert_eq!(get("key-a", "/conversations".into()).await.1["count"], 1);
    assert_eq!(get("key-a", "/tasks".into()).await.1["count"], 1);
    assert_eq!(get("key-a", format!("/task/{task_id}")).await.0, 200);
}

#[tokio::test]
async fn websocket_accepts_a_query_key() {
    let app = keyed_app().await;
    let url = app.ws_url("/ws/browser?api_key=key-a");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"message": "hi"}).to_string(),
    ))
    .await
    .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("content"), "{first:?}");
    let denied = tokio_tungstenite::connect_async(app.ws_url("/ws/browser?api_key=nope")).await;
    assert!(denied.is_err());
}
