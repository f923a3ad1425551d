//! Agents with HTTP tools, end to end: the real app against the fake upstream (whole and
//! streamed answers with tool calls) and a local HTTP tool server; and offline with `echo`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use common::{Behaviour, FakeOpenAi, TestApp, read_sse};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

/// The tool server's record: every body it was sent, with its Authorization header.
#[derive(Default)]
struct Tools {
    calls: Mutex<Vec<(String, Value, String)>>,
    /// Slow calls whose request was dropped before they answered (the turn was cancelled).
    dropped: AtomicUsize,
}

struct Dropped(Arc<Tools>, bool);
impl Drop for Dropped {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn tool_server() -> (String, Arc<Tools>) {
    let tools = Arc::new(Tools::default());
    fn record(t: &Tools, path: &str, h: &HeaderMap, body: &Value) {
        let auth = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        t.calls
            .lock()
            .unwrap()
            .push((path.into(), body.clone(), auth));
    }
    let app =
        Router::new()
            .route(
                "/lookup",
                post(
                    |State(t): State<Arc<Tools>>,
                     h: HeaderMap,
                     axum::Json(b): axum::Json<Value>| async move {
                        record(&t, "/lookup", &h, &b);
                        format!("order {}: shipped", b["order_id"].as_str().unwrap_or("?"))
                    },
                ),
            )
            .route(
                "/fail",
                post(
                    |State(t): State<Arc<Tools>>,
                     h: HeaderMap,
                     axum::Json(b): axum::Json<Value>| async move {
                        record(&t, "/fail", &h, &b);
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom")
                    },
                ),
            )
            .route(
                "/slow",
                post(
                    |State(t): State<Arc<Tools>>,
                     h: HeaderMap,
                     axum::Json(b): axum::Json<Value>| async move {
                        record(&t, "/slow", &h, &b);
                        let mut guard = Dropped(Arc::clone(&t), false);
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        guard.1 = true;
                        "late"
                    },
                ),
            )
            .route(
                "/big",
                post(
                    |State(t): State<Arc<Tools>>,
                     h: HeaderMap,
                     axum::Json(b): axum::Json<Value>| async move {
                        record(&t, "/big", &h, &b);
                        "é".repeat(600)
                    },
                ),
            )
            .with_state(Arc::clone(&tools));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    #[expect(
        clippy::disallowed_methods,
        reason = "the tool server runs beside the test"
    )]
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, tools)
}

fn agents_file(tools_url: &str, tool_timeout_secs: u64) -> String {
    format!(
        r#"
[agents.support]
description = "Answers order questions"
instructions = "You are the support agent of ACME."
temperature = 0.2
tools = ["lookup_order", "failing", "slow", "big"]
max_steps = 3
tool_timeout_secs = {tool_timeout_secs}

[tools.lookup_order]
description = "Look up an order by its id"
url = "{tools_url}/lookup"
headers = {{ Authorization = "Bearer ${{ORDERS_TOKEN}}" }}
parameters = {{ type = "object", properties = {{ order_id = {{ type = "string" }} }}, required = ["order_id"] }}

[tools.failing]
url = "{tools_url}/fail"

[tools.slow]
url = "{tools_url}/slow"

[tools.big]
url = "{tools_url}/big"
"#
    )
}

fn with_agents(c: &mut agent_api::Config, text: &str) {
    let env = |k: &str| (k == "ORDERS_TOKEN").then(|| "orders-secret-token".to_owned());
    c.agents = Arc::new(c.parse_agents(text, "agents.toml", &env).unwrap());
}

fn calls(b: &mut Behaviour, calls: &[(&str, &str)]) {
    b.tool_calls = calls
        .iter()
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .collect();
}

async fn setup(
    tool_timeout_secs: u64,
    f: impl FnOnce(&mut Behaviour),
) -> (FakeOpenAi, TestApp, Arc<Tools>) {
    let (url, tools) = tool_server().await;
    let mut b = Behaviour {
        content: "Your order has shipped.".into(),
        ..Default::default()
    };
    f(&mut b);
    let fake = FakeOpenAi::start_with(b).await;
    let file = agents_file(&url, tool_timeout_secs);
    let app = TestApp::with_fake(&fake, |c| {
        with_agents(c, &file);
        c.tool_result_max_bytes = 1000;
    })
    .await;
    (fake, app, tools)
}

/// The `tool` messages of an upstream request: (tool_call_id, content).
fn tool_messages(req: &Value) -> Vec<(String, String)> {
    req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn chat_runs_an_http_tool_and_feeds_the_result_back() {
    let (fake, app, tools) =
        setup(1, |b| calls(b, &[("lookup_order", r#"{"order_id":"42"}"#)])).await;
    let (status, body) = app
        .post(
            "/chat",
            json!({"message": "where is order 42?", "agent": "support"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"], "Your order has shipped.");
    assert_eq!(body["steps"], 2);
    assert_eq!(body["tokens_used"], 36, "the sum over both model calls");
    assert_eq!(
        body["tool_calls"],
        json!([{"id": "call_0_0", "name": "lookup_order", "arguments": {"order_id": "42"}, "result": "order 42: shipped"}])
    );
    // The tool got the arguments as JSON, with the header from the file (the variable's value).
    let seen = tools.calls.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1, json!({"order_id": "42"}));
    assert_eq!(seen[0].2, "Bearer orders-secret-token");
    // Upstream: the tools offered as OpenAI function tools, the agent's instructions and
    // temperature; the second call carries the assistant's call and the tool's result.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1]["model"], reqs[0]["model"]);
    assert_eq!(reqs[1]["temperature"], 0.2);
    assert_eq!(reqs[0]["tools"][0]["type"], "function");
    assert_eq!(reqs[0]["tools"][0]["function"]["name"], "lookup_order");
    assert_eq!(
        reqs[0]["tools"][0]["function"]["parameters"]["required"],
        json!(["order_id"])
    );
    assert_eq!(
        reqs[0]["messages"][0]["content"],
        "You are the support agent of ACME."
    );
    assert_eq!(reqs[0]["temperature"], 0.2);
    let m = reqs[1]["messages"].as_array().unwrap();
    assert_eq!(m[2]["role"], "assistant");
    assert_eq!(
        m[2]["tool_calls"][0]["function"]["arguments"],
        r#"{"order_id":"42"}"#
    );
    assert_eq!(
        tool_messages(&reqs[1]),
        vec![("call_0_0".into(), "order 42: shipped".into())]
    );
    // The stored conversation holds the tool turn as the model saw it, and its agent.
    let id = body["conversation_id"].as_str().unwrap();
    let (_, conv) = app.get(&format!("/conversation/{id}")).await;
    assert_eq!(conv["agent"], "support");
    let roles: Vec<&str> = conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant"]);
    assert_eq!(
        conv["messages"][2]["tool_calls"],
        json!([{"id": "call_0_0", "name": "lookup_order", "arguments": {"order_id": "42"}}])
    );
    assert_eq!(conv["messages"][3]["tool_call_id"], "call_0_0");
    // A later turn sends the whole tool turn again.
    let (status, _) = app
        .post("/chat", json!({"message": "thanks", "conversation_id": id}))
        .await;
    assert_eq!(status, 200);
    let last = fake.requests().last().unwrap().clone();
    assert_eq!(
        last["messages"].as_array().unwrap().len(),
        6,
        "five stored, one new"
    );
    // Metrics count the call.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"agent_api_tool_calls_total{tool="lookup_order",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("agent_api_tool_call_duration_seconds_count{tool=\"lookup_order\"} 1")
    );
}

#[tokio::test]
async fn parallel_streamed_calls_with_interleaved_fragments_come_out_in_call_order() {
    let (fake, app, _) = setup(1, |b| {
        calls(
            b,
            &[
                ("lookup_order", r#"{"order_id":"1"}"#),
                ("lookup_order", r#"{"order_id":"2"}"#),
            ],
        );
    })
    .await;
    let res = app
        .client
        .post(format!("{}/chat/stream", app.url))
        .json(&json!({"message": "two orders", "agent": "support"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let events = read_sse(res).await;
    let named: Vec<(String, Value)> = events
        .iter()
        .filter_map(|(_, e)| Some((e.event.clone()?, serde_json::from_str(&e.data).ok()?)))
        .collect();
    let kinds: Vec<&str> = named.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "tool_call").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "tool_result").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        named[0].1,
        json!({"id": "call_0_0", "name": "lookup_order", "arguments": {"order_id": "1"}})
    );
    assert_eq!(named[1].1["arguments"], json!({"order_id": "2"}));
    let result = named
        .iter()
        .find(|(k, v)| k == "tool_result" && v["id"] == "call_0_1")
        .unwrap();
    assert_eq!(result.1["result"], "order 2: shipped");
    assert!(result.1["duration_ms"].is_u64());
    // Content and the done frame come as plain data events.
    let data: Vec<Value> = events
        .iter()
        .filter(|(_, e)| e.event.is_none())
        .filter_map(|(_, e)| serde_json::from_str(&e.data).ok())
        .collect();
    let text: String = data.iter().filter_map(|d| d["content"].as_str()).collect();
    assert_eq!(text, "Your order has shipped.");
    let done = data.last().unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(done["steps"], 2);
    // The results go back in call order whichever finished first; every step is sent with
    // the turn's model and sampling fields.
    let reqs = fake.requests();
    for r in &reqs {
        assert_eq!(r["model"], "gpt-4o-mini");
        assert_eq!(r["temperature"], 0.2);
        assert_eq!(r["max_tokens"], 1000);
        assert_eq!(r["stream"], true);
    }
    assert_eq!(
        tool_messages(&reqs[1]),
        vec![
            ("call_0_0".into(), "order 1: shipped".into()),
            ("call_0_1".into(), "order 2: shipped".into())
        ]
    );
    let m = reqs[1]["messages"].as_array().unwrap();
    let args: Vec<&str> = m[2]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(args, [r#"{"order_id":"1"}"#, r#"{"order_id":"2"}"#]);
}

#[tokio::test]
async fn tool_failures_are_fed_back_to_the_model_not_the_client() {
    let (fake, app, tools) = setup(1, |b| {
        calls(
            b,
            &[
                ("failing", "{}"),
                ("lookup_order", r#"{"order_id": 42}"#),
                ("lookup_order", "not json"),
                ("no_such_tool", "{}"),
                ("slow", "{}"),
                ("big", "{}"),
            ],
        );
    })
    .await;
    let started = std::time::Instant::now();
    let (status, body) = app
        .post("/chat", json!({"message": "try", "agent": "support"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the slow tool's 1 s timeout holds"
    );
    let results = tool_messages(&fake.requests()[1]);
    assert_eq!(results.len(), 6);
    let error = |i: usize| -> String {
        let v: Value =
            serde_json::from_str(&results[i].1).unwrap_or_else(|_| panic!("{}", results[i].1));
        v["error"].as_str().unwrap().to_owned()
    };
    assert!(
        error(0).contains("500") && error(0).contains("boom"),
        "{}",
        error(0)
    );
    assert!(
        error(1).contains("parameters") && error(1).contains("order_id"),
        "{}",
        error(1)
    );
    assert!(error(2).contains("not valid JSON"), "{}", error(2));
    assert!(error(3).contains("unknown tool"), "{}", error(3));
    assert!(error(4).contains("did not answer within"), "{}", error(4));
    // Cut to TOOL_RESULT_MAX_BYTES (1000 here) at a character boundary.
    assert!(results[5].1.ends_with("[truncated]"));
    assert!(results[5].1.len() <= 1000 + "[truncated]".len());
    // The client sees the same errors per call; bad arguments never reached the tool.
    let errs: Vec<bool> = body["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["error"].is_string())
        .collect();
    assert_eq!(errs, [true, true, true, true, true, false]);
    assert_eq!(
        body["tool_calls"][2]["arguments"], "not json",
        "unparsable arguments shown as text"
    );
    let paths: Vec<String> = tools
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.0.clone())
        .collect();
    assert!(!paths.contains(&"/lookup".to_owned()), "{paths:?}");
    let metrics = app.metrics().await;
    for line in [
        r#"tool="failing",outcome="error""#,
        r#"tool="lookup_order",outcome="invalid_arguments""#,
        r#"tool="unknown",outcome="unknown_tool""#,
        r#"tool="slow",outcome="timeout""#,
    ] {
        assert!(metrics.contains(line), "{line}");
    }
}

#[tokio::test]
async fn max_steps_ends_the_turn_with_tool_choice_none_and_drops_the_last_calls() {
    let (fake, app, _) = setup(1, |b| {
        calls(b, &[("lookup_order", r#"{"order_id":"1"}"#)]);
        b.tool_rounds = 100;
    })
    .await;
    let (status, body) = app
        .post("/chat", json!({"message": "loop", "agent": "support"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["steps"], 3);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs[0].get("tool_choice").is_none() && reqs[1].get("tool_choice").is_none());
    assert_eq!(
        reqs[2]["tool_choice"], "none",
        "the last step may not call tools"
    );
    // The fake answers the last step with text; two tool turns were stored before it.
    let id = body["conversation_id"].as_str().unwrap();
    let (_, conv) = app.get(&format!("/conversation/{id}")).await;
    let roles: Vec<&str> = conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ]
    );
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_running_tool_call_and_nothing_is_stored() {
    let (_fake, app, tools) = setup(30, |b| calls(b, &[("slow", "{}")])).await;
    let res = app
        .client
        .post(format!("{}/chat/stream", app.url))
        .json(&json!({"message": "wait", "agent": "support", "conversation_id": "leaving"}))
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    // Read until the tool call is announced, then leave.
    let mut seen = String::new();
    while !seen.contains("event: tool_call") {
        seen.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(body);
    let mut waited = 0;
    while tools.dropped.load(Ordering::SeqCst) == 0 && waited < 50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(
        tools.dropped.load(Ordering::SeqCst),
        1,
        "the tool's request was dropped"
    );
    let (status, _) = app.get("/conversation/leaving").await;
    assert_eq!(status, 404, "nothing of the cancelled turn was written");
}

#[tokio::test]
async fn a_conversation_keeps_its_agent_and_bad_agents_are_refused() {
    let (_fake, app, _) = setup(1, |_| {}).await;
    let (status, body) = app
        .post("/chat", json!({"message": "hi", "agent": "nobody"}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "agent"]));
    let (status, body) = app
        .post(
            "/chat",
            json!({"message": "hi", "agent": "support", "model": "gpt-4o"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = app
        .post(
            "/chat",
            json!({"message": "hi", "conversation_id": "plain"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .post(
            "/chat",
            json!({"message": "hi", "conversation_id": "plain", "agent": "support"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("default"));
    let (status, _) = app
        .post(
            "/chat",
            json!({"message": "hi", "conversation_id": "sup", "agent": "support"}),
        )
        .await;
    assert_eq!(status, 200);
    // Omitting the agent continues with the conversation's own.
    let (status, _) = app
        .post(
            "/chat",
            json!({"message": "again", "conversation_id": "sup"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, conv) = app.get("/conversation/sup").await;
    assert_eq!(conv["agent"], "support");
    assert_eq!(
        conv["messages"][0]["content"],
        "You are the support agent of ACME."
    );
    let (_, conv) = app.get("/conversation/plain").await;
    assert_eq!(conv["agent"], "default");
}

#[tokio::test]
async fn agents_are_listed_without_secrets() {
    let (_fake, app, _) = setup(1, |_| {}).await;
    let res = app
        .client
        .get(format!("{}/agents", app.url))
        .send()
        .await
        .unwrap();
    let text = res.text().await.unwrap();
    assert!(
        !text.contains("orders-secret-token") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let list: Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "support"]);
    assert_eq!(
        list["agents"][1]["tools"],
        json!(["lookup_order", "failing", "slow", "big"])
    );
    assert_eq!(list["agents"][1]["model"], "gpt-4o-mini");
    let (status, one) = app.get("/agents/support").await;
    assert_eq!(status, 200);
    assert_eq!(one["tools"][0]["source"], "http");
    assert_eq!(
        one["tools"][0]["parameters"]["required"],
        json!(["order_id"])
    );
    assert!(!one.to_string().contains("orders-secret-token"));
    assert_eq!(app.get("/agents/nobody").await.0, 404);
}

#[tokio::test]
async fn websocket_frames_carry_tool_calls_and_results() {
    let (_fake, app, _) = setup(1, |b| calls(b, &[("lookup_order", r#"{"order_id":"7"}"#)])).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(app.ws_url("/ws/agent-client"))
        .await
        .unwrap();
    let msg = json!({"message": "order 7?", "agent": "support"}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(msg.into()))
        .await
        .unwrap();
    let mut frames = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            let done = v.get("done").is_some();
            frames.push(v);
            if done {
                break;
            }
        }
    }
    assert_eq!(
        frames[0]["tool_call"],
        json!({"id": "call_0_0", "name": "lookup_order", "arguments": {"order_id": "7"}})
    );
    assert_eq!(frames[1]["tool_result"]["result"], "order 7: shipped");
    assert_eq!(frames.last().unwrap()["steps"], 2);
}

#[tokio::test]
async fn a_task_runs_its_agent_and_reports_its_tool_calls() {
    let (_fake, app, _) = setup(1, |b| calls(b, &[("lookup_order", r#"{"order_id":"9"}"#)])).await;
    let (status, body) = app
        .post(
            "/task",
            json!({"prompt": "check order 9", "agent": "support"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let task = app.wait_task(body["task_id"].as_str().unwrap(), 10).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"], "Your order has shipped.");
    assert_eq!(task["agent"], "support");
    assert_eq!(task["tool_calls"][0]["result"], "order 9: shipped");
    let (status, body) = app
        .post("/task", json!({"prompt": "x", "agent": "nobody"}))
        .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn with_redis_a_task_keeps_its_tool_calls_and_a_conversation_its_agent() {
    let (url, _tools) = tool_server().await;
    let b = Behaviour {
        content: "done".into(),
        tool_calls: vec![("lookup_order".into(), r#"{"order_id":"5"}"#.into())],
        ..Default::default()
    };
    let fake = FakeOpenAi::start_with(b).await;
    let file = agents_file(&url, 1);
    let app = TestApp::with_fake(&fake, |c| {
        with_agents(c, &file);
        c.store = agent_api::config::StoreKind::Redis(common::redis_url());
        c.store_prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    })
    .await;
    let (status, body) = app
        .post("/task", json!({"prompt": "order 5", "agent": "support"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let task = app.wait_task(body["task_id"].as_str().unwrap(), 10).await;
    assert_eq!(task["status"], "completed", "{task}");
    // Through the Redis script and back: the calls as they were, empty arrays included.
    assert_eq!(
        task["tool_calls"],
        json!([{"id": "call_0_0", "name": "lookup_order", "arguments": {"order_id": "5"}, "result": "order 5: shipped"}])
    );
    let (status, _) = app
        .post(
            "/chat",
            json!({"message": "a", "conversation_id": "r1", "agent": "support"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post(
            "/chat",
            json!({"message": "b", "conversation_id": "r1", "agent": "default"}),
        )
        .await;
    assert_eq!(status, 409);
    let (_, conv) = app.get("/conversation/r1").await;
    assert_eq!(conv["agent"], "support");
    assert_eq!(conv["messages"][3]["role"], "tool");
}

#[tokio::test]
async fn echo_runs_the_loop_offline() {
    let (url, _tools) = tool_server().await;
    let file = agents_file(&url, 1);
    let app = TestApp::echo(|c| with_agents(c, &file)).await;
    let (status, body) = app
        .post("/chat", json!({"message": r#"check [tool:lookup_order {"order_id": "42"}]"#, "agent": "support"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"], "Echo: order 42: shipped");
    assert_eq!(
        body["tool_calls"][0]["arguments"],
        json!({"order_id": "42"})
    );
    // Without tools (the default agent), the marker is only text.
    let (_, plain) = app
        .post("/chat", json!({"message": "[tool:lookup_order {}]"}))
        .await;
    assert_eq!(plain["response"], "Echo: [tool:lookup_order {}]");
    assert!(plain.get("tool_calls").is_none());
}

/// `/v1/responses` with `agent:<name>`: the agent's tools run here and come back as
/// `mcp_call` items (`server_label: "http"` for HTTP tools), whole and streamed.
#[tokio::test]
async fn responses_run_an_agents_tools_as_mcp_call_items() {
    let (fake, app, tools) = setup(1, |b| {
        calls(
            b,
            &[("lookup_order", r#"{"order_id":"42"}"#), ("failing", "{}")],
        )
    })
    .await;
    let (status, r) = app
        .post(
            "/v1/responses",
            json!({"model": "agent:support", "input": "where is order 42?"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], "agent:support");
    let output = r["output"].as_array().unwrap();
    let mcp: Vec<&Value> = output.iter().filter(|i| i["type"] == "mcp_call").collect();
    assert_eq!(mcp.len(), 2, "{r}");
    let lookup = mcp.iter().find(|i| i["name"] == "lookup_order").unwrap();
    assert_eq!(lookup["server_label"], "http");
    assert_eq!(lookup["output"], "order 42: shipped");
    assert_eq!(lookup["status"], "completed");
    let failing = mcp.iter().find(|i| i["name"] == "failing").unwrap();
    assert_eq!(failing["status"], "failed");
    assert!(failing["error"].is_object());
    let last = output.last().unwrap();
    assert_eq!(last["type"], "message");
    assert_eq!(last["content"][0]["text"], "Your order has shipped.");
    // The agent's instructions went up first; usage sums both model calls.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0]["messages"][0]["role"], "system");
    assert!(r["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(tools.calls.lock().unwrap().len(), 2);

    // Streamed: the same items, each with its events.
    let res = app
        .client
        .post(format!("{}/v1/responses", app.url))
        .json(&json!({"model": "agent:support", "input": "order 42?", "stream": true}))
        .send()
        .await
        .unwrap();
    let events = read_sse(res).await;
    let kinds: Vec<String> = events.iter().filter_map(|(_, e)| e.event.clone()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "response.mcp_call.in_progress")
            .count(),
        2
    );
    assert!(kinds.iter().any(|k| k == "response.mcp_call.completed"));
    assert!(kinds.iter().any(|k| k == "response.mcp_call.failed"));
    assert_eq!(kinds.last().unwrap(), "response.completed");
    let seqs: Vec<u64> = events
        .iter()
        .map(|(_, e)| {
            serde_json::from_str::<Value>(&e.data).unwrap()["sequence_number"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    // Client tools cannot be mixed with an agent's.
    let (status, body) = app
        .post(
            "/v1/responses",
            json!({"model": "agent:support", "input": "x",
                "tools": [{"type": "function", "name": "f"}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tools");
}

/// Cancelling a background agent response ends its running tool call at once.
#[tokio::test]
async fn cancelling_a_background_response_stops_its_tool_call() {
    let (_fake, app, tools) = setup(10, |b| calls(b, &[("slow", "{}")])).await;
    let (status, r) = app
        .post(
            "/v1/responses",
            json!({"model": "agent:support", "input": "be slow", "background": true}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let id = r["id"].as_str().unwrap();
    // Wait for the tool call to start.
    for _ in 0..100 {
        if !tools.calls.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let (status, r) = app
        .post(&format!("/v1/responses/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "cancelled");
    assert!(started.elapsed() < Duration::from_secs(3));
    for _ in 0..100 {
        if tools.dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tools.dropped.load(Ordering::SeqCst), 1);
    let (_, got) = app.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(got["status"], "cancelled");
}
