//! The domain: run one agent turn on a conversation, and run background tasks ([`runner`]).
//!
//! Functions here take what they need (`&dyn LlmProvider`, `&dyn ConversationStore`) and know
//! nothing about axum, so that they can be tested without HTTP.

pub mod runner;

use futures::StreamExt;
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
        .begin_turn(owner, &conversation_id)
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
    let mut prepared = prepare(store, owner, turn).await?;
    tracing::Span::current().record("conversation_id", prepared.conversation_id.as_str());
    let completion = llm.complete(std::mem::take(&mut prepared.request)).await?;
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

/// Starts a streamed turn. Errors before the model's first byte (unknown conversation, store,
/// the upstream refusing the call) are returned here; later ones arrive as [`TurnEvent::Failed`].
/// The turn holds the conversation until the stream ends; the answer is appended only when the
/// stream completes, so a failed or abandoned (dropped) stream leaves the conversation as it was.
pub async fn stream_turn(
    llm: &dyn LlmProvider,
    store: &dyn ConversationStore,
    owner: &str,
    turn: ChatTurn,
) -> Result<(String, TurnStream), AgentError> {
    let mut prepared = prepare(store, owner, turn).await?;
    let request = std::mem::take(&mut prepared.request);
    let upstream = llm.stream(request).await?;
    let id = prepared.conversation_id.clone();
    struct St {
        prepared: Option<PreparedTurn>,
        upstream: ChunkStream,
        answer: String,
        usage: Option<Usage>,
    }
    let st = St {
        prepared: Some(prepared),
        upstream,
        answer: String::new(),
        usage: None,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            // `prepared` is taken when the stream has ended (done or failed).
            st.prepared.as_ref()?;
            match st.upstream.next().await {
                Some(Ok(ChatChunk { delta, usage, .. })) => {
                    st.usage = usage.or(st.usage);
                    if !delta.is_empty() {
                        st.answer.push_str(&delta);
                        return Some((TurnEvent::Delta(delta), st));
                    }
                }
                Some(Err(e)) => {
                    st.prepared = None;
                    return Some((TurnEvent::Failed(e.into()), st));
                }
                None => {
                    let mut prepared = st.prepared.take()?;
                    let tokens_used = tokens(st.usage, &prepared, &st.answer);
                    prepared
                        .new_messages
                        .push(Message::new("assistant", std::mem::take(&mut st.answer)));
                    let event = match prepared.lease.commit(prepared.new_messages).await {
                        Ok(()) => TurnEvent::Done {
                            conversation_id: prepared.conversation_id,
                            tokens_used,
                        },
                        Err(e) => TurnEvent::Failed(e.into()),
                    };
                    return Some((event, st));
                }
            }
        }
    });
    Ok((id, Box::pin(stream)))
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
