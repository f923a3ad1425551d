//! Drives [`ToolLoop`] with I/O: calls the model (streamed or whole), runs the tools of each
//! answer concurrently, and tells the client what happens as it happens (tool calls, tool
//! results, and, when streamed, the content of every step). Dropping the future cancels the
//! model call and every tool call in flight; nothing is written anywhere until the caller
//! commits the [`Finished`] turn.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::agents::{Agent, Agents};
use super::tool_loop::{Action, Finished, ModelAnswer, ToolLoop, ToolResult};
use super::{AgentError, TurnEvent};
use crate::llm::{
    ChatChunk, ChatRequest, ChunkStream, LlmError, LlmProvider, Message, Messages, ToolCall,
    ToolCallAssembler,
};
use crate::tools::{Tool, Toolbox};

/// The most calls of one answer that are run; the rest are answered with an error.
pub const MAX_CALLS_PER_STEP: usize = 32;

/// A tool call as clients see it: `arguments` parsed (or the model's text when it is not
/// JSON), and, once it ran, its `result` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ToolCallView {
    pub id: String,
    pub name: String,
    /// Absent on `tool_result` events and frames (the `tool_call` before it had them).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On `tool_result` events and frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl ToolCallView {
    pub fn call(call: &ToolCall) -> Self {
        Self {
            id: call.id.clone(),
            name: call.function.name.clone(),
            arguments: Some(arguments_view(&call.function.arguments)),
            result: None,
            error: None,
            duration_ms: None,
        }
    }

    pub fn with_outcome(mut self, outcome: &Result<String, String>) -> Self {
        match outcome {
            Ok(r) => self.result = Some(r.clone()),
            Err(e) => self.error = Some(e.clone()),
        }
        self
    }
}

/// The model's arguments text as clients see it: the parsed JSON, or the text itself.
pub fn arguments_view(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// Where a driven turn's events go: nowhere (a whole answer), or to a streamed client.
#[async_trait::async_trait]
pub trait Events: Send {
    /// Whether content deltas are wanted (a streamed turn calls the model streamed).
    fn streamed(&self) -> bool;
    /// False when the client is gone: the turn ends.
    async fn send(&mut self, event: TurnEvent) -> bool;
}

/// A whole (non-streamed) turn: events are not sent anywhere.
pub struct NoEvents;

#[async_trait::async_trait]
impl Events for NoEvents {
    fn streamed(&self) -> bool {
        false
    }
    async fn send(&mut self, _event: TurnEvent) -> bool {
        true
    }
}

/// What one driven turn needs.
pub struct Drive<'a> {
    llm: &'a dyn LlmProvider,
    toolbox: &'a Toolbox,
    agent: &'a Agent,
    tools: Vec<Tool>,
    /// The request of every step without its messages (model, sampling fields, and the tools
    /// in OpenAI's shape, built once per turn).
    request: ChatRequest,
    deadline: Instant,
    /// `TURN_TIMEOUT_SECS`, for the error past the deadline.
    turn_timeout: Duration,
}

impl<'a> Drive<'a> {
    /// A turn of `agent` whose steps are sent like `template` (its messages are not used),
    /// offering the agent's tools as they resolve now.
    pub fn new(
        llm: &'a dyn LlmProvider,
        agents: &'a Agents,
        agent: &'a Agent,
        template: &ChatRequest,
        deadline: Instant,
        turn_timeout: Duration,
    ) -> Self {
        let tools = agents.tools_of(agent);
        let mut extra = template.extra.clone();
        if !tools.is_empty() {
            extra.insert("tools".into(), tools.iter().map(Tool::openai).collect());
            if let Some(p) = agent.parallel_tool_calls {
                extra.insert("parallel_tool_calls".into(), Value::Bool(p));
            }
        }
        Self {
            llm,
            toolbox: &agents.toolbox,
            agent,
            tools,
            request: ChatRequest {
                model: template.model.clone(),
                messages: Messages::default(),
                extra,
            },
            deadline,
            turn_timeout,
        }
    }

    fn step_request(&self, messages: &[Message], tool_choice_none: bool) -> ChatRequest {
        let mut req = ChatRequest {
            model: self.request.model.clone(),
            messages: Messages::Turn(messages.to_vec()),
            extra: self.request.extra.clone(),
        };
        if tool_choice_none && !self.tools.is_empty() {
            req.extra.insert("tool_choice".into(), json!("none"));
        }
        req
    }

    /// Runs the loop over `messages` (history and the turn's new ones). `first`: the first
    /// step's stream, when the caller already opened it (to answer its errors as HTTP errors).
    pub async fn run(
        &self,
        messages: Vec<Message>,
        mut first: Option<ChunkStream>,
        events: &mut dyn Events,
    ) -> Result<Finished, AgentError> {
        let mut machine = ToolLoop::new(messages, self.agent.max_steps);
        let mut action = machine
            .start()
            .map_err(|e| AgentError::Loop(e.to_string()))?;
        loop {
            action = match action {
                Action::CallModel { tool_choice_none } => {
                    let answer = match first.take() {
                        Some(stream) => self.read(stream, events).await?,
                        None => {
                            let req = self.step_request(machine.messages(), tool_choice_none);
                            self.call_model(req, events).await?
                        }
                    };
                    machine.on_answer(answer)
                }
                Action::RunTools(calls) => {
                    let results = self.run_tools(&calls, events).await?;
                    machine.on_results(results)
                }
                Action::Finish(done) => return Ok(done),
            }
            .map_err(|e| AgentError::Loop(e.to_string()))?;
        }
    }

    /// The first step's request, for a caller that opens its stream itself.
    pub fn first_request(&self, messages: &[Message]) -> ChatRequest {
        self.step_request(messages, self.agent.max_steps <= 1)
    }

    async fn call_model(
        &self,
        req: ChatRequest,
        events: &mut dyn Events,
    ) -> Result<ModelAnswer, AgentError> {
        let timeout = || LlmError::Timeout(self.turn_timeout);
        if events.streamed() {
            let stream = tokio::time::timeout_at(self.deadline, self.llm.stream(req))
                .await
                .map_err(|_| timeout())??;
            self.read(stream, events).await
        } else {
            let done = tokio::time::timeout_at(self.deadline, self.llm.complete(req))
                .await
                .map_err(|_| timeout())??;
            Ok(ModelAnswer {
                content: done.content,
                tool_calls: done.tool_calls,
                tokens: done.usage.map(|u| u.total_tokens),
                usage: done.usage.unwrap_or_default(),
            })
        }
    }

    /// Reads one streamed answer, handing its content to the client as it comes.
    async fn read(
        &self,
        mut stream: ChunkStream,
        events: &mut dyn Events,
    ) -> Result<ModelAnswer, AgentError> {
        let mut content = String::new();
        let mut calls = ToolCallAssembler::default();
        let mut tokens = None;
        let mut last_usage = None;
        while let Some(chunk) = stream.next().await {
            let ChatChunk {
                delta,
                tool_calls,
                usage,
                ..
            } = chunk?;
            tokens = usage.map(|u| u.total_tokens).or(tokens);
            last_usage = usage.or(last_usage);
            for d in tool_calls {
                calls.push(d);
            }
            if !delta.is_empty() {
                content.push_str(&delta);
                if !events.send(TurnEvent::Delta(delta)).await {
                    return Err(AgentError::Gone);
                }
            }
        }
        Ok(ModelAnswer {
            content,
            tool_calls: calls.finish(),
            tokens,
            usage: last_usage.unwrap_or_default(),
        })
    }

    /// Runs one answer's calls concurrently, each within its timeout and the turn's; reports
    /// each call at once and each result as it comes.
    async fn run_tools(
        &self,
        calls: &[ToolCall],
        events: &mut dyn Events,
    ) -> Result<Vec<ToolResult>, AgentError> {
        for call in calls {
            if !events
                .send(TurnEvent::ToolCall(ToolCallView::call(call)))
                .await
            {
                return Err(AgentError::Gone);
            }
        }
        let started = Instant::now();
        let left = self.deadline.saturating_duration_since(started);
        let timeout = self
            .agent
            .tool_timeout
            .min(left)
            .max(Duration::from_millis(1));
        let mut running: FuturesUnordered<_> = calls
            .iter()
            .enumerate()
            .map(|(i, call)| async move {
                let outcome = if i < MAX_CALLS_PER_STEP {
                    self.toolbox.call(&self.tools, call, timeout).await
                } else {
                    crate::tools::CallOutcome {
                        result: Err(format!(
                            "more than {MAX_CALLS_PER_STEP} tool calls in one answer; this one was not run"
                        )),
                        outcome: "error",
                        duration: Duration::ZERO,
                    }
                };
                (call, outcome)
            })
            .collect();
        let mut results = Vec::with_capacity(calls.len());
        while let Some((call, outcome)) = running.next().await {
            let mut view = ToolCallView::call(call).with_outcome(&outcome.result);
            view.arguments = None;
            view.duration_ms = Some(outcome.duration.as_millis() as u64);
            if !events.send(TurnEvent::ToolResult(view)).await {
                return Err(AgentError::Gone);
            }
            results.push(ToolResult {
                call_id: call.id.clone(),
                outcome: outcome.result,
            });
        }
        // The tools' time is not the server's own (the overhead metric).
        crate::metrics::add_upstream_time(started.elapsed());
        Ok(results)
    }
}
