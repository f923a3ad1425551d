//! Redis implementations of the store traits, so that many replicas act as one server.
//!
//! - [`conversations`], [`tasks`], [`limiter`] (rate-limit buckets), [`streams`] (open streams
//!   per key), [`queue`] (the shared task queue) and [`runs`] (runs' event logs), on one [`Redis`] handle; their Lua scripts
//!   are in `scripts/`.
//!
//! Keys (all under `STORE_PREFIX`; key names and conversation ids hold no `:`):
//! - `conv:{owner}:{id}` (hash: owner, created_at, updated_at), `conv:{owner}:{id}:msgs` (list
//!   of JSON messages), `conv:{owner}:{id}:lock` (the turn lease), `owner:{owner}:convs`
//!   (sorted set of ids by creation), `convs` (sorted set of `owner:id` by last use) and
//!   `owners` (the keys that hold conversations);
//! - `task:{id}` (the task as JSON), `owner:{owner}:tasks` and `tasks` (sorted sets);
//! - `tasks:queue` (a stream with the consumer group `workers`: the shared task queue) and
//!   the pub/sub channel `tasks:cancel`;
//! - `rl:{bucket}` (the GCRA theoretical arrival time of a rate-limit bucket);
//! - `streams:{owner}` (sorted set of a key's open streams, by the end of their lease);
//! - `run:{id}` (hash) and `run:{id}:log` (stream): a run's event log ([`runs`]);
//! - `resp:{id}` (hash: owner, data) and `owner:{owner}:resps` (sorted set): stored
//!   `/v1/responses` responses ([`responses`]).
//!
//! Turns on a conversation are serialized across replicas by a lease lock with a random token,
//! renewed while the turn runs; the commit is a Lua script that checks the token (fencing), so
//! a turn whose lease was lost can never write. Task status changes are compare-and-set scripts,
//! and rate limits are GCRA inside one script: nothing is read and then written from here.
//!
//! The connection is a `ConnectionManager` created lazily, so the server starts while Redis is
//! down and reconnects by itself; every call has a response timeout and fails as
//! [`StoreError::Unavailable`] (503) meanwhile.

pub mod conversations;
pub mod limiter;
pub mod queue;
pub mod responses;
pub mod runs;
pub mod streams;
pub mod tasks;

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::task::JoinHandle;

pub use conversations::RedisConversationStore;
pub use limiter::RedisRateLimiter;
pub use queue::RedisQueue;
pub use responses::RedisResponseStore;
pub use runs::{RedisRuns, RemoteRun};
pub use streams::RedisStreams;
pub use tasks::RedisTaskStore;

use super::{StoreError, StoreLimits};

/// How long a turn lease lives without renewal; it is renewed every third of that.
const TURN_LEASE: Duration = Duration::from_secs(15);

fn unavailable(e: redis::RedisError) -> StoreError {
    tracing::debug!(error = %e, "redis call failed");
    StoreError::Unavailable(format!("redis: {}", describe(&e)))
}

/// Spawns a short, self-ending job of the store (lease renewal and release), which must live
/// and die with a lease rather than with the server's task runner.
#[expect(
    clippy::disallowed_methods,
    reason = "lease renewal and release belong to the lease, and end with it"
)]
fn spawn_detached<F>(fut: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::task::spawn(fut)
}

/// The error's text, cut before any `redis://` address it quotes (which may carry a password).
fn describe(e: &redis::RedisError) -> String {
    let text = e.to_string();
    match text.find("redis://").or_else(|| text.find("rediss://")) {
        Some(i) => format!("{:?}: {}", e.kind(), &text[..i]),
        None => text,
    }
}

/// Settings of the Redis store.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    /// The same bounds as the memory store's (all but its bytes), kept exactly across replicas.
    pub limits: StoreLimits,
}

/// One handle to Redis, shared by the conversation, task and rate-limit stores and the queue.
#[derive(Clone)]
pub struct Redis {
    pub conn: ConnectionManager,
    pub client: redis::Client,
    pub prefix: String,
}

impl Redis {
    pub fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("bad STORE url: {:?}", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)?;
        Ok(Self {
            conn,
            client,
            prefix: prefix.to_owned(),
        })
    }

    pub fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        k.push_str(&parts.join(":"));
        k
    }

    /// The newest `limit` ids of an owner's index (`owner:{name}:{kind}`), and the index key.
    async fn newest(
        &self,
        owner: &str,
        kind: &str,
        limit: usize,
    ) -> Result<(String, Vec<String>), StoreError> {
        let index = self.key(&["owner", owner, kind]);
        let mut c = self.conn.clone();
        let ids: Vec<String> = c
            .zrevrange(&index, 0, limit as isize - 1)
            .await
            .map_err(unavailable)?;
        Ok((index, ids))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// Everything the app needs from one Redis.
pub struct RedisStores {
    pub conversations: Arc<RedisConversationStore>,
    pub tasks: Arc<RedisTaskStore>,
    pub limiter: Arc<RedisRateLimiter>,
    pub streams: Arc<RedisStreams>,
    pub queue: Arc<RedisQueue>,
    pub runs: Arc<RedisRuns>,
    pub responses: Arc<RedisResponseStore>,
}

impl RedisStores {
    pub fn connect(
        settings: RedisSettings,
        task_lease: Duration,
        run_ttl: Duration,
        max_responses_per_key: usize,
    ) -> Result<Self, StoreError> {
        let redis = Redis::connect(&settings.url, &settings.prefix)?;
        Ok(Self {
            responses: Arc::new(RedisResponseStore::new(
                redis.clone(),
                max_responses_per_key,
            )),
            runs: Arc::new(RedisRuns::new(redis.clone(), task_lease, run_ttl)),
            conversations: Arc::new(RedisConversationStore::new(redis.clone(), settings.clone())),
            tasks: Arc::new(RedisTaskStore::new(redis.clone(), settings.limits.clone())),
            limiter: Arc::new(RedisRateLimiter::new(redis.clone())),
            streams: Arc::new(RedisStreams::new(redis.clone())),
            queue: Arc::new(RedisQueue::new(redis, task_lease)?),
        })
    }
}
