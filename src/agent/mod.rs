//! The domain: run one agent turn on a conversation ([`run_turn`], [`stream_turn`]), and run
//! background tasks ([`runner`]). [`agents`] holds the agents a turn can run as, [`tool_loop`]
//! is the agent loop as a pure state machine, and [`driver`] drives it with the model and the
//! tools.
//!
//! Functions here take what they need (`&dyn LlmProvider`, `&dyn ConversationStore`) and know
//! nothing about axum, so that they can be tested without HTTP.

pub mod agents;
pub mod driver;
pub mod runner;
pub mod tool_loop;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::instrument;

use crate::llm::{
    ChatChunk, ChatRequest, ChunkStream, LlmError, LlmProvider, Message, Usage, count_tokens,
    estimate_tokens,
};
use crate::runs::{self, NewRun, RunStatus, RunWriter, Runs};
use crate::store::{ConversationStore, StoreError, TurnLease};

pub use agents::{Agent, Agents, DEFAULT_AGENT};
pub use driver::ToolCallView;
pub use runner::TaskRunner;

/// The tutorial's defaults, used where neither the request nor the agent says otherwise.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful AI assistant.";
pub const DEFAULT_TEMPERATURE: f64 = 0.7;

/// A validated chat turn. Fields the request left out are `None`: the agent's own values, then
/// the defaults, apply (the agent is known only once the conversation is: [`prepare`]).
#[derive(Debug, Clone)]
pub struct ChatTurn {
    pub conversation_id: Option<String>,
    pub message: String,
    /// The agent the request named (checked to exist).
    pub agent: Option<String>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub model: Option<String>,
    /// `max_tokens` when neither the request nor the agent sets it.
    pub default_max_tokens: u32,
    /// The model when neither the request nor the agent names one (`CHAT_MODEL`).
    pub default_model: String,
    /// The estimated tokens of history sent upstream (`MAX_HISTORY_TOKENS`).
    pub max_history_tokens: usize,
    /// How long to wait for a conversation busy with another turn: `TURN_WAIT_SECS`, or zero
    /// for `if_busy: "reject"`.
    pub turn_wait: Duration,
    /// `TURN_TIMEOUT_SECS`: the whole turn, every model call and tool call in it.
    pub turn_timeout: Duration,
    /// `STREAM_WRITE_TIMEOUT_SECS`: how long a streamed turn waits for its client to take a
    /// frame before it takes the client for gone and ends.
    pub frame_timeout: Duration,
    /// `on_disconnect: "continue"`: a streamed turn whose client left goes on to its end.
    pub keep_going: bool,
}

#[derive(Debug, Clone)]
pub struct TurnOutcome {
    pub conversation_id: String,
    pub response: String,
    pub tokens_used: u64,
    /// Model calls made, for a turn of an agent with tools (`None` otherwise).
    pub steps: Option<u32>,
    /// The calls the turn made, with their results.
    pub tool_calls: Vec<ToolCallView>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Busy(String),
    /// The conversation belongs to another agent (409).
    #[error("{0}")]
    OtherAgent(String),
    /// A field that does not fit the turn's agent (422).
    #[error("{msg}")]
    Invalid { field: &'static str, msg: String },
    /// The loop was misdriven (a bug of ours).
    #[error("{0}")]
    Loop(String),
    /// The streamed turn's client is gone.
    #[error("the client is gone")]
    Gone,
}

/// A turn whose lease is held and whose request is built, ready to call the model.
struct PreparedTurn {
    lease: Box<dyn TurnLease>,
    conversation_id: String,
    agent: Arc<Agent>,
    request: ChatRequest,
    /// The messages this turn adds before the answer (the system prompt on a new conversation,
    /// then the user message).
    new_messages: Vec<Message>,
}

/// Drops the oldest whole turns (a `user` message and everything up to the next one, so that
/// an assistant's tool calls stay with their results) until the estimated tokens of `messages`
/// fit `max`. A leading system message and the last turn are always kept: what still does not
/// fit is the upstream's to refuse (a "context length" answer, 422/400).
pub fn trim_to_tokens(messages: &mut Vec<Message>, max: usize) {
    let cost = |m: &Message| estimate_tokens(&m.content) + m.tool_bytes().div_ceil(4) + 4;
    let mut total: usize = messages.iter().map(cost).sum();
    if total <= max {
        return;
    }
    let first = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    let Some(last_turn) = messages.iter().rposition(|m| m.role == "user") else {
        return;
    };
    let mut end = first;
    while total > max && end < last_turn {
        // The turn starting at `end` runs to the next user message.
        let next = messages[end + 1..last_turn]
            .iter()
            .position(|m| m.role == "user")
            .map_or(last_turn, |i| end + 1 + i);
        total -= messages[end..next].iter().map(cost).sum::<usize>();
        end = next;
    }
    messages.drain(first..end);
}

/// Takes the conversation's turn and settles the agent: the conversation's own (a request
/// naming another: 409), else the one the request names, else the default.
async fn prepare(
    store: &dyn ConversationStore,
    agents: &Agents,
    owner: &str,
    turn: ChatTurn,
) -> Result<PreparedTurn, AgentError> {
    let max_history_tokens = turn.max_history_tokens;
    let conversation_id = turn
        .conversation_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let lease = store
        .begin_turn(owner, &conversation_id, turn.turn_wait)
        .await?
        .ok_or(AgentError::NotFound("conversation"))?;
    let existing = !lease.history().is_empty();
    let own = existing.then(|| lease.agent().unwrap_or(DEFAULT_AGENT));
    let name = match (turn.agent.as_deref(), own) {
        (Some(named), Some(own)) if named != own => {
            return Err(AgentError::OtherAgent(format!(
                "the conversation belongs to the agent `{own}`"
            )));
        }
        (Some(named), _) => named,
        (None, Some(own)) => own,
        (None, None) => DEFAULT_AGENT,
    };
    let agent = Arc::clone(agents.get(name).ok_or_else(|| {
        AgentError::OtherAgent(format!(
            "the conversation belongs to the agent `{name}`, which is no longer configured"
        ))
    })?);
    let model = match (&agent.model, turn.model) {
        (Some(own), Some(named)) if named != *own => {
            return Err(AgentError::Invalid {
                field: "model",
                msg: format!("the agent `{}` uses the model `{own}`", agent.name),
            });
        }
        (Some(own), _) => own.clone(),
        (None, named) => named.unwrap_or(turn.default_model),
    };
    let mut new_messages = Vec::with_capacity(2);
    if !existing {
        let system = agent
            .instructions
            .clone()
            .or(turn.system_prompt)
            .unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_owned());
        new_messages.push(Message::new("system", system));
    }
    new_messages.push(Message::new("user", turn.message));
    let mut messages = Vec::with_capacity(lease.history().len() + new_messages.len());
    messages.extend_from_slice(lease.history());
    messages.extend_from_slice(&new_messages);
    trim_to_tokens(&mut messages, max_history_tokens);
    let temperature = turn
        .temperature
        .or(agent.temperature)
        .unwrap_or(DEFAULT_TEMPERATURE);
    let max_tokens = turn
        .max_tokens
        .or(agent.max_tokens)
        .unwrap_or(turn.default_max_tokens);
    let request = ChatRequest::new(&model, messages, temperature, max_tokens);
    Ok(PreparedTurn {
        lease,
        conversation_id,
        agent,
        request,
        new_messages,
    })
}

/// The turn's tokens as the upstream reports them; when it reports none, the words of what was
/// sent (the history and this turn's new messages, which the turn still holds) and of the answer.
fn tokens(usage: Option<Usage>, turn: &PreparedTurn, answer: &str) -> u64 {
    usage.map(|u| u.total_tokens).unwrap_or_else(|| {
        let sent = turn.lease.history().iter().chain(&turn.new_messages);
        sent.map(|m| count_tokens(&m.content)).sum::<u64>() + count_tokens(answer)
    })
}

impl PreparedTurn {
    /// The messages of the first model call (the history and the turn's own), taken out of
    /// the request for the loop, which owns them from here.
    fn take_messages(&mut self) -> Vec<Message> {
        match std::mem::take(&mut self.request.messages) {
            crate::llm::Messages::Turn(m) => m,
            crate::llm::Messages::Raw(_) => Vec::new(),
        }
    }

    /// The driver of this turn's loop (an agent with tools): every step is sent with the
    /// turn's model and sampling fields.
    fn drive<'a>(
        &'a self,
        llm: &'a dyn LlmProvider,
        agents: &'a Agents,
        deadline: Instant,
        turn_timeout: Duration,
    ) -> driver::Drive<'a> {
        driver::Drive::new(
            llm,
            agents,
            &self.agent,
            &self.request,
            deadline,
            turn_timeout,
        )
    }

    /// Commits a finished loop: the turn's own messages, then everything the loop added.
    async fn commit_loop(self, done: tool_loop::Finished) -> Result<TurnOutcome, AgentError> {
        let PreparedTurn {
            lease,
            conversation_id,
            agent,
            mut new_messages,
            ..
        } = self;
        new_messages.extend(done.new_messages);
        lease.commit_as(new_messages, Some(&agent.name)).await?;
        Ok(TurnOutcome {
            conversation_id,
            response: done.response,
            tokens_used: done.tokens_used,
            steps: Some(done.steps),
            tool_calls: done
                .calls
                .iter()
                .map(|c| ToolCallView::call(&c.call).with_outcome(&c.outcome))
                .collect(),
        })
    }
}

/// Runs one non-streamed turn. On any error the conversation is left exactly as it was.
#[instrument(skip_all, fields(conversation_id))]
pub async fn run_turn(
    llm: &dyn LlmProvider,
    store: &dyn ConversationStore,
    agents: &Agents,
    owner: &str,
    turn: ChatTurn,
) -> Result<TurnOutcome, AgentError> {
    let limit = turn.turn_timeout;
    let deadline = Instant::now() + limit;
    let mut prepared = prepare(store, agents, owner, turn).await?;
    tracing::Span::current().record("conversation_id", prepared.conversation_id.as_str());
    if prepared.agent.has_tools() {
        let messages = prepared.take_messages();
        let drive = prepared.drive(llm, agents, deadline, limit);
        let mut events = driver::NoEvents;
        let run = drive.run(messages, None, &mut events);
        let done = tokio::time::timeout_at(deadline, run)
            .await
            .map_err(|_| LlmError::Timeout(limit))??;
        return prepared.commit_loop(done).await;
    }
    let call = llm.complete(std::mem::take(&mut prepared.request));
    let completion = tokio::time::timeout_at(deadline, call)
        .await
        .map_err(|_| LlmError::Timeout(limit))??;
    let tokens_used = tokens(completion.usage, &prepared, &completion.content);
    let PreparedTurn {
        lease,
        conversation_id,
        agent,
        mut new_messages,
        ..
    } = prepared;
    new_messages.push(Message::new("assistant", completion.content.clone()));
    lease.commit_as(new_messages, Some(&agent.name)).await?;
    Ok(TurnOutcome {
        conversation_id,
        response: completion.content,
        tokens_used,
        steps: None,
        tool_calls: Vec::new(),
    })
}

/// What a streamed turn yields.
#[derive(Debug, Clone)]
pub enum TurnEvent {
    /// A piece of the answer.
    Delta(String),
    /// The model called a tool (an agent's turn); its result follows.
    ToolCall(ToolCallView),
    /// A tool call's result or error, with its duration.
    ToolResult(ToolCallView),
    /// The answer is complete and saved.
    Done {
        conversation_id: String,
        tokens_used: u64,
        /// Model calls made, for a turn of an agent with tools.
        steps: Option<u32>,
    },
    /// The turn failed after it started; nothing was saved. The stream ends after this.
    Failed(AgentError),
}

/// What a streamed turn's client receives: each frame as its run's log holds it, with the
/// position after it.
#[derive(Debug)]
pub struct Sent {
    pub pos: u64,
    pub frame: runs::Frame,
}

pub type TurnStream = std::pin::Pin<Box<dyn futures::Stream<Item = Sent> + Send>>;

/// A streamed turn, started.
pub struct Started {
    pub conversation_id: String,
    pub run_id: String,
    pub events: TurnStream,
}

/// How many frames a streamed turn may run ahead of its client: enough that the model's pace
/// does not wait on each write, few enough that a client that stops reading stops the turn soon.
const FRAMES_AHEAD: usize = 8;

/// What the channel carries: a box, because tokio's channel allocates its slots 32 at a time
/// up front, and 32 boxes are 256 bytes a stream where 32 events were 1.3 KiB.
type Frame = Box<Sent>;

/// Starts a streamed turn. Errors before the model's first byte (unknown conversation, store,
/// the upstream refusing the call) are returned here; later ones arrive as [`TurnEvent::Failed`].
///
/// The turn then runs in a task of its own (spawned on `runner`, so that shutdown waits for it)
/// and feeds its events through a small bounded channel: its work does not depend on the
/// client polling it. It ends, dropping the upstream call and the conversation, when the
/// stream is dropped, when the client has not taken a frame for `frame_timeout` (unless the
/// turn goes on without its client: `keep_going`), or at `turn_timeout` (then
/// [`LlmError::Timeout`]). The answer is appended only when the turn completes, so a failed or
/// abandoned turn leaves the conversation as it was.
///
/// The turn is a run of `runs`: every frame is logged as it is sent, and `DELETE /runs/{id}` or
/// the end of the shutdown's grace stops it.
pub async fn stream_turn(
    llm: &Arc<dyn LlmProvider>,
    store: &dyn ConversationStore,
    runner: &TaskRunner,
    agents: &Arc<Agents>,
    owner: &str,
    turn: ChatTurn,
    runs: &Runs,
) -> Result<Started, AgentError> {
    let limits = Deadlines {
        turn: Instant::now() + turn.turn_timeout,
        turn_timeout: turn.turn_timeout,
        frame: turn.frame_timeout,
    };
    let keep_going = turn.keep_going;
    let mut prepared = prepare(store, agents, owner, turn).await?;
    let conversation_id = prepared.conversation_id.clone();
    let (tx, rx) = mpsc::channel(FRAMES_AHEAD);
    // The first model call is made here, so that its refusal is an HTTP error; an agent with
    // tools keeps the messages for its loop.
    let (messages, request) = if prepared.agent.has_tools() {
        let messages = prepared.take_messages();
        let request = prepared
            .drive(llm.as_ref(), agents, limits.turn, limits.turn_timeout)
            .first_request(&messages);
        (Some(messages), request)
    } else {
        (None, std::mem::take(&mut prepared.request))
    };
    let upstream = tokio::time::timeout_at(limits.turn, llm.stream(request))
        .await
        .map_err(|_| LlmError::Timeout(limits.turn_timeout))??;
    let run = runs.start(NewRun {
        owner: owner.to_owned(),
        conversation_id: Some(conversation_id.clone()),
        agent: prepared.agent.name.clone(),
        task_id: None,
    });
    let run_id = run.id().to_owned();
    let sink = Sink::new(tx, run, keep_going, limits);
    match messages {
        Some(messages) => {
            let (llm, agents) = (Arc::clone(llm), Arc::clone(agents));
            runner.spawn(async move {
                produce_loop(prepared, messages, upstream, &*llm, &agents, sink, limits).await;
            });
        }
        None => runner.spawn(produce(prepared, upstream, sink, limits)),
    }
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(|event| *event);
    Ok(Started {
        conversation_id,
        run_id,
        events: Box::pin(events),
    })
}

#[derive(Clone, Copy)]
struct Deadlines {
    turn: Instant,
    turn_timeout: Duration,
    frame: Duration,
}

/// Hands one frame to the client: false when it is gone, took no frame for the frame timeout,
/// or the turn's time is over.
async fn deliver(tx: &mpsc::Sender<Frame>, sent: Sent, limits: Deadlines) -> bool {
    match tx.try_reserve() {
        Ok(slot) => {
            slot.send(Box::new(sent));
            true
        }
        Err(mpsc::error::TrySendError::Closed(())) => false,
        // The client is behind: only now is the clock read, for its deadline.
        Err(mpsc::error::TrySendError::Full(())) => {
            let by = (Instant::now() + limits.frame).min(limits.turn);
            let send = tx.send(Box::new(sent));
            matches!(tokio::time::timeout_at(by, send).await, Ok(Ok(())))
        }
    }
}

/// Why a streamed turn stops before its end.
enum Halt {
    /// Its client left, and the turn does not go on without it.
    ClientLeft,
    /// Its run was stopped (`DELETE /runs/{id}`, a lost lease, shutdown).
    Stopped,
}

/// Where a streamed turn's events go: its client (while it is there) and its run's log.
struct Sink {
    tx: Option<mpsc::Sender<Frame>>,
    run: RunWriter,
    /// `on_disconnect: "continue"`.
    keep_going: bool,
    limits: Deadlines,
}

impl Sink {
    fn new(tx: mpsc::Sender<Frame>, run: RunWriter, keep_going: bool, limits: Deadlines) -> Self {
        Self {
            tx: Some(tx),
            run,
            keep_going,
            limits,
        }
    }

    /// Sends one event; false when the turn must end (its client left, under `cancel`: then
    /// its run is ended `cancelled`).
    async fn send(&mut self, event: TurnEvent) -> bool {
        let frame = runs::frames::render(event, None);
        let pos = self.run.push(frame.clone());
        self.deliver(Sent { pos, frame }).await
    }

    async fn deliver(&mut self, sent: Sent) -> bool {
        let Some(tx) = &self.tx else {
            return true;
        };
        if deliver(tx, sent, self.limits).await {
            return true;
        }
        self.tx = None;
        if !self.keep_going {
            self.client_left();
        }
        self.keep_going
    }

    /// The turn's last event (done, or failed): the run ends with it.
    async fn finish(&mut self, event: TurnEvent) {
        let (status, tokens) = match &event {
            TurnEvent::Done { tokens_used, .. } => (RunStatus::Completed, *tokens_used),
            _ => (RunStatus::Failed, 0),
        };
        let frame = runs::frames::render(event, Some(self.run.id()));
        let pos = self.run.end(status, frame.clone(), tokens);
        self.deliver(Sent { pos, frame }).await;
    }

    /// The client left and the turn does not go on: its run is cancelled.
    fn client_left(&self) {
        let frame = runs::frames::error_detail("the client left; the run was cancelled");
        self.run.end(RunStatus::Cancelled, frame, 0);
    }

    /// Ends the turn as `halt` says.
    async fn halted(&mut self, halt: Halt) {
        match halt {
            Halt::ClientLeft => self.client_left(),
            Halt::Stopped => {
                let (pos, frame) = self.run.end_stopped();
                if let Some(tx) = &self.tx {
                    deliver(tx, Sent { pos, frame }, self.limits).await;
                }
            }
        }
    }

    /// Resolves when the turn must stop: its client left (unless it goes on without it), or its
    /// run was stopped. Made once per turn: it holds what it waits on.
    fn halt(&self) -> impl std::future::Future<Output = Halt> + Send + 'static {
        let gone = self.tx.clone().filter(|_| !self.keep_going);
        let stop = self.run.stopped();
        async move {
            let gone = async {
                match gone {
                    Some(tx) => tx.closed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = stop => Halt::Stopped,
                () = gone => Halt::ClientLeft,
            }
        }
    }
}

/// The streamed turn's own task: reads the upstream, hands each piece to the client (and the
/// run's log), and commits the answer at the end.
async fn produce(
    mut prepared: PreparedTurn,
    mut upstream: ChunkStream,
    mut sink: Sink,
    limits: Deadlines,
) {
    let mut answer = String::new();
    let mut usage = None;
    // Made once: a timer or a waiter registered per chunk would cost every stream.
    let halt = sink.halt();
    let over = tokio::time::sleep_until(limits.turn);
    tokio::pin!(halt, over);
    loop {
        let next = tokio::select! {
            biased;
            // The client left, or the run was stopped: the turn is cancelled (the upstream
            // call and the lease drop).
            why = &mut halt => return sink.halted(why).await,
            () = &mut over => {
                let timeout = LlmError::Timeout(limits.turn_timeout);
                return sink.finish(TurnEvent::Failed(timeout.into())).await;
            }
            next = upstream.next() => next,
        };
        match next {
            Some(Ok(ChatChunk {
                delta, usage: u, ..
            })) => {
                usage = u.or(usage);
                if !delta.is_empty() {
                    answer.push_str(&delta);
                    if !sink.send(TurnEvent::Delta(delta)).await {
                        return;
                    }
                }
            }
            Some(Err(e)) => return sink.finish(TurnEvent::Failed(e.into())).await,
            None => {
                let tokens_used = tokens(usage, &prepared, &answer);
                prepared
                    .new_messages
                    .push(Message::new("assistant", std::mem::take(&mut answer)));
                let PreparedTurn {
                    lease,
                    conversation_id,
                    agent,
                    new_messages,
                    ..
                } = prepared;
                let event = match lease.commit_as(new_messages, Some(&agent.name)).await {
                    Ok(()) => TurnEvent::Done {
                        conversation_id,
                        tokens_used,
                        steps: None,
                    },
                    Err(e) => TurnEvent::Failed(e.into()),
                };
                return sink.finish(event).await;
            }
        }
    }
}

#[async_trait::async_trait]
impl driver::Events for Sink {
    fn streamed(&self) -> bool {
        true
    }
    async fn send(&mut self, event: TurnEvent) -> bool {
        Sink::send(self, event).await
    }
}

/// The streamed turn's own task for an agent with tools: drives the loop, streaming every
/// step's content and each tool call and result, and commits the whole turn at the end.
async fn produce_loop(
    prepared: PreparedTurn,
    messages: Vec<Message>,
    first: ChunkStream,
    llm: &dyn LlmProvider,
    agents: &Agents,
    mut sink: Sink,
    limits: Deadlines,
) {
    let halt = sink.halt();
    let outcome = {
        let drive = prepared.drive(llm, agents, limits.turn, limits.turn_timeout);
        let run = drive.run(messages, Some(first), &mut sink);
        tokio::select! {
            biased;
            // The client left, or the run was stopped: the turn is cancelled (model call, tool
            // calls, the lease).
            why = halt => Err(why),
            () = tokio::time::sleep_until(limits.turn) => Ok(Err(LlmError::Timeout(limits.turn_timeout).into())),
            done = run => Ok(done),
        }
    };
    let event = match outcome {
        Err(why) => return sink.halted(why).await,
        // The client is gone (its run ended `cancelled` as it left).
        Ok(Err(AgentError::Gone)) => return,
        Ok(Err(e)) => TurnEvent::Failed(e),
        Ok(Ok(done)) => match prepared.commit_loop(done).await {
            Ok(out) => TurnEvent::Done {
                conversation_id: out.conversation_id,
                tokens_used: out.tokens_used,
                steps: out.steps,
            },
            Err(e) => TurnEvent::Failed(e),
        },
    };
    sink.finish(event).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(turns: &[&str]) -> Vec<Message> {
        let mut m = vec![Message::new("system", "s")];
        for t in turns {
            m.push(Message::new("user", *t));
            m.push(Message::new("assistant", *t));
        }
        m
    }

    #[test]
    fn trimming_drops_whole_turns_oldest_first_and_keeps_system_and_last() {
        let big = "x".repeat(400); // 100 tokens, +4 per message
        let mut m = conv(&[&big, &big, &big]);
        m.push(Message::new("user", "now"));
        // Each old turn costs 208; system 5, last 5: a budget of 430 keeps two old turns.
        trim_to_tokens(&mut m, 430);
        assert_eq!(m[0].role, "system");
        assert_eq!(m.len(), 1 + 4 + 1);
        assert_eq!(m[1].role, "user");
        assert_eq!(m.last().unwrap().content, "now");
        // Nothing fits: only the system message and the last turn stay.
        trim_to_tokens(&mut m, 1);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].content, "now");
    }

    #[test]
    fn a_turn_with_tool_messages_goes_whole() {
        let mut m = vec![
            Message::new("system", "s"),
            Message::new("user", "x".repeat(400)),
            Message::new("assistant", ""),
            Message::new("tool", "result"),
            Message::new("assistant", "answer"),
            Message::new("user", "next"),
        ];
        trim_to_tokens(&mut m, 50);
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user"]);
    }

    #[test]
    fn a_history_that_fits_is_untouched() {
        let mut m = conv(&["a", "b"]);
        let before = m.clone();
        trim_to_tokens(&mut m, 1000);
        assert_eq!(m, before);
    }
}
