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

use serde::{Deserialize, Deserializer, Serialize, Serializer};
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

/// An output item: a message the model writes, typed (its text is written into as it streams,
/// and the item is written out without a JSON tree: the tree cost an unstreamed answer about
/// 4,000 instructions, measured with callgrind), or any other item as its JSON
/// (`function_call`, `mcp_call`, and every item of a stored response read back).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Item {
    Message(MessageItem),
    Json(Value),
}

/// An assistant message of one `output_text` part.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageItem {
    pub id: String,
    pub status: &'static str,
    pub text: String,
    /// Its part was added (a streamed message is announced with no content).
    pub part: bool,
}

/// A null for the fields a message item does not have.
const NULL: &Value = &Value::Null;

impl Item {
    pub fn id(&self) -> &str {
        match self {
            Self::Message(m) => &m.id,
            Self::Json(v) => v["id"].as_str().unwrap_or(""),
        }
    }

    fn status(&self) -> &str {
        match self {
            Self::Message(m) => m.status,
            Self::Json(v) => v["status"].as_str().unwrap_or(""),
        }
    }

    fn set_status(&mut self, status: &'static str) {
        match self {
            Self::Message(m) => m.status = status,
            Self::Json(v @ Value::Object(_)) => v["status"] = Value::from(status),
            Self::Json(_) => {}
        }
    }

    /// A field of a JSON item (null for a message).
    fn field(&self, name: &str) -> &Value {
        match self {
            Self::Message(_) => NULL,
            Self::Json(v) => &v[name],
        }
    }

    /// A string field of a JSON item, to write into.
    fn text_field(&mut self, name: &str) -> Option<&mut String> {
        match self {
            Self::Json(v) => match v.get_mut(name)? {
                Value::String(s) => Some(s),
                _ => None,
            },
            Self::Message(_) => None,
        }
    }

    /// The item as JSON (a stored response's output becomes the next one's context).
    pub fn into_value(self) -> Value {
        match self {
            Self::Message(m) => serde_json::to_value(&m).unwrap_or_default(),
            Self::Json(v) => v,
        }
    }
}

/// The message's one content part.
#[derive(Serialize)]
struct TextPart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: &'static [Value],
    logprobs: &'static [Value],
}

impl<'a> TextPart<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: &[],
            logprobs: &[],
        }
    }
}

impl Serialize for MessageItem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Message<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            status: &'static str,
            role: &'static str,
            content: &'a [TextPart<'a>],
        }
        let part = [TextPart::new(&self.text)];
        Message {
            id: &self.id,
            kind: "message",
            status: self.status,
            role: "assistant",
            content: if self.part { &part } else { &[] },
        }
        .serialize(s)
    }
}

/// Read back (a stored response), every item is its JSON.
impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Self::Json)
    }
}

/// A function call the model is making (streamed fragments by their index).
struct OpenCall {
    index: Option<u32>,
    output_index: usize,
}

pub struct Output {
    items: Vec<Item>,
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

    /// The items as JSON.
    #[cfg(test)]
    pub fn items(&self) -> Vec<Value> {
        self.items.iter().cloned().map(Item::into_value).collect()
    }

    /// Whole items (an unstreamed answer), without events.
    pub fn extend(&mut self, items: Vec<Item>) {
        self.items.extend(items);
    }

    pub fn into_items(self) -> Vec<Item> {
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

    fn add_item(&mut self, item: Item) -> usize {
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
                let at = self.add_item(Item::Message(MessageItem {
                    id: item_id("msg"),
                    status: "in_progress",
                    text: String::new(),
                    part: false,
                }));
                self.event("response.content_part.added", |o| {
                    json!({"item_id": o.items[at].id(), "output_index": at, "content_index": 0,
                        "part": TextPart::new("")})
                });
                if let Item::Message(m) = &mut self.items[at] {
                    m.part = true;
                }
                self.text = Some(at);
                at
            }
        };
        if let Item::Message(m) = &mut self.items[at] {
            m.text.push_str(delta);
        }
        self.event("response.output_text.delta", |o| {
            json!({"item_id": o.items[at].id(), "output_index": at, "content_index": 0,
                "delta": delta, "logprobs": []})
        });
    }

    /// Ends the message being written, if any.
    fn close_text(&mut self) {
        let Some(at) = self.text.take() else {
            return;
        };
        let text = |o: &Self| match &o.items[at] {
            Item::Message(m) => m.text.clone(),
            Item::Json(_) => String::new(),
        };
        self.event("response.output_text.done", |o| {
            json!({"item_id": o.items[at].id(), "output_index": at, "content_index": 0,
                "text": text(o), "logprobs": []})
        });
        self.event("response.content_part.done", |o| {
            json!({"item_id": o.items[at].id(), "output_index": at, "content_index": 0,
                "part": TextPart::new(&text(o))})
        });
        self.items[at].set_status("completed");
        self.done_item(at);
    }

    /// A fragment of a function call the client is to run.
    pub fn call_delta(&mut self, d: &ToolCallDelta) {
        let at = match self.calls.iter().find(|c| c.index == d.index) {
            Some(c) => c.output_index,
            None => {
                self.close_text();
                let call_id = d.id.clone().unwrap_or_else(|| item_id("call"));
                let at = self.add_item(Item::Json(json!({"id": item_id("fc"),
                    "type": "function_call", "status": "in_progress", "call_id": call_id,
                    "name": "", "arguments": ""})));
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
            && let Some(n) = self.items[at].text_field("name")
        {
            n.push_str(name);
        }
        let Some(args) = f.arguments.as_deref().filter(|a| !a.is_empty()) else {
            return;
        };
        if let Some(a) = self.items[at].text_field("arguments") {
            a.push_str(args);
        }
        self.event(
            "response.function_call_arguments.delta",
            |o| json!({"item_id": o.items[at].id(), "output_index": at, "delta": args}),
        );
    }

    fn close_calls(&mut self) {
        for call in std::mem::take(&mut self.calls) {
            let at = call.output_index;
            self.event("response.function_call_arguments.done", |o| {
                let item = &o.items[at];
                json!({"item_id": item.id(), "output_index": at, "name": item.field("name"),
                    "arguments": item.field("arguments")})
            });
            self.items[at].set_status("completed");
            self.done_item(at);
        }
    }

    /// A tool run here started: an `mcp_call` item (`server_label`: the MCP server, or `http`).
    pub fn tool_started(&mut self, call_id: &str, server_label: &str, name: &str, arguments: &str) {
        self.close_text();
        self.close_calls();
        let id = mcp_item_id(call_id);
        let at = self.add_item(Item::Json(
            json!({"id": id, "type": "mcp_call", "status": "in_progress",
            "server_label": server_label, "name": name, "arguments": arguments,
            "output": null, "error": null}),
        ));
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
        let Some(at) = self.items.iter().position(|i| i.id() == id) else {
            return;
        };
        let item = &mut self.items[at];
        let kind = match (outcome, &mut *item) {
            (Ok(output), Item::Json(v)) => {
                v["output"] = json!(output);
                item.set_status("completed");
                "response.mcp_call.completed"
            }
            (Err(error), Item::Json(v)) => {
                v["error"] = json!({"type": "mcp_tool_execution_error",
                    "content": [{"type": "text", "text": error}]});
                item.set_status("failed");
                "response.mcp_call.failed"
            }
            (_, Item::Message(_)) => return,
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
            if item.status() == "in_progress" {
                item.set_status("incomplete");
            }
        }
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
