//! Storage behind async traits, so that another backend (Redis) can be added without touching a
//! handler. The default is in memory ([`memory`]). Every method takes the caller's owner name:
//! a record owned by someone else behaves exactly like a missing one.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use futures::stream::BoxStream;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::llm::Message;

pub use memory::{MemoryConversationStore, MemoryQueue, MemoryResponseStore, MemoryTaskStore};

/// The bounds every store keeps (memory and Redis alike; `max_bytes` is the memory store's).
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// `MAX_CONVERSATIONS`: conversations held in all.
    pub max_conversations: usize,
    /// `MAX_CONVERSATIONS_PER_KEY`: a key at it evicts its own oldest idle conversation.
    pub max_conversations_per_key: usize,
    /// `MAX_MESSAGES_PER_CONVERSATION`: oldest turns are dropped past it.
    pub max_messages: usize,
    pub conversation_ttl: Duration,
    /// `MAX_TASKS`: tasks held in all.
    pub max_tasks: usize,
    /// `MAX_TASKS_PER_KEY`: a key at it drops its oldest finished task (429 if none is).
    pub max_tasks_per_key: usize,
    pub task_ttl: Duration,
    /// `MAX_STORE_MIB`, in bytes (memory store).
    pub max_bytes: usize,
}

impl StoreLimits {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            max_conversations: c.max_conversations,
            max_conversations_per_key: c.max_conversations_per_key,
            max_messages: c.max_messages_per_conversation,
            conversation_ttl: c.conversation_ttl,
            max_tasks: c.max_tasks,
            max_tasks_per_key: c.max_tasks_per_key,
            task_ttl: c.task_ttl,
            max_bytes: c.max_store_bytes,
        }
    }

    /// Generous limits with the given conversation bounds and TTL (tests).
    pub fn new(max_conversations: usize, max_messages: usize, ttl: Duration) -> Self {
        Self {
            max_conversations,
            max_conversations_per_key: max_conversations,
            max_messages,
            conversation_ttl: ttl,
            max_tasks: 10_000,
            max_tasks_per_key: 10_000,
            task_ttl: ttl,
            max_bytes: 512 << 20,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A configured limit would be exceeded.
    #[error("storage full: {0}")]
    Full(String),
    /// The conversation is busy with another turn, longer than the turn may wait: 409.
    #[error("{0}")]
    Busy(String),
    /// The caller's own quota is full (its conversations are all busy, or its tasks all
    /// unfinished): 429, not the server's problem.
    #[error("{0}")]
    Quota(String),
    /// The conversation was deleted while a turn ran on it; the turn's reply was not kept: 404.
    #[error("{0}")]
    Deleted(String),
}

impl StoreError {
    /// The answer to a turn that waited its `TURN_WAIT_SECS` for a busy conversation.
    pub fn busy() -> Self {
        Self::Busy("the conversation is busy with another turn; retry later".into())
    }

    /// A new conversation of a key whose `max` conversations are all busy with a turn.
    pub fn key_busy(max: usize) -> Self {
        Self::Quota(format!(
            "this key holds its maximum of {max} conversations, all busy with a turn"
        ))
    }

    /// A new conversation when the store's `max` conversations are all in use.
    pub fn store_busy(max: usize) -> Self {
        Self::Full(format!(
            "the server holds its maximum of {max} conversations, all in use"
        ))
    }

    /// The answer to a turn whose conversation was deleted while it ran.
    pub fn deleted() -> Self {
        Self::Deleted(
            "the conversation was deleted while this turn ran; the reply was not saved".into(),
        )
    }
}

/// A conversation as `GET /conversation/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: String,
    /// The agent of its first turn (`None`: made before agents existed, the default agent).
    pub agent: Option<String>,
    pub messages: Vec<Message>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One line of `GET /conversations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub id: String,
    pub message_count: usize,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The right to run one turn on a conversation. While it lives, no other turn on the same
/// conversation starts; dropping it without [`TurnLease::commit`] leaves the conversation
/// exactly as it was.
#[async_trait]
pub trait TurnLease: Send + Sync {
    /// The messages so far (empty for a new conversation).
    fn history(&self) -> &[Message];
    /// The conversation's agent, as its first turn recorded it (`None` for a new one, or one
    /// made before agents existed).
    fn agent(&self) -> Option<&str> {
        None
    }
    /// Appends the turn's messages and ends the lease; a new conversation records `agent` as
    /// its own (an existing one keeps the one it has).
    async fn commit_as(
        self: Box<Self>,
        new_messages: Vec<Message>,
        agent: Option<&str>,
    ) -> Result<(), StoreError>;
    /// [`TurnLease::commit_as`] without an agent.
    async fn commit(self: Box<Self>, new_messages: Vec<Message>) -> Result<(), StoreError> {
        self.commit_as(new_messages, None).await
    }
}

#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Waits for the conversation's turn (at most `wait`, then [`StoreError::Busy`]; zero
    /// refuses at once) and returns it, creating the conversation if `id` is unknown to this
    /// owner. A conversation created here becomes visible, and counts, only when its first turn
    /// commits. A `DELETE` while the turn runs wins: its commit is [`StoreError::Deleted`].
    async fn begin_turn(
        &self,
        owner: &str,
        id: &str,
        wait: Duration,
    ) -> Result<Option<Box<dyn TurnLease>>, StoreError>;
    async fn get(&self, owner: &str, id: &str) -> Result<Option<Conversation>, StoreError>;
    /// The owner's conversations, newest first, at most `limit`.
    async fn list(&self, owner: &str, limit: usize)
    -> Result<Vec<ConversationSummary>, StoreError>;
    /// True when something was deleted.
    async fn delete(&self, owner: &str, id: &str) -> Result<bool, StoreError>;
    /// How many conversations exist (all owners).
    async fn count(&self) -> Result<usize, StoreError>;
    /// The count without waiting (for `/health`, which never waits on the store): the memory
    /// store's own, or a recent one a remote store remembers; `None` when it has none.
    fn count_now(&self) -> Option<usize> {
        None
    }
    /// Drops what has expired; called periodically.
    async fn sweep(&self) {}
    /// Whether the backend answers (for `/ready`).
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: String,
    pub owner: String,
    pub prompt: String,
    pub task_type: String,
    pub model: String,
    pub status: TaskStatus,
    pub result: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The agent it runs as (`None`: the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The tool calls of its run, as the JSON text of `[{id, name, arguments, result|error}]`
    /// (text, so that the Redis scripts' cjson never re-encodes it: it would turn `[]` into `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<String>,
    /// Its run (set when it starts running; a task taken over by another replica gets a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// What a status change writes besides the status; `None` fields are left as they are.
#[derive(Debug, Clone, Default)]
pub struct TaskChange {
    pub result: Option<String>,
    /// The run's tool calls (JSON text).
    pub tool_calls: Option<String>,
    pub run_id: Option<String>,
}

#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    async fn insert(&self, task: Task) -> Result<(), StoreError>;
    /// `owner: None` reads any task (the runner's view).
    async fn get(&self, owner: Option<&str>, id: &str) -> Result<Option<Task>, StoreError>;
    /// The owner's tasks, newest first, at most `limit`.
    async fn list(&self, owner: &str, limit: usize) -> Result<Vec<Task>, StoreError>;
    /// Moves a task to `to` only if its status is one of `from` (compare-and-set, so that a
    /// cancelled task can never become completed). Returns the task after the change, or `None`
    /// when nothing changed.
    async fn transition(
        &self,
        id: &str,
        from: &[TaskStatus],
        to: TaskStatus,
        result: Option<String>,
    ) -> Result<Option<Task>, StoreError> {
        let change = TaskChange {
            result,
            ..TaskChange::default()
        };
        self.transition_with(id, from, to, change).await
    }
    /// [`TaskStore::transition`] that also records its run and the run's tool calls.
    async fn transition_with(
        &self,
        id: &str,
        from: &[TaskStatus],
        to: TaskStatus,
        change: TaskChange,
    ) -> Result<Option<Task>, StoreError>;
    /// Drops finished tasks older than the TTL; called periodically.
    async fn sweep(&self) {}
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One entry of the task queue: its id in the queue and the task it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub entry: String,
    pub task_id: String,
}

/// The task queue beside the stores (memory for one process, Redis for replicas). An entry is
/// leased to the runner that read it, renewed while that runner works on it, acknowledged
/// ([`TaskQueue::done`]) once the task's final state is written, and taken over by another
/// runner ([`TaskQueue::claim_stale`]) when its lease lapses. A runner whose entry was taken
/// over cannot renew it any more: one runner at a time.
#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// Entries not yet taken by any runner.
    async fn waiting(&self) -> Result<usize, StoreError>;
    /// The same without waiting, where the queue knows it at once (for `/metrics`).
    fn waiting_now(&self) -> Option<usize> {
        None
    }
    async fn push(&self, task_id: &str) -> Result<(), StoreError>;
    /// Waits up to `block` for an entry no runner has taken, and takes it.
    async fn read(&self, block: Duration) -> Result<Option<QueueEntry>, StoreError>;
    /// Takes over one entry whose lease lapsed (its runner stopped renewing it).
    async fn claim_stale(&self) -> Result<Option<QueueEntry>, StoreError>;
    /// Renews the lease on `entry`; false when it is no longer this runner's.
    async fn renew(&self, entry: &str) -> Result<bool, StoreError>;
    /// Gives an unfinished entry up (shutdown): the next [`TaskQueue::claim_stale`] anywhere
    /// takes it at once. False when it was no longer this runner's.
    async fn hand_back(&self, entry: &str) -> Result<bool, StoreError>;
    /// Acknowledges an entry whose task's final state is written.
    async fn done(&self, entry: &str) -> Result<(), StoreError>;
    /// Tells every runner (on every replica) that a task was cancelled.
    async fn publish_cancel(&self, task_id: &str) -> Result<(), StoreError>;
    /// The cancellations published anywhere, as they come; it ends when the channel is lost.
    async fn cancellations(&self) -> Result<BoxStream<'static, String>, StoreError>;
    /// How long an entry stays leased without renewal.
    fn lease(&self) -> Duration;
    /// Whether other processes take from this queue too (then a task stopped by shutdown is
    /// handed back rather than failed).
    fn shared(&self) -> bool {
        false
    }
}

/// A stored `/v1/responses` response (API.md, "OpenAI Responses API"): the response object as
/// answered, what it was asked, and what a response that names it as `previous_response_id`
/// reads first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub owner: String,
    /// The response object (`id`, `status`, `output`, `usage`, ...), as `GET` answers it.
    pub response: crate::responses::object::ResponseObject,
    /// This request's input items, each with an `id` (`GET .../input_items`).
    pub input: Vec<serde_json::Value>,
    /// The items before them: the previous responses' inputs and outputs, oldest first.
    pub context: Vec<serde_json::Value>,
    pub background: bool,
    /// The run that produces it (streamed or background), for its events and cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl StoredResponse {
    pub fn id(&self) -> &str {
        &self.response.id
    }

    pub fn status(&self) -> &str {
        self.response.status.as_str()
    }

    /// Ended: completed, failed, cancelled or incomplete.
    pub fn ended(&self) -> bool {
        self.response.status.ended()
    }
}

/// Stored responses, per key, each kept `ttl` from its last write (its completion, for one
/// that ran); a key at its quota loses its own oldest first.
#[async_trait]
pub trait ResponseStore: Send + Sync + 'static {
    /// Writes `r` (a new one, or a later state of one). `replace_only`: only if it is still
    /// held (a response deleted while it ran stays deleted). False when nothing was written.
    async fn put(
        &self,
        r: &StoredResponse,
        ttl: Duration,
        replace_only: bool,
    ) -> Result<bool, StoreError>;
    async fn get(&self, owner: &str, id: &str) -> Result<Option<StoredResponse>, StoreError>;
    async fn delete(&self, owner: &str, id: &str) -> Result<bool, StoreError>;
    /// Drops expired responses; called periodically.
    async fn sweep(&self) {}
}
