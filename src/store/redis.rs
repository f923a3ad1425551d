//! Redis implementations of the store traits, so that many replicas act as one server.
//!
//! Keys (all under `STORE_PREFIX`):
//! - `conv:{id}` (hash: owner, created_at, updated_at), `conv:{id}:msgs` (list of JSON
//!   messages), `conv:{id}:lock` (the turn lease), `owner:{name}:convs` and `convs` (sorted sets);
//! - `task:{id}` (the task as JSON), `owner:{name}:tasks` (sorted set);
//! - `tasks:queue` (a stream with the consumer group `workers`: the shared task queue) and
//!   the pub/sub channel `tasks:cancel`;
//! - `rl:{bucket}` (the GCRA theoretical arrival time of a rate-limit bucket).
//!
//! Turns on a conversation are serialized across replicas by a lease lock with a random token,
//! renewed while the turn runs; the commit is a Lua script that checks the token (fencing), so
//! a turn whose lease was lost can never write. Task status changes are compare-and-set scripts,
//! and rate limits are GCRA inside one script: nothing is read and then written from here.
//!
//! The connection is a `ConnectionManager` created lazily, so the server starts while Redis is
//! down and reconnects by itself; every call has a response timeout and fails as
//! [`StoreError::Unavailable`] (503) meanwhile.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::task::JoinHandle;

use super::{
    Conversation, ConversationStore, ConversationSummary, StoreError, Task, TaskStatus, TaskStore,
    TurnLease,
};
use crate::llm::Message;

/// How long a turn lease lives without renewal; it is renewed every third of that.
const TURN_LEASE: Duration = Duration::from_secs(15);

fn unavailable(e: redis::RedisError) -> StoreError {
    tracing::debug!(error = %e, "redis call failed");
    StoreError::Unavailable(format!("redis: {}", describe(&e)))
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
    pub max_messages: usize,
    pub conversation_ttl: Duration,
    pub task_ttl: Duration,
    /// How long a turn waits for another turn on the same conversation.
    pub turn_wait: Duration,
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

pub struct RedisConversationStore {
    redis: Redis,
    settings: RedisSettings,
}

impl RedisConversationStore {
    pub fn new(redis: Redis, settings: RedisSettings) -> Self {
        Self { redis, settings }
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v)
        .single()
        .unwrap_or_else(Utc::now)
}

static RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

static RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

/// KEYS: meta, msgs, lock, owner index, all; ARGV: token, owner, now, ttl, max, id, messages...
static COMMIT: &str = r#"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return redis.error_reply('LEASE_LOST') end
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[2] then return redis.error_reply('NOT_OWNER') end
if not owner then
  redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'created_at', ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[6])
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
for i = 7, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
local max = tonumber(ARGV[5])
local len = redis.call('LLEN', KEYS[2])
if len > max then
  local excess = len - max
  if excess % 2 == 1 then excess = excess + 1 end
  local first = redis.call('LINDEX', KEYS[2], 0)
  if string.find(first, '"role":"system"', 1, true) then
    local rest = redis.call('LRANGE', KEYS[2], excess + 1, -1)
    redis.call('DEL', KEYS[2])
    redis.call('RPUSH', KEYS[2], first)
    for _, m in ipairs(rest) do redis.call('RPUSH', KEYS[2], m) end
  else
    redis.call('LTRIM', KEYS[2], excess, -1)
  end
end
local ttl = tonumber(ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[4], ttl)
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[6])
return 1"#;

/// KEYS: meta, msgs, owner index, all; ARGV: owner, id
static DELETE: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return 1";

/// A held turn: renews its lease until committed or dropped; dropping it releases the lease.
struct RedisTurn {
    redis: Redis,
    id: String,
    owner: String,
    token: String,
    history: Vec<Message>,
    settings: RedisSettings,
    renewer: Option<JoinHandle<()>>,
    committed: bool,
}

impl Drop for RedisTurn {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if !self.committed {
            let redis = self.redis.clone();
            let lock = redis.key(&["conv", &self.id, "lock"]);
            let token = self.token.clone();
            // Drop cannot wait: release in the background (the lease expires anyway).
            spawn_detached(async move {
                let mut c = redis.conn.clone();
                let _: Result<i64, _> = Script::new(RELEASE)
                    .key(lock)
                    .arg(token)
                    .invoke_async(&mut c)
                    .await;
            });
        }
    }
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

#[async_trait]
impl TurnLease for RedisTurn {
    fn history(&self) -> &[Message] {
        &self.history
    }

    async fn commit(mut self: Box<Self>, new_messages: Vec<Message>) -> Result<(), StoreError> {
        let r = &self.redis;
        let now = ms(Utc::now()).to_string();
        let commit = Script::new(COMMIT);
        let mut script = commit.prepare_invoke();
        script
            .key(r.key(&["conv", &self.id]))
            .key(r.key(&["conv", &self.id, "msgs"]))
            .key(r.key(&["conv", &self.id, "lock"]))
            .key(r.key(&["owner", &self.owner, "convs"]))
            .key(r.key(&["convs"]))
            .arg(&self.token)
            .arg(&self.owner)
            .arg(&now)
            .arg(self.settings.conversation_ttl.as_millis() as u64)
            .arg(self.settings.max_messages)
            .arg(&self.id);
        for m in &new_messages {
            script.arg(serde_json::to_string(m).unwrap_or_default());
        }
        let mut c = r.conn.clone();
        let res: Result<i64, _> = script.invoke_async(&mut c).await;
        // Release the lease whatever happened: Drop does it when not committed.
        match res {
            Ok(_) => {
                self.committed = true;
                let _: Result<i64, _> = Script::new(RELEASE)
                    .key(r.key(&["conv", &self.id, "lock"]))
                    .arg(&self.token)
                    .invoke_async(&mut c)
                    .await;
                Ok(())
            }
            Err(e) if e.to_string().contains("LEASE_LOST") => Err(StoreError::Unavailable(
                "the conversation's turn lease was lost; the turn was not saved".into(),
            )),
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[async_trait]
impl ConversationStore for RedisConversationStore {
    async fn begin_turn(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<Box<dyn TurnLease>>, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let meta = r.key(&["conv", id]);
        // Refuse early, without waiting for the lease, when the id is someone else's.
        let existing: Option<String> = c.hget(&meta, "owner").await.map_err(unavailable)?;
        if existing.as_deref().is_some_and(|o| o != owner) {
            return Ok(None);
        }
        let lock = r.key(&["conv", id, "lock"]);
        let token = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + self.settings.turn_wait;
        let mut pause = Duration::from_millis(5);
        loop {
            let got: Option<String> = redis::cmd("SET")
                .arg(&lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(TURN_LEASE.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if got.is_some() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    "the conversation is busy with another turn; retry later".into(),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        let renewer = {
            let redis = r.clone();
            let (lock, token) = (lock.clone(), token.clone());
            spawn_detached(async move {
                let mut c = redis.conn.clone();
                loop {
                    tokio::time::sleep(TURN_LEASE / 3).await;
                    let _: Result<i64, _> = Script::new(RENEW)
                        .key(&lock)
                        .arg(&token)
                        .arg(TURN_LEASE.as_millis() as u64)
                        .invoke_async(&mut c)
                        .await;
                }
            })
        };
        let mut turn = RedisTurn {
            redis: r.clone(),
            id: id.to_owned(),
            owner: owner.to_owned(),
            token,
            history: Vec::new(),
            settings: self.settings.clone(),
            renewer: Some(renewer),
            committed: false,
        };
        // Read under the lease: this is the history no other turn can change now.
        let existing: Option<String> = c.hget(&meta, "owner").await.map_err(unavailable)?;
        if existing.as_deref().is_some_and(|o| o != owner) {
            return Ok(None);
        }
        let raw: Vec<String> = c
            .lrange(r.key(&["conv", id, "msgs"]), 0, -1)
            .await
            .map_err(unavailable)?;
        turn.history = raw
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect();
        Ok(Some(Box::new(turn)))
    }

    async fn get(&self, owner: &str, id: &str) -> Result<Option<Conversation>, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let (meta, raw): (std::collections::HashMap<String, String>, Vec<String>) = redis::pipe()
            .hgetall(r.key(&["conv", id]))
            .lrange(r.key(&["conv", id, "msgs"]), 0, -1)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        if meta.get("owner").map(String::as_str) != Some(owner) {
            return Ok(None);
        }
        let num = |k: &str| meta.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(Conversation {
            id: id.to_owned(),
            messages: raw
                .iter()
                .filter_map(|m| serde_json::from_str(m).ok())
                .collect(),
            created_at: from_ms(num("created_at")),
            updated_at: from_ms(num("updated_at")),
        }))
    }

    async fn list(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let (index, ids) = r.newest(owner, "convs", limit).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(r.key(&["conv", id]))
                .llen(r.key(&["conv", id, "msgs"]));
        }
        let rows: Vec<(std::collections::HashMap<String, String>, usize)> =
            pipe.query_async(&mut c).await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for (id, (meta, len)) in ids.into_iter().zip(rows) {
            if meta.get("owner").map(String::as_str) != Some(owner) {
                gone.push(id);
                continue;
            }
            let num = |k: &str| meta.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            out.push(ConversationSummary {
                id,
                message_count: len,
                created_at: from_ms(num("created_at")),
                updated_at: from_ms(num("updated_at")),
            });
        }
        if !gone.is_empty() {
            // Expired conversations leave their index entries behind; drop them now.
            let _: Result<i64, _> = c.zrem(&index, gone).await;
        }
        Ok(out)
    }

    async fn delete(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let n: i64 = Script::new(DELETE)
            .key(r.key(&["conv", id]))
            .key(r.key(&["conv", id, "msgs"]))
            .key(r.key(&["owner", owner, "convs"]))
            .key(r.key(&["convs"]))
            .arg(owner)
            .arg(id)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let n: usize = c.zcard(r.key(&["convs"])).await.map_err(unavailable)?;
        Ok(n)
    }

    async fn sweep(&self) {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let cutoff = ms(Utc::now()) - self.settings.conversation_ttl.as_millis() as i64;
        let _: Result<i64, _> = c.zrembyscore(r.key(&["convs"]), "-inf", cutoff).await;
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.redis.ping().await
    }
}

pub struct RedisTaskStore {
    redis: Redis,
    ttl: Duration,
}

impl RedisTaskStore {
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }
}

/// KEYS: task; ARGV: to, has_result, result, completed_at ('' if not final), ttl, from...
static TRANSITION: &str = r"
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local t = cjson.decode(raw)
local ok = false
for i = 6, #ARGV do if t.status == ARGV[i] then ok = true end end
if not ok then return false end
t.status = ARGV[1]
if ARGV[2] == '1' then t.result = ARGV[3] end
local out
if ARGV[4] ~= '' then
  t.completed_at = ARGV[4]
  out = cjson.encode(t)
  redis.call('SET', KEYS[1], out, 'PX', ARGV[5])
else
  out = cjson.encode(t)
  redis.call('SET', KEYS[1], out, 'KEEPTTL')
end
return out";

fn parse_task(raw: &str) -> Option<Task> {
    serde_json::from_str(raw).ok()
}

#[async_trait]
impl TaskStore for RedisTaskStore {
    async fn insert(&self, task: Task) -> Result<(), StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let json = serde_json::to_string(&task)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode task: {e}")))?;
        let index = r.key(&["owner", &task.owner, "tasks"]);
        let _: () = redis::pipe()
            .set(r.key(&["task", &task.task_id]), json)
            .ignore()
            .zadd(&index, &task.task_id, ms(task.created_at))
            .ignore()
            .pexpire(&index, (self.ttl.as_millis() as i64).max(86_400_000))
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, owner: Option<&str>, id: &str) -> Result<Option<Task>, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let raw: Option<String> = c.get(r.key(&["task", id])).await.map_err(unavailable)?;
        Ok(raw
            .as_deref()
            .and_then(parse_task)
            .filter(|t| owner.is_none_or(|o| o == t.owner)))
    }

    async fn list(&self, owner: &str, limit: usize) -> Result<Vec<Task>, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let (index, ids) = r.newest(owner, "tasks", limit).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| r.key(&["task", id])).collect();
        let raws: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, raw) in ids.into_iter().zip(raws) {
            match raw.as_deref().and_then(parse_task) {
                Some(t) if t.owner == owner => out.push(t),
                _ => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _: Result<i64, _> = c.zrem(&index, gone).await;
        }
        Ok(out)
    }

    async fn transition(
        &self,
        id: &str,
        from: &[TaskStatus],
        to: TaskStatus,
        result: Option<String>,
    ) -> Result<Option<Task>, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let completed = if to.is_final() {
            serde_json::to_value(Utc::now())
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let transition = Script::new(TRANSITION);
        let mut script = transition.prepare_invoke();
        script
            .key(r.key(&["task", id]))
            .arg(to.as_str())
            .arg(if result.is_some() { "1" } else { "0" })
            .arg(result.unwrap_or_default())
            .arg(completed)
            .arg(self.ttl.as_millis() as u64);
        for s in from {
            script.arg(s.as_str());
        }
        let out: Option<String> = script.invoke_async(&mut c).await.map_err(unavailable)?;
        Ok(out.as_deref().and_then(parse_task))
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.redis.ping().await
    }
}

/// GCRA in one script. KEYS: bucket; ARGV: emission interval (ms), burst.
/// Returns {allowed, remaining, reset_ms}: reset is the wait for the next token when refused,
/// and the time until the bucket is full when allowed. Time is Redis's own, so replicas agree.
static GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = emission * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tolerance then
  return {0, 0, tat - tolerance - now}
end
local new_tat = tat + emission
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now + emission))
local remaining = math.floor((now + tolerance - new_tat) / emission) + 1
if remaining < 0 then remaining = 0 end
return {1, remaining, new_tat - now}";

/// Rate-limit buckets shared by every replica.
pub struct RedisRateLimiter {
    redis: Redis,
}

impl RedisRateLimiter {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Takes one token from `bucket`: (allowed, remaining, reset).
    pub async fn take(
        &self,
        bucket: &str,
        emission: Duration,
        burst: u32,
    ) -> Result<(bool, u32, Duration), StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let (allowed, remaining, reset): (i64, i64, i64) = Script::new(GCRA)
            .key(r.key(&["rl", bucket]))
            .arg(emission.as_millis().max(1) as u64)
            .arg(burst)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok((
            allowed == 1,
            remaining.max(0) as u32,
            Duration::from_millis(reset.max(0) as u64),
        ))
    }
}

/// The shared task queue: a stream with one consumer group; entries are leased to the replica
/// that read them and taken over by another when their idle time passes the lease.
pub struct RedisQueue {
    redis: Redis,
    /// A connection of its own for the blocking read: on the shared, multiplexed connection an
    /// `XREADGROUP BLOCK` would hold up every other command for its duration.
    blocking: ConnectionManager,
    stream: String,
    group: &'static str,
    /// This process's consumer name.
    consumer: String,
    pub channel: String,
    pub lease: Duration,
}

/// One queue entry: the stream entry id and the task id.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub entry: String,
    pub task_id: String,
}

fn entries(ids: Vec<redis::streams::StreamId>) -> Vec<QueueEntry> {
    ids.into_iter()
        .filter_map(|s| {
            let task_id = s.get::<String>("task")?;
            Some(QueueEntry {
                entry: s.id,
                task_id,
            })
        })
        .collect()
}

impl RedisQueue {
    pub fn new(redis: Redis, lease: Duration) -> Result<Self, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let blocking = ConnectionManager::new_lazy_with_config(redis.client.clone(), config)
            .map_err(unavailable)?;
        Ok(Self {
            blocking,
            stream: redis.key(&["tasks", "queue"]),
            channel: redis.key(&["tasks", "cancel"]),
            redis,
            group: "workers",
            consumer: format!("replica-{}", uuid::Uuid::new_v4().simple()),
            lease,
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.redis.client
    }

    async fn ensure_group(&self) -> Result<(), StoreError> {
        let mut c = self.redis.conn.clone();
        let res: Result<String, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    pub async fn backlog(&self) -> Result<usize, StoreError> {
        let mut c = self.redis.conn.clone();
        c.xlen(&self.stream).await.map_err(unavailable)
    }

    pub async fn push(&self, task_id: &str) -> Result<(), StoreError> {
        self.ensure_group().await?;
        let mut c = self.redis.conn.clone();
        let _: String = c
            .xadd(&self.stream, "*", &[("task", task_id)])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Waits up to `block` for one new entry.
    pub async fn read(&self, block: Duration) -> Result<Option<QueueEntry>, StoreError> {
        self.ensure_group().await?;
        let mut c = self.blocking.clone();
        let opts = redis::streams::StreamReadOptions::default()
            .group(self.group, &self.consumer)
            .count(1)
            .block(block.as_millis() as usize);
        let reply: Option<redis::streams::StreamReadReply> = c
            .xread_options(&[&self.stream], &[">"], &opts)
            .await
            .map_err(unavailable)?;
        Ok(reply
            .and_then(|r| r.keys.into_iter().next())
            .and_then(|k| entries(k.ids).into_iter().next()))
    }

    /// Takes over one entry whose replica stopped renewing it.
    pub async fn claim_stale(&self) -> Result<Option<QueueEntry>, StoreError> {
        self.ensure_group().await?;
        let mut c = self.redis.conn.clone();
        let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(self.group)
            .arg(&self.consumer)
            .arg(self.lease.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(entries(reply.claimed).into_iter().next())
    }

    /// Renews the lease on an entry (resets its idle time).
    pub async fn renew(&self, entry: &str) -> Result<(), StoreError> {
        let mut c = self.redis.conn.clone();
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(entry)
            .arg("JUSTID")
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub async fn done(&self, entry: &str) -> Result<(), StoreError> {
        let mut c = self.redis.conn.clone();
        let _: () = redis::pipe()
            .xack(&self.stream, self.group, &[entry])
            .ignore()
            .xdel(&self.stream, &[entry])
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub async fn publish_cancel(&self, task_id: &str) -> Result<(), StoreError> {
        let mut c = self.redis.conn.clone();
        let _: i64 = c
            .publish(&self.channel, task_id)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Everything the app needs from one Redis.
pub struct RedisStores {
    pub conversations: Arc<RedisConversationStore>,
    pub tasks: Arc<RedisTaskStore>,
    pub limiter: Arc<RedisRateLimiter>,
    pub queue: Arc<RedisQueue>,
}

impl RedisStores {
    pub fn connect(settings: RedisSettings, task_lease: Duration) -> Result<Self, StoreError> {
        let redis = Redis::connect(&settings.url, &settings.prefix)?;
        Ok(Self {
            conversations: Arc::new(RedisConversationStore::new(redis.clone(), settings.clone())),
            tasks: Arc::new(RedisTaskStore::new(redis.clone(), settings.task_ttl)),
            limiter: Arc::new(RedisRateLimiter::new(redis.clone())),
            queue: Arc::new(RedisQueue::new(redis, task_lease)?),
        })
    }
}
