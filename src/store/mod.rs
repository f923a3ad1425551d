//! Storage behind async traits, so that another backend (Redis) can be added without touching a
//! handler. The default is in memory ([`memory`]). Every method takes the caller's owner name:
//! a record owned by someone else behaves exactly like a missing one.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::llm::Message;

pub use memory::{MemoryConversationStore, MemoryTaskStore};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A configured limit would be exceeded.
    #[error("storage full: {0}")]
    Full(String),
    /// The caller's own quota is full (its conversations are all busy, or its tasks all
    /// unfinished): 429, not the server's problem.
    #[error("{0}")]
    Quota(String),
}

/// A conversation as `GET /conversation/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: String,
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
    /// Appends the turn's messages and ends the lease.
    async fn commit(self: Box<Self>, new_messages: Vec<Message>) -> Result<(), StoreError>;
}

#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Waits for the conversation's turn and returns it, creating the conversation if `id` is
    /// unknown. `None` when the id belongs to another owner. A conversation created here becomes
    /// visible only when its first turn commits.
    async fn begin_turn(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<Box<dyn TurnLease>>, StoreError>;
    async fn get(&self, owner: &str, id: &str) -> Result<Option<Conversation>, StoreError>;
    /// The owner's conversations, newest first, at most `limit`.
    async fn list(&self, owner: &str, limit: usize)
    -> Result<Vec<ConversationSummary>, StoreError>;
    /// True when something was deleted.
    async fn delete(&self, owner: &str, id: &str) -> Result<bool, StoreError>;
    /// How many conversations exist (all owners), for `/health`.
    async fn count(&self) -> Result<usize, StoreError>;
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
    ) -> Result<Option<Task>, StoreError>;
    /// Drops finished tasks older than the TTL; called periodically.
    async fn sweep(&self) {}
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
