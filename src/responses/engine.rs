//! Runs a prepared response: the model (one call, its tool calls returned to the client as
//! `function_call` items) or an agent's loop (its tools run here, as `mcp_call` items), within
//! `TURN_TIMEOUT_SECS`, and stores what came of it.
//!
//! A streamed or background response runs with a [`RunWriter`]: every event goes into the run's
//! log as it is made, and the run's stop (`POST .../cancel`, `DELETE /runs/{id}`, a streamed
//! client that left, shutdown) drops the model call and every tool call at once. The final
//! record is stored before the run's terminal event, so that whoever sees the event can read it.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::Prepared;
use super::events::Output;
use super::object::ResponseStatus;
use super::translate::usage;
use crate::agent::TurnEvent;
use crate::agent::agents::Agent;
use crate::agent::driver::{Drive, Events};
use crate::error::ApiError;
use crate::llm::{ChatRequest, LlmError, Message, Messages, Usage};
use crate::runs::{RunStatus, RunWriter};
use crate::state::AppState;
use crate::store::StoredResponse;

/// What a response's work gave.
struct Made {
    usage: Usage,
    finish_reason: Option<String>,
}

/// How a response ended.
enum End {
    Done(Made),
    Failed(ApiError),
    Stopped,
}

/// Runs `p` without a run (a whole, unstreamed answer): its error is the caller's to answer.
/// The record, stored when `p.store`.
pub async fn run_whole(state: &AppState, mut p: Prepared) -> Result<StoredResponse, ApiError> {
    let mut out = Output::new(false);
    let work = Work::of(&mut p);
    let made = produce(state, work, &mut out, None).await?;
    let record = finish(state, p, out, End::Done(made), None).await;
    Ok(record)
}

/// Runs `p` as the run `writer` writes (streamed or background); its record was stored first
/// when `p.store`.
pub async fn run_logged(state: &AppState, mut p: Prepared, writer: RunWriter) {
    let mut out = Output::new(true);
    out.started(&p.record.response);
    flush(&mut out, Some(&writer));
    let end = {
        let work = produce(state, Work::of(&mut p), &mut out, Some(&writer));
        tokio::select! {
            r = work => match r {
                Ok(made) => End::Done(made),
                Err(e) => End::Failed(e),
            },
            () = writer.stopped() => End::Stopped,
        }
    };
    finish(state, p, out, end, Some(&writer)).await;
}

/// Pushes the frames made so far into the run.
fn flush(out: &mut Output, writer: Option<&RunWriter>) {
    if let Some(w) = writer {
        for frame in out.take_frames() {
            w.push(frame);
        }
    }
}

/// The error object of a failed response (OpenAI's codes).
fn error_object(e: &ApiError) -> Value {
    let code = match e {
        ApiError::Upstream(LlmError::RateLimited { .. }) => "rate_limit_exceeded",
        _ => "server_error",
    };
    json!({"code": code, "message": e.message()})
}

/// Completes the record from how the work ended, stores it, and ends the run.
async fn finish(
    state: &AppState,
    p: Prepared,
    mut out: Output,
    end: End,
    writer: Option<&RunWriter>,
) -> StoredResponse {
    let mut record = p.record;
    let r = &mut record.response;
    let (status, run_status) = match &end {
        End::Done(made) => {
            out.close();
            r.usage = Some(usage(made.usage));
            if made.finish_reason.as_deref() == Some("length") {
                r.incomplete_details = Some(json!({"reason": "max_output_tokens"}));
                (ResponseStatus::Incomplete, RunStatus::Completed)
            } else {
                (ResponseStatus::Completed, RunStatus::Completed)
            }
        }
        End::Failed(e) => {
            out.cut();
            r.error = Some(error_object(e));
            (ResponseStatus::Failed, RunStatus::Failed)
        }
        End::Stopped if writer.is_some_and(RunWriter::shutting_down) => {
            out.cut();
            r.error = Some(json!({"code": "server_error",
                "message": "the server shut down before the response was finished; create it again"}));
            (ResponseStatus::Failed, RunStatus::Interrupted)
        }
        End::Stopped => {
            out.cut();
            (ResponseStatus::Cancelled, RunStatus::Cancelled)
        }
    };
    // The events that closed the open items go before the terminal one.
    flush(&mut out, writer);
    let seq = out.next_sequence();
    r.status = status;
    r.completed_at = Some(chrono::Utc::now().timestamp());
    r.output = out.into_items();
    if p.store {
        // Replacing only what is held: a response deleted while it ran stays deleted.
        let replace_only = writer.is_some();
        let ttl = state.config.response_ttl;
        if let Err(e) = state.responses.put(&record, ttl, replace_only).await {
            tracing::warn!(response = record.id(), error = %e, "could not store a response");
        }
    }
    if let Some(w) = writer {
        let (kind, mut data) = match status {
            ResponseStatus::Completed => {
                ("response.completed", json!({"response": record.response}))
            }
            ResponseStatus::Incomplete => {
                ("response.incomplete", json!({"response": record.response}))
            }
            ResponseStatus::Failed => ("response.failed", json!({"response": record.response})),
            _ => (
                "error",
                json!({"code": "response_cancelled", "message": "the response was cancelled",
                    "param": null}),
            ),
        };
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        let tokens = record.response.usage.map_or(0, |u| u.total_tokens);
        w.end(run_status, (Some(kind), data.to_string()), tokens);
    }
    record
}

/// What [`produce`] works from, taken out of the [`Prepared`] (the record stays for
/// [`finish`]).
struct Work {
    agent: Option<Arc<Agent>>,
    request: ChatRequest,
    messages: Vec<Message>,
}

impl Work {
    fn of(p: &mut Prepared) -> Self {
        Self {
            agent: p.agent.take(),
            request: std::mem::take(&mut p.request),
            messages: std::mem::take(&mut p.messages),
        }
    }
}

/// The model's or the agent's work, into `out`.
async fn produce(
    state: &AppState,
    w: Work,
    out: &mut Output,
    writer: Option<&RunWriter>,
) -> Result<Made, ApiError> {
    let limit = state.config.turn_timeout;
    let deadline = Instant::now() + limit;
    let work = async {
        match &w.agent {
            Some(agent) => {
                let drive = Drive::new(
                    &*state.llm,
                    &state.agents,
                    agent,
                    &w.request,
                    deadline,
                    limit,
                );
                let labels = state
                    .agents
                    .tools_of(agent)
                    .into_iter()
                    .map(|t| {
                        let label = t.spec.source.strip_prefix("mcp:").unwrap_or("http");
                        let prefix = format!("{label}__");
                        let name = t.spec.name.strip_prefix(&prefix).unwrap_or(&t.spec.name);
                        (t.spec.name.clone(), (label.to_owned(), name.to_owned()))
                    })
                    .collect();
                let streamed = writer.is_some();
                let mut events = ToOutput {
                    out: &mut *out,
                    writer,
                    labels,
                    streamed,
                };
                let done = drive
                    .run(w.messages, None, &mut events)
                    .await
                    .map_err(ApiError::from)?;
                if !streamed {
                    out.text(&done.response);
                }
                Ok(Made {
                    usage: done.usage,
                    finish_reason: None,
                })
            }
            None => {
                let mut req = w.request;
                req.messages = Messages::Turn(w.messages);
                if writer.is_none() {
                    let done = state.llm.complete(req).await?;
                    let items = super::translate::output_items(&done.content, &done.tool_calls);
                    out.extend(items);
                    return Ok(Made {
                        usage: done.usage.unwrap_or_default(),
                        finish_reason: done.finish_reason,
                    });
                }
                let mut chunks = state.llm.stream(req).await?;
                let mut made = Made {
                    usage: Usage::default(),
                    finish_reason: None,
                };
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk?;
                    out.text(&chunk.delta);
                    for d in &chunk.tool_calls {
                        out.call_delta(d);
                    }
                    if let Some(u) = chunk.usage {
                        made.usage = u;
                    }
                    made.finish_reason = chunk.finish_reason.or(made.finish_reason);
                    flush(out, writer);
                }
                Ok(made)
            }
        }
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| ApiError::Upstream(LlmError::Timeout(limit)))?
}

/// An agent's events as output items: deltas as message text, tool calls as `mcp_call` items.
struct ToOutput<'a> {
    out: &'a mut Output,
    writer: Option<&'a RunWriter>,
    /// Each tool's model-visible name: its server's label and its own name.
    labels: HashMap<String, (String, String)>,
    streamed: bool,
}

#[async_trait::async_trait]
impl Events for ToOutput<'_> {
    fn streamed(&self) -> bool {
        self.streamed
    }

    async fn send(&mut self, event: TurnEvent) -> bool {
        match event {
            TurnEvent::Delta(d) => self.out.text(&d),
            TurnEvent::ToolCall(view) => {
                let (label, name) = self
                    .labels
                    .get(&view.name)
                    .cloned()
                    .unwrap_or_else(|| ("http".to_owned(), view.name.clone()));
                let arguments = match &view.arguments {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                self.out.tool_started(&view.id, &label, &name, &arguments);
            }
            TurnEvent::ToolResult(view) => {
                let outcome = match (&view.result, &view.error) {
                    (_, Some(e)) => Err(e.as_str()),
                    (Some(r), None) => Ok(r.as_str()),
                    (None, None) => Ok(""),
                };
                self.out.tool_ended(&view.id, outcome);
            }
            TurnEvent::Done { .. } | TurnEvent::Failed(_) => {}
        }
        flush(self.out, self.writer);
        true
    }
}
