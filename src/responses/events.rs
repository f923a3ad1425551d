//! A response as it is made: its output items, and the streamed events that tell a client
//! about them, in OpenAI's order (API.md, "OpenAI Responses API", "Streaming"):
//!
//! `response.created`, `response.in_progress`, then per output item `response.output_item.added`,
//! for a message `response.content_part.added`, `response.output_text.delta`…,
//! `response.output_text.done`, `response.content_part.done`; for a function call
//! `response.function_call_arguments.delta`… and `.done`; for a tool run here (`mcp_call`)
//! `response.mcp_call.in_progress` and `response.mcp_call.completed` / `.failed`; then
//! `response.output_item.done`; last `response.completed` (or `response.failed`,
//! `response.incomplete`). Every event carries its `type` and a `sequence_number` from 0.
//!
//! [`Output`] is fed what the model and the tools do, and keeps the frames made since the
//! last [`Output::take_frames`] (none when nobody streams).

use serde_json::{Value, json};

use super::object::ResponseObject;
use crate::llm::ToolCallDelta;
use crate::runs::Frame;

/// Every event type this module makes (a run's log read back from Redis names them).
pub const EVENT_TYPES: &[&str] = &[
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.mcp_call_arguments.done",
    "response.mcp_call.in_progress",
    "response.mcp_call.completed",
    "response.mcp_call.failed",
    "response.completed",
    "response.failed",
    "response.incomplete",
];

/// A new item id: `prefix` and 32 hex digits.
pub fn item_id(prefix: &str) -> String {
    let mut hex = [0u8; uuid::fmt::Simple::LENGTH];
    let hex = uuid::Uuid::new_v4().simple().encode_lower(&mut hex);
    let mut id = String::with_capacity(prefix.len() + 1 + hex.len());
    id.push_str(prefix);
    id.push('_');
    id.push_str(hex);
    id
}

/// A function call the model is making (streamed fragments by their index).
struct OpenCall {
    index: Option<u32>,
    output_index: usize,
}

pub struct Output {
    items: Vec<Value>,
    seq: u64,
    /// Frames are made (the response is streamed or kept in a run).
    streamed: bool,
    frames: Vec<Frame>,
    /// The message item being written, by its output index.
    text: Option<usize>,
    calls: Vec<OpenCall>,
}

impl Output {
    pub fn new(streamed: bool) -> Self {
        Self {
            items: Vec::new(),
            seq: 0,
            streamed,
            frames: Vec::new(),
            text: None,
            calls: Vec::new(),
        }
    }

    /// The sequence number the next event gets.
    pub fn next_sequence(&self) -> u64 {
        self.seq
    }

    /// The frames made since the last call.
    pub fn take_frames(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.frames)
    }

    pub fn items(&self) -> &[Value] {
        &self.items
    }

    /// Whole items (an unstreamed answer), without events.
    pub fn extend(&mut self, items: Vec<Value>) {
        self.items.extend(items);
    }

    pub fn into_items(self) -> Vec<Value> {
        self.items
    }

    /// An event of `kind`, numbered. `fields` is only called when the response is streamed: an
    /// unstreamed one builds no event at all.
    pub fn event(&mut self, kind: &'static str, fields: impl FnOnce(&Self) -> Value) {
        let seq = self.seq;
        self.seq += 1;
        if !self.streamed {
            return;
        }
        let mut fields = fields(self);
        if let Some(obj) = fields.as_object_mut() {
            obj.insert("type".into(), Value::from(kind));
            obj.insert("sequence_number".into(), Value::from(seq));
        }
        self.frames.push((Some(kind), fields.to_string()));
    }

    /// `response.created` and `response.in_progress`, for the response as it starts.
    pub fn started(&mut self, response: &ResponseObject) {
        self.event("response.created", |_| json!({"response": response}));
        self.event("response.in_progress", |_| json!({"response": response}));
    }

    fn add_item(&mut self, item: Value) -> usize {
        let output_index = self.items.len();
        self.items.push(item);
        self.event(
            "response.output_item.added",
            |o| json!({"output_index": output_index, "item": o.items[output_index]}),
        );
        output_index
    }

    fn done_item(&mut self, output_index: usize) {
        self.event(
            "response.output_item.done",
            |o| json!({"output_index": output_index, "item": o.items[output_index]}),
        );
    }

    /// A piece of the answer's text.
    pub fn text(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        let at = match self.text {
            Some(at) => at,
            None => {
                self.close_calls();
                let id = item_id("msg");
                let at = self
                    .add_item(json!({"id": id, "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}));
                self.event("response.content_part.added", |_| {
                    json!({"item_id": id, "output_index": at, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
                });
                self.items[at]["content"] = json!([{"type": "output_text", "text": "",
                    "annotations": [], "logprobs": []}]);
                self.text = Some(at);
                at
            }
        };
        if let Some(text) = message_text(&mut self.items[at]) {
            text.push_str(delta);
        }
        self.event("response.output_text.delta", |o| {
            json!({"item_id": o.items[at]["id"], "output_index": at, "content_index": 0,
                "delta": delta, "logprobs": []})
        });
    }

    /// Ends the message being written, if any.
    fn close_text(&mut self) {
        let Some(at) = self.text.take() else {
            return;
        };
        self.event("response.output_text.done", |o| {
            json!({"item_id": o.items[at]["id"], "output_index": at, "content_index": 0,
                "text": o.items[at]["content"][0]["text"], "logprobs": []})
        });
        self.event("response.content_part.done", |o| {
            json!({"item_id": o.items[at]["id"], "output_index": at, "content_index": 0,
                "part": o.items[at]["content"][0]})
        });
        self.items[at]["status"] = json!("completed");
        self.done_item(at);
    }

    /// A fragment of a function call the client is to run.
    pub fn call_delta(&mut self, d: &ToolCallDelta) {
        let at = match self.calls.iter().find(|c| c.index == d.index) {
            Some(c) => c.output_index,
            None => {
                self.close_text();
                let call_id = d.id.clone().unwrap_or_else(|| item_id("call"));
                let at = self.add_item(json!({"id": item_id("fc"), "type": "function_call",
                    "status": "in_progress", "call_id": call_id, "name": "", "arguments": ""}));
                self.calls.push(OpenCall {
                    index: d.index,
                    output_index: at,
                });
                at
            }
        };
        let Some(f) = &d.function else {
            return;
        };
        if let Some(name) = f.name.as_deref().filter(|n| !n.is_empty())
            && let Some(Value::String(n)) = self.items[at].get_mut("name")
        {
            n.push_str(name);
        }
        let Some(args) = f.arguments.as_deref().filter(|a| !a.is_empty()) else {
            return;
        };
        if let Some(Value::String(a)) = self.items[at].get_mut("arguments") {
            a.push_str(args);
        }
        self.event(
            "response.function_call_arguments.delta",
            |o| json!({"item_id": o.items[at]["id"], "output_index": at, "delta": args}),
        );
    }

    fn close_calls(&mut self) {
        for call in std::mem::take(&mut self.calls) {
            let at = call.output_index;
            self.event("response.function_call_arguments.done", |o| {
                let item = &o.items[at];
                json!({"item_id": item["id"], "output_index": at, "name": item["name"],
                    "arguments": item["arguments"]})
            });
            self.items[at]["status"] = json!("completed");
            self.done_item(at);
        }
    }

    /// A tool run here started: an `mcp_call` item (`server_label`: the MCP server, or `http`).
    pub fn tool_started(&mut self, call_id: &str, server_label: &str, name: &str, arguments: &str) {
        self.close_text();
        self.close_calls();
        let id = mcp_item_id(call_id);
        let at = self.add_item(
            json!({"id": id, "type": "mcp_call", "status": "in_progress",
            "server_label": server_label, "name": name, "arguments": arguments,
            "output": null, "error": null}),
        );
        self.event(
            "response.mcp_call_arguments.done",
            |_| json!({"item_id": id, "output_index": at, "arguments": arguments}),
        );
        self.event(
            "response.mcp_call.in_progress",
            |_| json!({"item_id": id, "output_index": at}),
        );
    }

    /// A tool run here ended with its result or error.
    pub fn tool_ended(&mut self, call_id: &str, outcome: Result<&str, &str>) {
        let id = mcp_item_id(call_id);
        let Some(at) = self.items.iter().position(|i| i["id"] == id.as_str()) else {
            return;
        };
        let kind = match outcome {
            Ok(output) => {
                self.items[at]["output"] = json!(output);
                self.items[at]["status"] = json!("completed");
                "response.mcp_call.completed"
            }
            Err(error) => {
                self.items[at]["error"] = json!({"type": "mcp_tool_execution_error",
                    "content": [{"type": "text", "text": error}]});
                self.items[at]["status"] = json!("failed");
                "response.mcp_call.failed"
            }
        };
        self.event(kind, |_| json!({"item_id": id, "output_index": at}));
        self.done_item(at);
    }

    /// Ends every open item; what is left is the response's `output`.
    pub fn close(&mut self) {
        self.close_text();
        self.close_calls();
    }

    /// Marks the items still open as `incomplete` (the response was stopped), without events.
    pub fn cut(&mut self) {
        self.text = None;
        self.calls.clear();
        for item in &mut self.items {
            if item["status"] == "in_progress" {
                item["status"] = json!("incomplete");
            }
        }
    }
}

/// The text of a message item (its first content part's), to write into.
fn message_text(item: &mut Value) -> Option<&mut String> {
    match item.get_mut("content")?.get_mut(0)?.get_mut("text")? {
        Value::String(text) => Some(text),
        _ => None,
    }
}

/// The id of the `mcp_call` item of the tool call `call_id`.
fn mcp_item_id(call_id: &str) -> String {
    format!("mcp_{call_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::tool_calls::FunctionDelta;

    fn types(out: &mut Output) -> Vec<&'static str> {
        out.take_frames()
            .into_iter()
            .filter_map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn a_message_in_openais_order_numbered_from_zero() {
        let mut out = Output::new(true);
        let response = json!({"id": "resp_1", "status": "in_progress"});
        out.started(&serde_json::from_value(response).unwrap());
        out.text("Hel");
        out.text("lo");
        out.close();
        let frames = out.take_frames();
        let kinds: Vec<_> = frames.iter().filter_map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
            ]
        );
        for (i, (_, data)) in frames.iter().enumerate() {
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["sequence_number"], i as u64);
        }
        let done: Value = serde_json::from_str(&frames[6].1).unwrap();
        assert_eq!(done["text"], "Hello");
        assert_eq!(out.items()[0]["content"][0]["text"], "Hello");
        assert_eq!(out.items()[0]["status"], "completed");
        assert_eq!(out.next_sequence(), 9);
    }

    #[test]
    fn function_calls_after_text_each_its_own_item() {
        let mut out = Output::new(true);
        out.text("Let me check.");
        let delta = |index, id: Option<&str>, name: Option<&str>, args: &str| ToolCallDelta {
            index: Some(index),
            id: id.map(str::to_owned),
            function: Some(FunctionDelta {
                name: name.map(str::to_owned),
                arguments: Some(args.to_owned()),
            }),
        };
        out.call_delta(&delta(0, Some("call_a"), Some("weather"), "{\"city\":"));
        out.call_delta(&delta(1, Some("call_b"), Some("time"), "{}"));
        out.call_delta(&delta(0, None, None, "\"Paris\"}"));
        out.close();
        let items = out.items();
        assert_eq!(items.len(), 3);
        assert_eq!(items[1]["type"], "function_call");
        assert_eq!(items[1]["call_id"], "call_a");
        assert_eq!(items[1]["name"], "weather");
        assert_eq!(items[1]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(items[2]["call_id"], "call_b");
        assert!(items.iter().all(|i| i["status"] == "completed"));
        let kinds = types(&mut out);
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == "response.function_call_arguments.done")
                .count(),
            2
        );
        // The message closed before the first call was added.
        let msg_done = kinds.iter().position(|k| *k == "response.output_item.done");
        let call_added = kinds
            .iter()
            .rposition(|k| *k == "response.output_item.added");
        assert!(msg_done < call_added);
    }

    #[test]
    fn tools_run_here_are_mcp_calls_with_their_outcome() {
        let mut out = Output::new(true);
        out.tool_started("c1", "time", "get_current_time", "{}");
        out.tool_started("c2", "http", "lookup", "{\"id\":1}");
        out.tool_ended("c2", Err("HTTP 500"));
        out.tool_ended("c1", Ok("12:00"));
        let items = out.items();
        assert_eq!(items[0]["output"], "12:00");
        assert_eq!(items[0]["status"], "completed");
        assert_eq!(items[1]["status"], "failed");
        assert_eq!(items[1]["error"]["content"][0]["text"], "HTTP 500");
        let kinds = types(&mut out);
        assert!(kinds.contains(&"response.mcp_call.failed"));
        assert!(kinds.contains(&"response.mcp_call.completed"));
    }

    #[test]
    fn unstreamed_output_makes_no_frames_but_counts() {
        let mut out = Output::new(false);
        out.text("a");
        out.close();
        assert!(out.take_frames().is_empty());
        assert_eq!(out.items()[0]["content"][0]["text"], "a");
        out.text("b");
        out.cut();
        assert_eq!(out.items()[1]["status"], "incomplete");
    }
}
