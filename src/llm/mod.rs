//! The model behind agent-api: the [`LlmProvider`] trait and its implementations.
//!
//! The primitive is a stream of [`ChatChunk`]s; the non-streaming call either collects it or uses
//! the upstream's own non-stream call. Requests travel as OpenAI's JSON body ([`ChatRequest`]) so
//! that fields we do not use ourselves (tools, response_format, ...) pass through unchanged.
//! Nothing here knows about HTTP servers or axum.

pub mod echo;
pub mod http;
pub mod openai;
pub mod sse;
pub mod tool_calls;

use std::borrow::Cow;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use echo::EchoProvider;
pub use openai::OpenAiProvider;
pub use tool_calls::{FunctionCall, ToolCall, ToolCallAssembler, ToolCallDelta};

/// One message of a conversation, as the tutorial routes store and send it. An agent's turn
/// adds assistant messages with `tool_calls` and `tool` messages with `tool_call_id`, stored
/// exactly as the model saw them (both fields are absent on every other message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
        }
    }

    /// An assistant message that calls tools.
    pub fn assistant_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: Some(calls),
            ..Self::new("assistant", content)
        }
    }

    /// The bytes of its tool calls (name, arguments, id) and tool-call id, for the stores' and
    /// the trimming's accounting.
    pub fn tool_bytes(&self) -> usize {
        let calls = self.tool_calls.iter().flatten();
        calls
            .map(|c| c.id.len() + c.function.name.len() + c.function.arguments.len() + 16)
            .sum::<usize>()
            + self.tool_call_id.as_ref().map_or(0, String::len)
    }

    /// The result of the tool call `call_id`.
    pub fn tool_result(call_id: &str, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call_id.to_owned()),
            ..Self::new("tool", content)
        }
    }
}

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// An OpenAI chat-completions request body: the model and messages, which this server reads,
/// and every other field as it came (`extra`, passed through unchanged). Serialized straight
/// from these types: the tutorial routes' history is not turned into a JSON tree first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Messages,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The messages of a request.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Messages {
    /// The tutorial routes' history: role and text.
    Turn(Vec<Message>),
    /// `/v1` callers' messages as they sent them (content parts, tool calls, names, ...).
    Raw(Vec<Value>),
}

impl Default for Messages {
    fn default() -> Self {
        Self::Turn(Vec::new())
    }
}

impl ChatRequest {
    /// The body the tutorial routes send: model, whole history, temperature and max_tokens.
    pub fn new(model: &str, messages: Vec<Message>, temperature: f64, max_tokens: u32) -> Self {
        let mut extra = Map::with_capacity(4);
        extra.insert("temperature".into(), json!(temperature));
        extra.insert("max_tokens".into(), Value::from(max_tokens));
        Self {
            model: model.to_owned(),
            messages: Messages::Turn(messages),
            extra,
        }
    }

    /// Each message's role and text (string content, or the text parts of an array).
    pub fn texts(&self) -> Vec<(&str, String)> {
        match &self.messages {
            Messages::Turn(m) => m
                .iter()
                .map(|m| (m.role.as_str(), m.content.clone()))
                .collect(),
            Messages::Raw(m) => m
                .iter()
                .map(|m| {
                    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
                    (role, content_text(m.get("content")))
                })
                .collect(),
        }
    }

    /// The text of the last user message.
    pub fn last_user_text(&self) -> String {
        self.texts()
            .into_iter()
            .rev()
            .find(|(role, _)| *role == "user")
            .map(|(_, text)| text)
            .unwrap_or_default()
    }

    /// Every message's text, for providers that count tokens themselves.
    pub fn all_text(&self) -> String {
        let parts: Vec<String> = self.texts().into_iter().map(|(_, t)| t).collect();
        parts.join(" ")
    }
}

/// The text of a message's `content`: a string, or the text parts of an array.
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// One streamed piece of an answer: the parsed view the tutorial routes need, and the
/// OpenAI `chat.completion.chunk` as the upstream wrote it (JSON text), which
/// `/v1/chat/completions` forwards unchanged, without parsing it into a tree and writing it again.
#[derive(Debug, Clone)]
pub struct ChatChunk {
    pub delta: String,
    /// Fragments of tool calls ([`ToolCallAssembler`] puts them together).
    pub tool_calls: Vec<ToolCallDelta>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// `choices` is an empty array: the usage chunk that ends a stream when usage is asked for.
    pub usage_only: bool,
    pub raw: String,
}

/// The parts of OpenAI's chunk and completion objects this server reads; everything else is
/// ignored here and passes through in `raw`. Strings are borrowed from the raw text when they
/// hold no escapes.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<WireChoice<'a>>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default, borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<WireMessage<'a>>,
    #[serde(default, borrow)]
    message: Option<WireMessage<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    /// Whole calls in a completion's message; fragments ([`ToolCallDelta`]) in a chunk's delta.
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

/// Usage as upstreams report it; some leave out a count, which then reads as 0.
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
        }
    }
}

/// The message of an OpenAI error object (`{"error": {"message": ...}}`), if `raw` is one.
pub fn error_message(raw: &[u8]) -> Option<String> {
    let wire: Wire = serde_json::from_slice(raw).ok()?;
    wire.error?.message.map(Cow::into_owned)
}

/// Whether an upstream's refusal says the prompt exceeds the model's context: OpenAI's code
/// `context_length_exceeded`, or the texts of vLLM ("maximum context length"), llama.cpp
/// ("exceeds the available context size") and others.
pub fn says_context_too_long(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    [
        "context_length_exceeded",
        "context length",
        "context size",
        "context window",
        "maximum model length",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

fn parse_wire(raw: &str) -> Result<Wire<'_>, LlmError> {
    let wire: Wire = serde_json::from_str(raw).map_err(|e| LlmError::BadResponse(e.to_string()))?;
    if let Some(error) = &wire.error {
        let message = error.message.as_deref().unwrap_or("error in stream");
        return Err(LlmError::Failed(message.to_owned()));
    }
    Ok(wire)
}

impl ChatChunk {
    /// Reads the parsed view out of an OpenAI chunk's JSON text. A chunk that is an
    /// `{"error": ...}` object is the upstream failing mid-stream.
    pub fn parse(raw: String) -> Result<Self, LlmError> {
        let wire = parse_wire(&raw)?;
        let usage_only = wire.choices.as_ref().is_some_and(Vec::is_empty);
        let choice = wire.choices.and_then(|c| c.into_iter().next());
        let (delta, tool_calls, finish_reason) = match choice {
            Some(c) => {
                let (content, calls) = match c.delta {
                    Some(d) => (d.content.map(Cow::into_owned), d.tool_calls),
                    None => (None, None),
                };
                (content, calls, c.finish_reason.map(Cow::into_owned))
            }
            None => (None, None, None),
        };
        let usage = wire.usage.map(Usage::from);
        Ok(Self {
            delta: delta.unwrap_or_default(),
            tool_calls: tool_calls.unwrap_or_default(),
            finish_reason,
            usage,
            usage_only,
            raw,
        })
    }
}

/// A whole (non-streamed) answer, with the OpenAI `chat.completion` object as JSON text.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    /// `choices[0].finish_reason` (`stop`, `length`, `tool_calls`, ...).
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    pub raw: String,
}

impl Completion {
    pub fn parse(raw: String) -> Result<Self, LlmError> {
        let wire = parse_wire(&raw)?;
        let choice = wire.choices.and_then(|c| c.into_iter().next());
        let finish_reason = choice
            .as_ref()
            .and_then(|c| c.finish_reason.as_deref())
            .map(str::to_owned);
        let message = choice
            .and_then(|c| c.message)
            .ok_or_else(|| LlmError::BadResponse("completion has no choices[0].message".into()))?;
        let content = message.content.map(Cow::into_owned).unwrap_or_default();
        let mut calls = ToolCallAssembler::default();
        for call in message.tool_calls.unwrap_or_default() {
            // Whole calls: each is its own, whatever index it names.
            calls.push(ToolCallDelta {
                index: None,
                id: call.id.or_else(|| Some(uuid::Uuid::new_v4().to_string())),
                ..call
            });
        }
        let usage = wire.usage.map(Usage::from);
        Ok(Self {
            content,
            tool_calls: calls.finish(),
            finish_reason,
            usage,
            raw,
        })
    }
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, LlmError>> + Send + 'static>>;

/// What can go wrong with a model call. `error.rs` maps it to 502/504/429.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("the model did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the model answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the model is rate limited: {message}")]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The upstream refused the request because the prompt is longer than the model's context.
    #[error("the conversation is too long for the model's context: {0}")]
    ContextLength(String),
    #[error("could not reach the model: {0}")]
    Connect(String),
    #[error("the model answered something that is not a chat completion: {0}")]
    BadResponse(String),
    #[error("the model's stream ended before the answer was finished")]
    Incomplete,
    #[error("the model failed: {0}")]
    Failed(String),
}

/// A chat model. `Arc<dyn LlmProvider>` lives in `AppState`; one instance serves every request.
#[async_trait]
pub trait LlmProvider: Send + Sync + 'static {
    /// A short name for logs and `/health`.
    fn name(&self) -> &'static str;

    /// Streams the answer. The stream yields `Err(LlmError::Incomplete)` and ends if the upstream
    /// stopped without a finish reason. Dropping the stream cancels the upstream call.
    async fn stream(&self, req: ChatRequest) -> Result<ChunkStream, LlmError>;

    /// The whole answer. The default collects [`LlmProvider::stream`].
    async fn complete(&self, req: ChatRequest) -> Result<Completion, LlmError> {
        let model = req.model.clone();
        let mut stream = self.stream(req).await?;
        let mut content = String::new();
        let mut usage = None;
        let mut finish = None;
        let mut calls = ToolCallAssembler::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            content.push_str(&chunk.delta);
            for delta in chunk.tool_calls {
                calls.push(delta);
            }
            usage = chunk.usage.or(usage);
            finish = chunk.finish_reason.or(finish);
        }
        let tool_calls = calls.finish();
        let raw = completion_json(&model, &content, &tool_calls, finish.as_deref(), usage);
        Ok(Completion {
            content,
            tool_calls,
            finish_reason: finish,
            usage,
            raw,
        })
    }

    /// Whether the provider can serve (for `/ready`).
    async fn ready(&self) -> Result<(), LlmError> {
        Ok(())
    }
}

/// An OpenAI `chat.completion` object for providers that build their own answers.
pub fn completion_json(
    model: &str,
    content: &str,
    tool_calls: &[ToolCall],
    finish: Option<&str>,
    usage: Option<Usage>,
) -> String {
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls);
    }
    json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish.unwrap_or("stop"),
        }],
        "usage": usage.unwrap_or_default(),
    })
    .to_string()
}

/// Wraps a chunk stream so that a pause longer than `idle` between chunks ends it with
/// [`LlmError::Timeout`], and a stream that ends without a finish reason ends with
/// [`LlmError::Incomplete`].
pub fn guard_stream(inner: ChunkStream, idle: Duration) -> ChunkStream {
    struct St {
        inner: ChunkStream,
        finished: bool,
        done: bool,
    }
    let st = St {
        inner,
        finished: false,
        done: false,
    };
    Box::pin(futures::stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        match tokio::time::timeout(idle, st.inner.next()).await {
            Err(_) => {
                st.done = true;
                Some((Err(LlmError::Timeout(idle)), st))
            }
            Ok(Some(Ok(chunk))) => {
                st.finished |= chunk.finish_reason.is_some();
                Some((Ok(chunk), st))
            }
            Ok(Some(Err(e))) => {
                st.done = true;
                Some((Err(e), st))
            }
            Ok(None) if st.finished => None,
            Ok(None) => {
                st.done = true;
                Some((Err(LlmError::Incomplete), st))
            }
        }
    }))
}

/// Estimates the tokens a text costs a model, without a tokenizer: one per four bytes, the
/// usual rule for English with BPE tokenizers (constant time: it bounds what is sent,
/// `MAX_HISTORY_TOKENS`, on every turn).
pub fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

/// Counts tokens roughly (words), for providers that report no usage.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}
