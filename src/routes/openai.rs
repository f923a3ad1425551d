//! The OpenAI-compatible surface: `POST /v1/chat/completions` (stream and not) and
//! `GET /v1/models`, so that OpenAI SDKs and the tools built on them work with `base_url`
//! pointed here. Errors are in OpenAI's shape. Fields this server does not use itself pass
//! through to the upstream unchanged.

use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::error::{ApiError, FieldError, OpenAiError};
use crate::extract::AppJson;
use crate::llm::{ChatRequest, ChunkStream, Messages, content_text, estimate_tokens};
use crate::middleware::auth::Caller;
use crate::openapi::{OpenAiErrorBody, SseEvent};
use crate::routes::stream::sse_response;
use crate::state::AppState;

/// The top-level fields of OpenAI's published `CreateChatCompletionRequest` schema: these are
/// forwarded to the upstream; any other field is dropped unless `PASSTHROUGH_FIELDS` names it.
/// Sorted: looked up by binary search for every field of every request.
pub const OPENAI_REQUEST_FIELDS: &[&str] = &[
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "messages",
    "metadata",
    "modalities",
    "model",
    "moderation",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

/// What `/v1/chat/completions` reads of a request, for the OpenAPI document (the handler reads
/// the body as JSON and checks it in [`validate`]); every other field of OpenAI's schema is
/// allowed and forwarded.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "only its schema is used")]
pub struct ChatCompletionRequestDoc {
    /// One of `MODELS` (default `CHAT_MODEL`).
    #[schema(min_length = 1)]
    model: Option<String>,
    #[schema(min_items = 1)]
    messages: Vec<ChatMessageDoc>,
    stream: Option<bool>,
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f64>,
    /// 1 to `MAX_OUTPUT_TOKENS` (default 4000).
    #[schema(minimum = 1)]
    max_tokens: Option<u32>,
    #[schema(minimum = 1)]
    max_completion_tokens: Option<u32>,
    /// Only 1 is served.
    #[schema(minimum = 1, maximum = 1)]
    n: Option<u32>,
}

/// A message of a `/v1` request: its `role`, and any other fields of OpenAI's message shapes.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "only its schema is used")]
pub struct ChatMessageDoc {
    role: String,
    /// Text, or an array of content parts; absent or null on an assistant's tool calls.
    content: Option<serde_json::Value>,
}

/// Checks the fields this server relies on and the operator's limits (`MODELS`,
/// `MAX_OUTPUT_TOKENS`, `n`), fills in the model, drops top-level fields that are neither
/// OpenAI's nor in `PASSTHROUGH_FIELDS`, and leaves the rest alone.
fn validate(
    mut body: Map<String, Value>,
    config: &Config,
) -> Result<(ChatRequest, bool, bool), ApiError> {
    let max_output = i64::from(config.max_output_tokens);
    let mut errors = Vec::new();
    let mut err =
        |field: &str, msg: &str| errors.push(FieldError::body(field, msg, "invalid_value"));
    match body.get("messages").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => {
            if !m
                .iter()
                .all(|msg| msg.get("role").and_then(Value::as_str).is_some())
            {
                err("messages", "every message needs a string `role`");
            }
            let too_long = m.iter().any(|msg| {
                msg.get("content").is_some_and(|c| {
                    estimate_tokens(&content_text(Some(c))) > config.max_history_tokens
                })
            });
            if too_long {
                err(
                    "messages",
                    &format!(
                        "a message alone is longer than this server sends a model \
                         (MAX_HISTORY_TOKENS={} tokens, estimated)",
                        config.max_history_tokens
                    ),
                );
            }
        }
        _ => err("messages", "`messages` must be a non-empty array"),
    }
    match body.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if !m.trim().is_empty() => {}
        Some(_) => err("model", "`model` must be a non-empty string"),
    }
    if let Some(t) = body.get("temperature").filter(|v| !v.is_null())
        && t.as_f64().is_none_or(|t| !(0.0..=2.0).contains(&t))
    {
        err("temperature", "`temperature` must be a number from 0 to 2");
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = body.get(field).filter(|v| !v.is_null())
            && n.as_i64().is_none_or(|n| !(1..=max_output).contains(&n))
        {
            err(
                field,
                &format!("must be an integer from 1 to {max_output} (this server's limit)"),
            );
        }
    }
    if let Some(n) = body.get("n").filter(|v| !v.is_null())
        && n.as_i64() != Some(1)
    {
        err("n", "only `n: 1` is served here");
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            err("stream", "`stream` must be a boolean");
            false
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if let Some(Value::String(m)) = body.get("model")
        && !config.model_allowed(m)
    {
        return Err(ApiError::ModelNotFound(m.clone()));
    }
    body.retain(|field, _| {
        OPENAI_REQUEST_FIELDS.binary_search(&field.as_str()).is_ok()
            || config.passthrough_fields.iter().any(|f| f == field)
    });
    let wants_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let model = match body.remove("model") {
        Some(Value::String(m)) => m,
        _ => config.chat_model.clone(),
    };
    let messages = match body.remove("messages") {
        Some(Value::Array(m)) => m,
        _ => Vec::new(),
    };
    let request = ChatRequest {
        model,
        messages: Messages::Raw(messages),
        extra: body,
    };
    Ok((request, stream, wants_usage))
}

/// A `/v1` request body as the JSON object it must be (400 otherwise).
pub fn object_body(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(body) => Ok(body),
        _ => Err(ApiError::Validation(vec![FieldError {
            loc: vec![json!("body")],
            msg: "the body must be a JSON object".into(),
            kind: "invalid_value".into(),
        }])),
    }
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body(content = ChatCompletionRequestDoc, description = "OpenAI's chat-completions request: the fields of OpenAI's published schema pass through to the upstream (others only when named in PASSTHROUGH_FIELDS)"),
    responses((status = 200, description = "A `chat.completion`, or with `stream: true` an SSE stream of `chat.completion.chunk`s ending with `data: [DONE]`",
            content((Object = "application/json"), (SseEvent = "text/event-stream"))),
        (status = 400, description = "Invalid request: a bad field, `max_tokens` over `MAX_OUTPUT_TOKENS`, `n` above 1, or a conversation longer than the model's context", body = OpenAiErrorBody),
        (status = 401, body = OpenAiErrorBody),
        (status = 404, description = "`model_not_found`: a model outside `MODELS`", body = OpenAiErrorBody),
        (status = 415, description = "A body whose Content-Type is not JSON", body = OpenAiErrorBody),
        (status = 429, description = "Rate limited, or the key's open streams are at `MAX_STREAMS_PER_KEY`", body = OpenAiErrorBody),
        (status = 502, body = OpenAiErrorBody), (status = 504, body = OpenAiErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<AppJson<Value>, ApiError>,
) -> Result<Response, OpenAiError> {
    let AppJson(body) = body?;
    let body = object_body(body)?;
    let (request, stream, wants_usage) = validate(body, &state.config)?;
    if !stream {
        let completion = state.llm.complete(request).await.map_err(ApiError::from)?;
        // The upstream's object as it came (its JSON text), not parsed and written again.
        let json = HeaderValue::from_static("application/json");
        return Ok(([(header::CONTENT_TYPE, json)], completion.raw).into_response());
    }
    let permit = state.open_stream(&caller.owner).await?;
    let chunks = state.llm.stream(request).await.map_err(ApiError::from)?;
    Ok(sse_response(
        &state,
        permit,
        openai_events(chunks, wants_usage),
    ))
}

/// Upstream chunks as OpenAI's SSE: each chunk as it came, then `data: [DONE]`. The usage-only
/// chunk is dropped unless the client asked for it. An error ends the stream with one
/// `event: error` frame carrying OpenAI's error object (the SDKs raise it), and no `[DONE]`.
fn openai_events(
    chunks: ChunkStream,
    wants_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    futures::stream::unfold(Some(chunks), move |state| async move {
        let mut chunks = state?;
        loop {
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    if chunk.usage_only && !wants_usage {
                        continue;
                    }
                    let event = Event::default().data(chunk.raw);
                    return Some((Ok(event), Some(chunks)));
                }
                Some(Err(e)) => {
                    let err = ApiError::from(e);
                    let body = json!({"error": {"message": err.message(), "type": "api_error",
                        "param": null, "code": err.code()}});
                    let event = Event::default().event("error").data(body.to_string());
                    return Some((Ok(event), None));
                }
                None => return Some((Ok(Event::default().data("[DONE]")), None)),
            }
        }
    })
}

#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "`{\"object\": \"list\", \"data\": [{\"id\", \"object\": \"model\", ...}]}`: the `MODELS`, then `agent:<name>` for each agent", body = Object),
        (status = 401, body = OpenAiErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let created = chrono::Utc::now().timestamp() - state.started.elapsed().as_secs() as i64;
    let model = |id: &str| json!({"id": id, "object": "model", "created": created, "owned_by": "agent-api"});
    // The agents too, as `agent:<name>` (what `/v1/responses` runs with its tools here).
    let agents = state
        .agents
        .all()
        .map(|a| format!("{}{}", crate::responses::AGENT_PREFIX, a.name));
    let data: Vec<Value> = state
        .config
        .models
        .iter()
        .map(|id| model(id))
        .chain(agents.map(|id| model(&id)))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[cfg(test)]
mod tests {
    use super::OPENAI_REQUEST_FIELDS;

    #[test]
    fn the_request_fields_are_sorted_for_binary_search() {
        assert!(OPENAI_REQUEST_FIELDS.windows(2).all(|w| w[0] < w[1]));
    }
}
