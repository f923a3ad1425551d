//! The domain: run one agent turn on a conversation, and run background tasks ([`runner`]);
//! [`tool_loop`] is the agent loop as a pure state machine.
//!
//! Functions here take what they need (`&dyn LlmProvider`, `&dyn ConversationStore`) and know
//! nothing about axum, so that they can be tested without HTTP.

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
use crate::store::{ConversationStore, StoreError, TurnLease};

pub use runner::TaskRunner;

/// A validated chat turn: every field has its final value.
#[derive(Debug, Clone)]
pub struct ChatTurn {
    pub conversation_id: Option<String>,
    pub message: String,
    pub system_prompt: String,
    pub temperature: f64,
    pub max_tokens: u32,
    pub model: String,
    /// The estimated tokens of history sent upstream (`MAX_HISTORY_TOKENS`).
    pub max_history_tokens: usize,
    /// How long to wait for a conversation busy with another turn: `TURN_WAIT_SECS`, or zero
    /// for `if_busy: "reject"`.
    pub turn_wait: Duration,
    /// `TURN_TIMEOUT_SECS`: the whole turn, every model call in it.
    pub turn_timeout: Duration,
    /// `STREAM_WRITE_TIMEOUT_SECS`: how long a streamed turn waits for its client to take a
    /// frame before it takes the client for gone and ends.
    pub frame_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TurnOutcome {
    pub conversation_id: String,
    pub response: String,
    pub tokens_used: u64,
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
}

/// A turn whose lease is held and whose request is built, ready to call the model.
struct PreparedTurn {
    lease: Box<dyn TurnLease>,
    conversation_id: String,
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
    let cost = |m: &Message| estimate_tokens(&m.content) + 4;
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

async fn prepare(
    store: &dyn ConversationStore,
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
    let mut new_messages = Vec::with_capacity(2);
    if lease.history().is_empty() {
        new_messages.push(Message::new("system", turn.system_prompt));
    }
    new_messages.push(Message::new("user", turn.message));
    let mut messages = Vec::with_capacity(lease.history().len() + new_messages.len());
    messages.extend_from_slice(lease.history());
    messages.extend_from_slice(&new_messages);
    trim_to_tokens(&mut messages, max_history_tokens);
    let request = ChatRequest::new(&turn.model, messages, turn.temperature, turn.max_tokens);
    Ok(PreparedTurn {
        lease,
        conversation_id,
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

/// Runs one non-streamed turn. On any error the conversation is left exactly as it was.
#[instrument(skip_all, fields(conversation_id))]
pub async fn run_turn(
    llm: &dyn LlmProvider,
    store: &dyn ConversationStore,
    owner: &str,
    turn: ChatTurn,
) -> Result<TurnOutcome, AgentError> {
    let limit = turn.turn_timeout;
    let deadline = Instant::now() + limit;
    let mut prepared = prepare(store, owner, turn).await?;
    tracing::Span::current().record("conversation_id", prepared.conversation_id.as_str());
    let call = llm.complete(std::mem::take(&mut prepared.request));
    let completion = tokio::time::timeout_at(deadline, call)
        .await
        .map_err(|_| LlmError::Timeout(limit))??;
    let tokens_used = tokens(completion.usage, &prepared, &completion.content);
    let PreparedTurn {
        lease,
        conversation_id,
        mut new_messages,
        ..
    } = prepared;
    new_messages.push(Message::new("assistant", completion.content.clone()));
    lease.commit(new_messages).await?;
    Ok(TurnOutcome {
        conversation_id,
        response: completion.content,
        tokens_used,
    })
}

/// What a streamed turn yields.
#[derive(Debug, Clone)]
pub enum TurnEvent {
    /// A piece of the answer.
    Delta(String),
    /// The answer is complete and saved.
    Done {
        conversation_id: String,
        tokens_used: u64,
    },
    /// The turn failed after it started; nothing was saved. The stream ends after this.
    Failed(AgentError),
}

pub type TurnStream = std::pin::Pin<Box<dyn futures::Stream<Item = TurnEvent> + Send>>;

/// How many frames a streamed turn may run ahead of its client: enough that the model's pace
/// does not wait on each write, few enough that a client that stops reading stops the turn soon.
const FRAMES_AHEAD: usize = 8;

/// What the channel carries: a box, because tokio's channel allocates its slots 32 at a time
/// up front, and 32 boxes are 256 bytes a stream where 32 events were 1.3 KiB.
type Frame = Box<TurnEvent>;

/// Starts a streamed turn. Errors before the model's first byte (unknown conversation, store,
/// the upstream refusing the call) are returned here; later ones arrive as [`TurnEvent::Failed`].
///
/// The turn then runs in a task of its own (spawned on `runner`, so that shutdown waits for it)
/// and feeds its events through a small bounded channel: its work does not depend on the
/// client polling it. It ends, dropping the upstream call and the conversation, when the
/// stream is dropped, when the client has not taken a frame for `frame_timeout`, or at
/// `turn_timeout` (then [`LlmError::Timeout`]). The answer is appended only when the turn
/// completes, so a failed or abandoned turn leaves the conversation as it was.
pub async fn stream_turn(
    llm: &Arc<dyn LlmProvider>,
    store: &dyn ConversationStore,
    runner: &TaskRunner,
    owner: &str,
    turn: ChatTurn,
) -> Result<(String, TurnStream), AgentError> {
    let limits = Deadlines {
        turn: Instant::now() + turn.turn_timeout,
        turn_timeout: turn.turn_timeout,
        frame: turn.frame_timeout,
    };
    let mut prepared = prepare(store, owner, turn).await?;
    let request = std::mem::take(&mut prepared.request);
    let upstream = tokio::time::timeout_at(limits.turn, llm.stream(request))
        .await
        .map_err(|_| LlmError::Timeout(limits.turn_timeout))??;
    let id = prepared.conversation_id.clone();
    let (tx, rx) = mpsc::channel(FRAMES_AHEAD);
    runner.spawn(produce(prepared, upstream, tx, limits));
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(|event| *event);
    Ok((id, Box::pin(events)))
}

#[derive(Clone, Copy)]
struct Deadlines {
    turn: Instant,
    turn_timeout: Duration,
    frame: Duration,
}

/// Hands one event to the client: false when it is gone, took no frame for the frame timeout,
/// or the turn's time is over.
async fn deliver(tx: &mpsc::Sender<Frame>, event: TurnEvent, limits: Deadlines) -> bool {
    match tx.try_reserve() {
        Ok(slot) => {
            slot.send(Box::new(event));
            true
        }
        Err(mpsc::error::TrySendError::Closed(())) => false,
        // The client is behind: only now is the clock read, for its deadline.
        Err(mpsc::error::TrySendError::Full(())) => {
            let by = (Instant::now() + limits.frame).min(limits.turn);
            let send = tx.send(Box::new(event));
            matches!(tokio::time::timeout_at(by, send).await, Ok(Ok(())))
        }
    }
}

/// The streamed turn's own task: reads the upstream, hands each piece to the client, and
/// commits the answer at the end.
async fn produce(
    mut prepared: PreparedTurn,
    mut upstream: ChunkStream,
    tx: mpsc::Sender<Frame>,
    limits: Deadlines,
) {
    let mut answer = String::new();
    let mut usage = None;
    // Made once: a timer or a waiter registered per chunk would cost every stream.
    let gone = tx.closed();
    let over = tokio::time::sleep_until(limits.turn);
    tokio::pin!(gone, over);
    loop {
        let next = tokio::select! {
            biased;
            // The client left: the turn is cancelled (the upstream call and the lease drop).
            () = &mut gone => return,
            () = &mut over => {
                let timeout = LlmError::Timeout(limits.turn_timeout);
                let _ = tx.try_send(Box::new(TurnEvent::Failed(timeout.into())));
                return;
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
                    if !deliver(&tx, TurnEvent::Delta(delta), limits).await {
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                deliver(&tx, TurnEvent::Failed(e.into()), limits).await;
                return;
            }
            None => {
                let tokens_used = tokens(usage, &prepared, &answer);
                prepared
                    .new_messages
                    .push(Message::new("assistant", std::mem::take(&mut answer)));
                let PreparedTurn {
                    lease,
                    conversation_id,
                    new_messages,
                    ..
                } = prepared;
                let event = match lease.commit(new_messages).await {
                    Ok(()) => TurnEvent::Done {
                        conversation_id,
                        tokens_used,
                    },
                    Err(e) => TurnEvent::Failed(e.into()),
                };
                deliver(&tx, event, limits).await;
                return;
            }
        }
    }
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
