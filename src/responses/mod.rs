//! The OpenAI Responses API on the same engine (API.md, "OpenAI Responses API").
//!
//! - [`prepare`] reads a `POST /v1/responses` body: checks it (any bad field is a 400 naming
//!   its `param`), reads the previous response, and builds the Chat Completions request for the
//!   upstream through [`translate`] (the one place where items become messages and back).
//! - [`events`] makes the output items and the streamed events as the model and tools work.
//! - [`engine`] runs a prepared response (the model, or an agent's loop with its tools) and
//!   stores it; a streamed or background response is a run ([`crate::runs`]), so that its events
//!   can be followed, resumed and cancelled from any replica.
//!
//! Stored responses live in the [`crate::store::ResponseStore`] (memory or Redis), per key, for
//! `RESPONSE_TTL_SECS` after they end.

pub mod engine;
pub mod events;
pub mod object;
pub mod translate;

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::agent::agents::Agent;
use crate::agent::trim_to_tokens;
use crate::error::{ApiError, FieldError};
use crate::llm::{ChatRequest, Message, Messages};
use crate::state::AppState;
use crate::store::StoredResponse;
use events::item_id;
use object::{ResponseObject, ResponseStatus};
use translate::InputError;

/// The model names that run an agent: `agent:<name>`.
pub const AGENT_PREFIX: &str = "agent:";

/// The most `metadata` pairs (OpenAI's limit), and the longest key and value.
const METADATA_PAIRS: usize = 16;
const METADATA_KEY_CHARS: usize = 64;
const METADATA_VALUE_CHARS: usize = 512;

/// A checked request, ready to run.
pub struct Prepared {
    pub owner: String,
    pub agent: Option<Arc<Agent>>,
    /// The upstream request: model, sampling fields and tools; its messages are [`Self::messages`].
    pub request: ChatRequest,
    pub messages: Vec<Message>,
    pub stream: bool,
    pub background: bool,
    pub store: bool,
    /// The record as it starts: the response object (status `in_progress`), its input items
    /// with ids, and the context before them.
    pub record: StoredResponse,
}

fn invalid(param: &str, msg: impl Into<String>) -> FieldError {
    FieldError::body(param, msg, "invalid_value")
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::Validation(vec![invalid(&e.param, e.message)])
    }
}

/// An optional boolean field.
fn flag(
    body: &Map<String, Value>,
    field: &str,
    default: bool,
    errors: &mut Vec<FieldError>,
) -> bool {
    match body.get(field) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(invalid(field, format!("`{field}` must be a boolean")));
            default
        }
    }
}

/// An optional number field within `range`.
fn number(
    body: &Map<String, Value>,
    field: &str,
    range: std::ops::RangeInclusive<f64>,
    errors: &mut Vec<FieldError>,
) -> Option<f64> {
    let v = body.get(field).filter(|v| !v.is_null())?;
    match v.as_f64().filter(|n| range.contains(n)) {
        Some(n) => Some(n),
        None => {
            errors.push(invalid(
                field,
                format!(
                    "`{field}` must be a number from {} to {}",
                    range.start(),
                    range.end()
                ),
            ));
            None
        }
    }
}

/// An optional string field.
fn text<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(invalid(field, format!("`{field}` must be a string")));
            None
        }
    }
}

fn check_metadata(meta: &Value) -> Result<(), FieldError> {
    let bad = || {
        invalid(
            "metadata",
            format!(
                "`metadata` must be an object of at most {METADATA_PAIRS} string values \
                 (keys up to {METADATA_KEY_CHARS} characters, values up to {METADATA_VALUE_CHARS})"
            ),
        )
    };
    let Value::Object(m) = meta else {
        return Err(bad());
    };
    let ok = m.len() <= METADATA_PAIRS
        && m.iter().all(|(k, v)| {
            k.chars().count() <= METADATA_KEY_CHARS
                && v.as_str()
                    .is_some_and(|v| v.chars().count() <= METADATA_VALUE_CHARS)
        });
    if ok { Ok(()) } else { Err(bad()) }
}

/// Reads and checks a `POST /v1/responses` body for `owner`.
pub async fn prepare(
    state: &AppState,
    owner: &str,
    mut body: Map<String, Value>,
) -> Result<Prepared, ApiError> {
    let config = &state.config;
    let mut errors = Vec::new();
    // Taken out of the body: they go into the response as they came.
    let tools = match body.remove("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(t)) => t,
        Some(_) => {
            errors.push(invalid("tools", "`tools` must be a list of tools"));
            Vec::new()
        }
    };
    let tool_choice = body.remove("tool_choice").filter(|v| !v.is_null());
    let metadata = body.remove("metadata").filter(|v| !v.is_null());
    let model = match body.get("model") {
        None | Some(Value::Null) => config.chat_model.clone(),
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(_) => {
            errors.push(invalid("model", "`model` must be a non-empty string"));
            String::new()
        }
    };
    let input = match body.get("input") {
        Some(v @ (Value::String(_) | Value::Array(_))) => Some(v),
        _ => {
            errors.push(invalid(
                "input",
                "`input` must be a string or a list of input items",
            ));
            None
        }
    };
    let instructions = text(&body, "instructions", &mut errors).map(str::to_owned);
    let previous_id = text(&body, "previous_response_id", &mut errors).map(str::to_owned);
    let store = flag(&body, "store", true, &mut errors);
    let stream = flag(&body, "stream", false, &mut errors);
    let background = flag(&body, "background", false, &mut errors);
    let parallel = flag(&body, "parallel_tool_calls", true, &mut errors);
    let temperature = number(&body, "temperature", 0.0..=2.0, &mut errors);
    let top_p = number(&body, "top_p", 0.0..=1.0, &mut errors);
    let max_output = match body.get("max_output_tokens").filter(|v| !v.is_null()) {
        None => None,
        Some(n) => match n
            .as_u64()
            .filter(|n| (1..=u64::from(config.max_output_tokens)).contains(n))
        {
            Some(n) => Some(n),
            None => {
                errors.push(invalid(
                    "max_output_tokens",
                    format!(
                        "`max_output_tokens` must be an integer from 1 to {} (this server's limit)",
                        config.max_output_tokens
                    ),
                ));
                None
            }
        },
    };
    if let Some(m) = &metadata
        && let Err(e) = check_metadata(m)
    {
        errors.push(e);
    }
    if background && !store {
        errors.push(invalid(
            "background",
            "a background response must be stored (`store: true`)",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    let agent = match model.strip_prefix(AGENT_PREFIX) {
        Some(name) => match state.agents.get(name) {
            Some(agent) => Some(Arc::clone(agent)),
            None => return Err(ApiError::ModelNotFound(model)),
        },
        None if config.model_allowed(&model) => None,
        None => return Err(ApiError::ModelNotFound(model)),
    };
    if agent.is_some() && !tools.is_empty() {
        return Err(ApiError::Validation(vec![invalid(
            "tools",
            "an agent runs its own tools here; `tools` cannot be given with `agent:<name>`",
        )]));
    }
    let chat_tools = translate::tools_to_chat(&tools)?;
    let chat_choice = tool_choice
        .as_ref()
        .map(translate::tool_choice_to_chat)
        .transpose()?;
    let input = translate::input_items(input.unwrap_or(&Value::Null))?;

    // The context: the previous response's own context, its input and its output.
    let context = match &previous_id {
        None => Vec::new(),
        Some(id) => {
            let prev = state
                .responses
                .get(owner, id)
                .await?
                .ok_or_else(|| ApiError::PreviousResponseNotFound(id.clone()))?;
            let mut context = prev.context;
            context.extend(prev.input);
            context.extend(
                prev.response
                    .output
                    .into_iter()
                    .map(events::Item::into_value),
            );
            trim_context(&mut context, config.max_history_tokens.saturating_mul(8));
            context
        }
    };
    let system = instructions
        .as_deref()
        .or_else(|| agent.as_ref().and_then(|a| a.instructions.as_deref()));
    let mut messages = translate::to_messages(system, &context, &input)?;
    trim_to_tokens(&mut messages, config.max_history_tokens);

    let upstream_model = match &agent {
        Some(a) => a.model.clone().unwrap_or_else(|| config.chat_model.clone()),
        None => model.clone(),
    };
    let mut extra = Map::new();
    let temperature = temperature.or_else(|| agent.as_ref().and_then(|a| a.temperature));
    if let Some(t) = temperature {
        extra.insert("temperature".into(), json!(t));
    }
    if let Some(p) = top_p {
        extra.insert("top_p".into(), json!(p));
    }
    let max_tokens =
        max_output.or_else(|| agent.as_ref().and_then(|a| a.max_tokens.map(u64::from)));
    if let Some(n) = max_tokens {
        extra.insert("max_tokens".into(), json!(n));
    }
    if !chat_tools.is_empty() {
        extra.insert("tools".into(), Value::Array(chat_tools));
        extra.insert("parallel_tool_calls".into(), Value::Bool(parallel));
    }
    if let Some(c) = chat_choice {
        extra.insert("tool_choice".into(), c);
    }

    let response = ResponseObject {
        id: item_id("resp"),
        object: (),
        created_at: chrono::Utc::now().timestamp(),
        status: ResponseStatus::InProgress,
        completed_at: None,
        error: None,
        incomplete_details: None,
        instructions,
        max_output_tokens: max_output,
        model,
        output: Vec::new(),
        parallel_tool_calls: parallel,
        previous_response_id: previous_id,
        store,
        background,
        temperature: temperature.unwrap_or(1.0),
        top_p: top_p.unwrap_or(1.0),
        tools,
        tool_choice: tool_choice.unwrap_or_else(|| Value::from("auto")),
        metadata: metadata.unwrap_or_else(|| Value::Object(Map::new())),
        text: (),
        truncation: (),
        usage: None,
    };
    // Input items get ids only to be listed (`input_items`), which needs the response stored.
    let input = match store {
        true => input.into_iter().map(with_id).collect(),
        false => input,
    };
    Ok(Prepared {
        owner: owner.to_owned(),
        agent,
        request: ChatRequest {
            model: upstream_model,
            messages: Messages::default(),
            extra,
        },
        messages,
        stream,
        background,
        store,
        record: StoredResponse {
            owner: owner.to_owned(),
            response,
            input,
            context,
            background,
            run_id: None,
        },
    })
}

/// An input item as it is stored and listed (`input_items`): with an `id` and a `status`, and a
/// message's text as content parts.
fn with_id(item: Value) -> Value {
    let Value::Object(mut obj) = item else {
        return item;
    };
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message")
        .to_owned();
    let prefix = match kind.as_str() {
        "message" => "msg",
        "function_call" => "fc",
        "function_call_output" => "fco",
        _ => "item",
    };
    obj.entry("type").or_insert_with(|| json!(kind));
    obj.entry("id").or_insert_with(|| json!(item_id(prefix)));
    if kind == "message" {
        let assistant = obj.get("role").and_then(Value::as_str) == Some("assistant");
        if let Some(Value::String(text)) = obj.get("content") {
            let part = if assistant {
                json!({"type": "output_text", "text": text, "annotations": []})
            } else {
                json!({"type": "input_text", "text": text})
            };
            obj.insert("content".into(), json!([part]));
        }
    }
    if matches!(
        kind.as_str(),
        "message" | "function_call" | "function_call_output"
    ) {
        obj.entry("status").or_insert_with(|| json!("completed"));
    }
    Value::Object(obj)
}

/// Drops the oldest items of a context until its JSON is at most `max_bytes`, at a user
/// message (so that a call is never separated from its output); the last turn always stays.
fn trim_context(items: &mut Vec<Value>, max_bytes: usize) {
    let size = |v: &Value| serde_json::to_vec(v).map_or(0, |b| b.len());
    let mut total: usize = items.iter().map(size).sum();
    let is_user = |v: &Value| v.get("role").and_then(Value::as_str) == Some("user");
    let mut start = 0;
    while total > max_bytes {
        let Some(next) = items[start + 1..]
            .iter()
            .position(is_user)
            .map(|i| start + 1 + i)
        else {
            break;
        };
        total -= items[start..next].iter().map(size).sum::<usize>();
        start = next;
    }
    items.drain(..start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_items_are_stored_with_ids_and_parts() {
        let m = with_id(json!({"role": "user", "content": "hi"}));
        assert_eq!(m["type"], "message");
        assert!(m["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(m["content"][0], json!({"type": "input_text", "text": "hi"}));
        let a = with_id(
            json!({"type": "message", "role": "assistant", "content": "yo", "id": "msg_x"}),
        );
        assert_eq!(a["id"], "msg_x");
        assert_eq!(a["content"][0]["type"], "output_text");
        let out = with_id(json!({"type": "function_call_output", "call_id": "c", "output": "1"}));
        assert!(out["id"].as_str().unwrap().starts_with("fco_"));
        assert_eq!(out["status"], "completed");
    }

    #[test]
    fn a_long_context_loses_whole_turns_from_the_front() {
        let user = |t: &str| json!({"role": "user", "content": t});
        let mut items = vec![
            user(&"a".repeat(100)),
            json!({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}),
            json!({"type": "function_call_output", "call_id": "c", "output": "x"}),
            user(&"b".repeat(100)),
            user("c"),
        ];
        trim_context(&mut items, 200);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["content"], "b".repeat(100));
        // The last turn stays, however long.
        let mut one = vec![user(&"z".repeat(500))];
        trim_context(&mut one, 10);
        assert_eq!(one.len(), 1);
    }
}
