//! Bench only: the upstream and the tool of the agent scenario (bench/run.sh --agent), in one
//! fast process. `POST /v1/chat/completions`: a request that offers tools and holds no `tool`
//! message yet is answered with one call of `lookup_order {"order_id": "42"}` (whole, or
//! streamed in OpenAI's chunks); any other with a short text. `POST /tool`: the tool, answering
//! `order 42: shipped`. `GET /v1/models` for the server's readiness probe.
//!
//! `agent-mock PORT`: prints `agent-mock listening on http://127.0.0.1:PORT`.

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

const TEXT: &str = "Order 42 has shipped and arrives on Friday.";

fn usage() -> Value {
    json!({"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29})
}

async fn completions(body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req["model"].as_str().unwrap_or("m").to_owned();
    let calling = req["tools"].as_array().is_some_and(|t| !t.is_empty())
        && req["tool_choice"] != json!("none")
        && !req["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
    let call = json!({"id": "call_1", "type": "function",
        "function": {"name": "lookup_order", "arguments": "{\"order_id\": \"42\"}"}});
    let streamed = req["stream"] == json!(true);
    if !streamed {
        let message = if calling {
            json!({"role": "assistant", "content": null, "tool_calls": [call]})
        } else {
            json!({"role": "assistant", "content": TEXT})
        };
        let finish = if calling { "tool_calls" } else { "stop" };
        let body = json!({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": finish}], "usage": usage()});
        return ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null,
            "finish_reason": finish}]})
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    if calling {
        events.push(chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "lookup_order", "arguments": ""}}]}), None));
        events.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"order_id\": \"42\"}"}}]}), None));
        events.push(chunk(json!({}), Some("tool_calls")));
    } else {
        for word in TEXT.split_inclusive(' ') {
            events.push(chunk(json!({"content": word}), None));
        }
        events.push(chunk(json!({}), Some("stop")));
    }
    if req["stream_options"]["include_usage"] == json!(true) {
        let mut u = chunk(json!({}), None);
        u["choices"] = json!([]);
        u["usage"] = usage();
        events.push(u);
    }
    let mut out = String::new();
    for e in events {
        out.push_str(&format!("data: {e}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream")], out).into_response()
}

async fn models() -> Response {
    let body = json!({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model",
        "created": 1_700_000_000, "owned_by": "bench"}]});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(18090);
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tool", post(|| async { "order 42: shipped" }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!("agent-mock listening on http://127.0.0.1:{port}");
    axum::serve(listener, app).await.expect("serve");
}
