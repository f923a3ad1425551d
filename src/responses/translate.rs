//! The Responses API in Chat Completions terms, and back (API.md, "OpenAI Responses API",
//! "Translation"): pure functions, so that any OpenAI-compatible upstream serves `/v1/responses`
//! and every rule is unit-tested here.
//!
//! - `instructions` become the first message, role `system` (none without them); `developer`
//!   items go up as `system`; `input_text` / `output_text` parts are joined into the message's
//!   text; consecutive `function_call` items join the assistant message before them as its
//!   `tool_calls`; a `function_call_output` becomes a `tool` message answering its `call_id`.
//! - Function tools `{type, name, description, parameters, strict}` become Chat's
//!   `{type: "function", function: {...}}`; `tool_choice` likewise.
//! - An answer becomes output items: a `message` with one `output_text` part (only when there is
//!   text), then one `function_call` item per tool call; usage becomes
//!   `{input_tokens, output_tokens, total_tokens, ..._details}`.
//!
//! Items are read as JSON values (the schema's unions have many variants and fields this server
//! does not use); what cannot be translated is an [`InputError`] naming the `param`, for a 400.

use serde_json::{Map, Value, json};

use super::events::{Item, Output};
use super::object::{InputTokensDetails, OutputTokensDetails, ResponseUsage};
use crate::llm::tool_calls::FunctionDelta;
use crate::llm::{FunctionCall, Message, ToolCall, ToolCallDelta, Usage};

/// A request part that cannot be translated: 400 `invalid_request_error` with this `param`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    pub param: String,
    pub message: String,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> InputError {
    InputError {
        param: param.into(),
        message: message.into(),
    }
}

/// `input` as a list of items: a string is one user message.
pub fn input_items(input: &Value) -> Result<Vec<Value>, InputError> {
    match input {
        Value::String(text) => Ok(vec![
            json!({"type": "message", "role": "user", "content": text}),
        ]),
        Value::Array(items) => Ok(items.clone()),
        _ => Err(bad("input", "input must be a string or a list of items")),
    }
}

/// The messages sent upstream for the previous responses' items (`context`), then this
/// request's (`input`), after `instructions` as the system message. A bad input item is named
/// by its place in `input`; a bad context item (a stored one) by `previous_response_id`.
pub fn to_messages(
    instructions: Option<&str>,
    context: &[Value],
    input: &[Value],
) -> Result<Vec<Message>, InputError> {
    let mut out = Vec::with_capacity(context.len() + input.len() + 1);
    if let Some(text) = instructions {
        out.push(Message::new("system", text));
    }
    for (n, item) in context.iter().chain(input).enumerate() {
        let at = match n.checked_sub(context.len()) {
            Some(i) => format!("input[{i}]"),
            None => "previous_response_id".to_owned(),
        };
        let param = |field: &str| format!("{at}.{field}");
        let Some(obj) = item.as_object() else {
            return Err(bad(at, "an input item must be an object"));
        };
        let kind = obj.get("type").and_then(Value::as_str);
        match kind {
            // A message may leave out its `type` (EasyInputMessage).
            None | Some("message") => {
                let role = match obj.get("role").and_then(Value::as_str) {
                    Some("developer" | "system") => "system",
                    Some(r @ ("user" | "assistant")) => r,
                    _ => {
                        return Err(bad(
                            param("role"),
                            "role must be one of user, system, developer, assistant",
                        ));
                    }
                };
                let text = content_text(obj.get("content"), &param("content"))?;
                out.push(Message::new(role, text));
            }
            Some("function_call") => {
                let call = ToolCall {
                    id: string(obj, "call_id", &param("call_id"))?,
                    kind: "function".into(),
                    function: FunctionCall {
                        name: string(obj, "name", &param("name"))?,
                        arguments: string(obj, "arguments", &param("arguments"))?,
                    },
                };
                match out.last_mut() {
                    // The calls of one model turn go with its text, in one assistant message.
                    Some(m) if m.role == "assistant" => {
                        m.tool_calls.get_or_insert_with(Vec::new).push(call);
                    }
                    _ => out.push(Message::assistant_calls("", vec![call])),
                }
            }
            Some("function_call_output") => {
                let call_id = string(obj, "call_id", &param("call_id"))?;
                let output = match obj.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    parts @ Some(Value::Array(_)) => content_text(parts, &param("output"))?,
                    _ => return Err(bad(param("output"), "output must be a string or parts")),
                };
                let mut m = Message::new("tool", output);
                m.tool_call_id = Some(call_id);
                out.push(m);
            }
            // A tool run here (an agent's earlier response): its call, then its result.
            Some("mcp_call") => {
                let id = string(obj, "id", &param("id"))?;
                let call = ToolCall {
                    id: id.clone(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: string(obj, "name", &param("name"))?,
                        arguments: string(obj, "arguments", &param("arguments"))?,
                    },
                };
                match out.last_mut() {
                    Some(m) if m.role == "assistant" && m.tool_calls.is_none() => {
                        m.tool_calls = Some(vec![call]);
                    }
                    _ => out.push(Message::assistant_calls("", vec![call])),
                }
                let result = match obj.get("output").and_then(Value::as_str) {
                    Some(output) => output.to_owned(),
                    None => json!({"error": obj.get("error")}).to_string(),
                };
                out.push(Message::tool_result(&id, result));
            }
            Some(other) => {
                return Err(bad(
                    param("type"),
                    format!("input items of type `{other}` are not supported here"),
                ));
            }
        }
    }
    Ok(out)
}

fn string(obj: &Map<String, Value>, field: &str, param: &str) -> Result<String, InputError> {
    obj.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| bad(param, format!("`{field}` must be a string")))
}

/// A message's text: a string, or its `input_text` / `output_text` parts joined.
fn content_text(content: Option<&Value>, param: &str) -> Result<String, InputError> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text").and_then(Value::as_str)) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => text.push_str(t),
                    (Some(kind), _) => {
                        return Err(bad(
                            format!("{param}[{j}].type"),
                            format!("content parts of type `{kind}` are not supported here"),
                        ));
                    }
                    (None, _) => {
                        return Err(bad(format!("{param}[{j}]"), "a content part needs a type"));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(bad(param, "content must be a string or a list of parts")),
    }
}

/// Function tools in Chat Completions' shape.
pub fn tools_to_chat(tools: &[Value]) -> Result<Vec<Value>, InputError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let kind = tool.get("type").and_then(Value::as_str);
            if kind != Some("function") {
                return Err(bad(
                    format!("tools[{i}].type"),
                    "only function tools are supported (agent:<name> models run MCP and HTTP tools here)",
                ));
            }
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                return Err(bad(format!("tools[{i}].name"), "a function tool needs a name"));
            };
            let mut function = json!({ "name": name });
            for field in ["description", "parameters", "strict"] {
                if let Some(v) = tool.get(field).filter(|v| !v.is_null()) {
                    function[field] = v.clone();
                }
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// `tool_choice` in Chat Completions' shape.
pub fn tool_choice_to_chat(choice: &Value) -> Result<Value, InputError> {
    match choice {
        Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(bad(
                    "tool_choice.name",
                    "a function tool choice needs a name",
                )),
            }
        }
        _ => Err(bad(
            "tool_choice",
            "tool_choice must be auto, none, required, or {\"type\": \"function\", \"name\"}",
        )),
    }
}

/// The output items of one answer: a `message` (when there is text), then its function calls.
/// `id` makes each item's id from its kind (`msg`, `fc`).
pub fn output_items(text: &str, calls: &[ToolCall]) -> Vec<Item> {
    // Made by the same [`Output`] that streams them, so that both have one shape.
    let mut out = Output::new(false);
    out.text(text);
    for (i, call) in calls.iter().enumerate() {
        out.call_delta(&ToolCallDelta {
            index: Some(i as u32),
            id: Some(call.id.clone()),
            function: Some(FunctionDelta {
                name: Some(call.function.name.clone()),
                arguments: Some(call.function.arguments.clone()),
            }),
        });
    }
    out.close();
    out.into_items()
}

/// The usage of a response (every model call of it summed), in the Responses API's shape.
pub fn usage(u: Usage) -> ResponseUsage {
    ResponseUsage {
        input_tokens: u.prompt_tokens,
        input_tokens_details: InputTokensDetails::default(),
        output_tokens: u.completion_tokens,
        output_tokens_details: OutputTokensDetails::default(),
        total_tokens: u.total_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(m: &[Message]) -> Vec<&str> {
        m.iter().map(|m| m.role.as_str()).collect()
    }

    #[test]
    fn a_string_input_is_one_user_message_after_the_instructions() {
        let items = input_items(&json!("Hi")).unwrap();
        let m = to_messages(Some("Be brief."), &[], &items).unwrap();
        assert_eq!(roles(&m), ["system", "user"]);
        assert_eq!(
            (m[0].content.as_str(), m[1].content.as_str()),
            ("Be brief.", "Hi")
        );
        // No instructions: no system message is added.
        assert_eq!(roles(&to_messages(None, &[], &items).unwrap()), ["user"]);
        assert!(input_items(&json!(3)).is_err());
    }

    #[test]
    fn items_translate_role_by_role_and_parts_join() {
        let items = json!([
            {"role": "developer", "content": "Rules."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Hello, "}, {"type": "input_text", "text": "there"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]},
            {"role": "system", "content": "More rules."},
        ]);
        let m = to_messages(None, &[], items.as_array().unwrap()).unwrap();
        assert_eq!(roles(&m), ["system", "user", "assistant", "system"]);
        assert_eq!(m[1].content, "Hello, there");
        assert_eq!(m[2].content, "Hi!");
    }

    #[test]
    fn function_calls_join_their_turn_and_outputs_answer_them() {
        let items = json!([
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
            {"type": "message", "role": "assistant", "content": "Paris sunny,"},
            {"type": "function_call", "call_id": "c3", "name": "weather", "arguments": "{}"},
        ]);
        let m = to_messages(None, &[], items.as_array().unwrap()).unwrap();
        assert_eq!(
            roles(&m),
            ["user", "assistant", "tool", "tool", "assistant"]
        );
        let calls = m[1].tool_calls.as_ref().unwrap();
        assert_eq!(calls.len(), 2, "parallel calls in one assistant message");
        assert_eq!(
            (calls[1].id.as_str(), calls[1].function.arguments.as_str()),
            ("c2", "{\"city\":\"Rome\"}")
        );
        assert_eq!(m[1].content, "");
        assert_eq!(
            (m[2].tool_call_id.as_deref(), m[2].content.as_str()),
            (Some("c1"), "sunny")
        );
        assert_eq!(m[3].content, "rain");
        // A call after the assistant's text goes with that text.
        assert_eq!(m[4].content, "Paris sunny,");
        assert_eq!(m[4].tool_calls.as_ref().unwrap()[0].id, "c3");
    }

    #[test]
    fn what_cannot_be_translated_names_its_param() {
        let cases = [
            (json!([{"role": "tool", "content": "x"}]), "input[0].role"),
            (
                json!([{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]),
                "input[0].content[0].type",
            ),
            (
                json!([{"type": "function_call", "name": "f", "arguments": "{}"}]),
                "input[0].call_id",
            ),
            (
                json!([{"type": "function_call_output", "call_id": "c"}]),
                "input[0].output",
            ),
            (
                json!([{"type": "item_reference", "id": "x"}]),
                "input[0].type",
            ),
            (json!(["text"]), "input[0]"),
        ];
        for (items, param) in cases {
            let e = to_messages(None, &[], items.as_array().unwrap()).unwrap_err();
            assert_eq!(e.param, param, "{items}");
        }
        // After a previous response's items, an input item is still named by its own place.
        let context = [json!({"role": "user", "content": "before"})];
        let e = to_messages(None, &context, &[json!("text")]).unwrap_err();
        assert_eq!(e.param, "input[0]");
        let e = to_messages(None, &[json!(1)], &[]).unwrap_err();
        assert_eq!(e.param, "previous_response_id");
    }

    #[test]
    fn function_tools_and_tool_choice_take_chats_shape() {
        let tools = json!([{"type": "function", "name": "weather", "description": "Weather.",
            "parameters": {"type": "object"}, "strict": true}]);
        let chat = tools_to_chat(tools.as_array().unwrap()).unwrap();
        assert_eq!(
            chat,
            [
                json!({"type": "function", "function": {"name": "weather", "description": "Weather.",
                "parameters": {"type": "object"}, "strict": true}})
            ]
        );
        let e = tools_to_chat(&[json!({"type": "web_search"})]).unwrap_err();
        assert_eq!(e.param, "tools[0].type");
        assert_eq!(
            tool_choice_to_chat(&json!("required")).unwrap(),
            json!("required")
        );
        assert_eq!(
            tool_choice_to_chat(&json!({"type": "function", "name": "weather"})).unwrap(),
            json!({"type": "function", "function": {"name": "weather"}})
        );
        assert!(tool_choice_to_chat(&json!("sometimes")).is_err());
    }

    #[test]
    fn an_answer_becomes_output_items_and_back() {
        let calls = vec![ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            },
        }];
        let items: Vec<Value> = output_items("Let me look.", &calls)
            .into_iter()
            .map(Item::into_value)
            .collect();
        assert_eq!(items[0]["type"], "message");
        assert_eq!(items[0]["content"][0]["text"], "Let me look.");
        assert_eq!(items[1]["call_id"], "call_1");
        assert!(items[1]["id"].as_str().unwrap().starts_with("fc_"));
        assert_eq!(items[1]["status"], "completed");
        // No text: no message item.
        let only_calls = output_items("", &calls);
        assert_eq!(only_calls.len(), 1);
        // Fed back as input (previous_response_id), the same turn comes out.
        let back = to_messages(None, &[], &items).unwrap();
        assert_eq!(roles(&back), ["assistant"]);
        assert_eq!(back[0].content, "Let me look.");
        assert_eq!(back[0].tool_calls.as_deref(), Some(&calls[..]));
    }

    #[test]
    fn usage_is_in_the_responses_shape() {
        let u = usage(Usage {
            prompt_tokens: 7,
            completion_tokens: 5,
            total_tokens: 12,
        });
        assert_eq!(
            serde_json::to_value(u).unwrap(),
            json!({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0,
                "cache_write_tokens": 0}, "output_tokens": 5,
                "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12})
        );
    }
}
