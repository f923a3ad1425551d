//! Conversations in Redis, in per-key namespaces, with the same quotas and eviction rules as
//! the memory store (exact across replicas: every count is read and changed inside one script).
//!
//! A conversation's room is checked before its first turn calls the model (`conv_check.lua`,
//! which changes nothing) and taken when that turn commits (`conv_commit.lua`): a first turn
//! that fails leaves nothing and evicts nothing. Eviction takes the oldest idle conversation
//! (no turn lease) of the key at its quota, or, when the store is full, of the key that holds
//! the most (`room.lua`).

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use redis::{AsyncCommands, Script};
use tokio::task::JoinHandle;

use super::{Redis, RedisSettings, TURN_LEASE, spawn_detached, unavailable};
use crate::llm::Message;
use crate::store::{Conversation, ConversationStore, ConversationSummary, StoreError, TurnLease};

pub struct RedisConversationStore {
    redis: Redis,
    settings: RedisSettings,
    /// The last count read, and when, for `/health` (which never waits on Redis).
    last_count: std::sync::Mutex<Option<(usize, std::time::Instant)>>,
}

impl RedisConversationStore {
    pub fn new(redis: Redis, settings: RedisSettings) -> Self {
        Self {
            redis,
            settings,
            last_count: std::sync::Mutex::new(None),
        }
    }

    /// The keys of one conversation: meta, messages, lock.
    fn keys(&self, owner: &str, id: &str) -> (String, String, String) {
        let meta = self.redis.key(&["conv", owner, id]);
        (meta.clone(), format!("{meta}:msgs"), format!("{meta}:lock"))
    }
}

/// The four arguments `room.lua` reads first (both scripts that include it).
fn room_args(script: &mut redis::ScriptInvocation<'_>, r: &Redis, s: &RedisSettings, owner: &str) {
    script
        .arg(&r.prefix)
        .arg(owner)
        .arg(s.limits.max_conversations_per_key)
        .arg(s.limits.max_conversations);
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v)
        .single()
        .unwrap_or_else(Utc::now)
}

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
    )
});

static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0",
    )
});

static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/room.lua"),
        include_str!("scripts/conv_check.lua")
    ))
});

static COMMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/room.lua"),
        include_str!("scripts/conv_commit.lua")
    ))
});

static DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/conv_delete.lua")));

/// A held turn: renews its lease until committed or dropped; dropping it releases the lease.
struct RedisTurn {
    redis: Redis,
    id: String,
    owner: String,
    token: String,
    history: Vec<Message>,
    agent: Option<String>,
    settings: RedisSettings,
    renewer: Option<JoinHandle<()>>,
    committed: bool,
    /// The conversation existed when the turn began: if it is gone at the commit, it was
    /// deleted meanwhile, and the commit must not create it again.
    existed: bool,
}

impl Drop for RedisTurn {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if !self.committed {
            let redis = self.redis.clone();
            let lock = redis.key(&["conv", &self.owner, &self.id, "lock"]);
            let token = self.token.clone();
            // Drop cannot wait: release in the background (the lease expires anyway).
            spawn_detached(async move {
                let mut c = redis.conn.clone();
                let _: Result<i64, _> = RELEASE.key(lock).arg(token).invoke_async(&mut c).await;
            });
        }
    }
}

#[async_trait]
impl TurnLease for RedisTurn {
    fn history(&self) -> &[Message] {
        &self.history
    }

    fn agent(&self) -> Option<&str> {
        self.agent.as_deref()
    }

    async fn commit_as(
        mut self: Box<Self>,
        new_messages: Vec<Message>,
        agent: Option<&str>,
    ) -> Result<(), StoreError> {
        let r = &self.redis;
        let now = ms(Utc::now()).to_string();
        let meta = r.key(&["conv", &self.owner, &self.id]);
        let mut script = COMMIT.prepare_invoke();
        script
            .key(&meta)
            .key(format!("{meta}:msgs"))
            .key(format!("{meta}:lock"))
            .key(r.key(&["owner", &self.owner, "convs"]));
        room_args(&mut script, r, &self.settings, &self.owner);
        script
            .arg(&self.token)
            .arg(&now)
            .arg(self.settings.limits.conversation_ttl.as_millis() as u64)
            .arg(self.settings.limits.max_messages)
            .arg(&self.id)
            .arg(if self.existed { "1" } else { "0" })
            .arg(agent.unwrap_or_default());
        for m in &new_messages {
            script.arg(serde_json::to_string(m).unwrap_or_default());
        }
        let mut c = r.conn.clone();
        let res: Result<i64, _> = script.invoke_async(&mut c).await;
        // Release the lease whatever happened: Drop does it when not committed.
        match res {
            Ok(_) => {
                self.committed = true;
                let _: Result<i64, _> = RELEASE
                    .key(format!("{meta}:lock"))
                    .arg(&self.token)
                    .invoke_async(&mut c)
                    .await;
                Ok(())
            }
            Err(e) if e.to_string().contains("LEASE_LOST") => Err(StoreError::Unavailable(
                "the conversation's turn lease was lost; the turn was not saved".into(),
            )),
            Err(e) if e.to_string().contains("DELETED") => Err(StoreError::deleted()),
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
        wait: Duration,
    ) -> Result<Option<Box<dyn TurnLease>>, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let (meta, msgs, lock) = self.keys(owner, id);
        let token = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + wait;
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
                return Err(StoreError::busy());
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
                    let _: Result<i64, _> = RENEW
                        .key(&lock)
                        .arg(&token)
                        .arg(TURN_LEASE.as_millis() as u64)
                        .invoke_async(&mut c)
                        .await;
                }
            })
        };
        let limits = &self.settings.limits;
        let mut turn = RedisTurn {
            redis: r.clone(),
            id: id.to_owned(),
            owner: owner.to_owned(),
            token,
            history: Vec::new(),
            agent: None,
            settings: self.settings.clone(),
            renewer: Some(renewer),
            committed: false,
            existed: false,
        };
        // Read under the lease: this is the history no other turn can change now.
        let (exists, agent, raw): (bool, Option<String>, Vec<String>) = redis::pipe()
            .exists(&meta)
            .hget(&meta, "agent")
            .lrange(&msgs, 0, -1)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        turn.existed = exists;
        turn.agent = agent.filter(|a| !a.is_empty());
        if !exists {
            // A new conversation: refuse it now, before the model is called, if no room could
            // be made at its commit.
            let mut check = CHECK.prepare_invoke();
            room_args(&mut check, r, &self.settings, owner);
            let refused: Option<String> = check.invoke_async(&mut c).await.map_err(unavailable)?;
            match refused.as_deref() {
                Some("QUOTA") => {
                    return Err(StoreError::key_busy(limits.max_conversations_per_key));
                }
                Some(_) => return Err(StoreError::store_busy(limits.max_conversations)),
                None => {}
            }
        }
        turn.history = raw
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect();
        Ok(Some(Box::new(turn)))
    }

    async fn get(&self, owner: &str, id: &str) -> Result<Option<Conversation>, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let (meta, msgs, _) = self.keys(owner, id);
        let (meta, raw): (std::collections::HashMap<String, String>, Vec<String>) = redis::pipe()
            .hgetall(&meta)
            .lrange(&msgs, 0, -1)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        if meta.is_empty() {
            return Ok(None);
        }
        let num = |k: &str| meta.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(Conversation {
            id: id.to_owned(),
            agent: meta.get("agent").filter(|a| !a.is_empty()).cloned(),
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
            let (meta, msgs, _) = self.keys(owner, id);
            pipe.hgetall(meta).llen(msgs);
        }
        let rows: Vec<(std::collections::HashMap<String, String>, usize)> =
            pipe.query_async(&mut c).await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for (id, (meta, len)) in ids.into_iter().zip(rows) {
            if meta.is_empty() {
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
        let (meta, msgs, _) = self.keys(owner, id);
        let n: i64 = DELETE
            .key(meta)
            .key(msgs)
            .key(r.key(&["owner", owner, "convs"]))
            .key(r.key(&["convs"]))
            .arg(id)
            .arg(format!("{owner}:{id}"))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let n: usize = c.zcard(r.key(&["convs"])).await.map_err(unavailable)?;
        if let Ok(mut last) = self.last_count.lock() {
            *last = Some((n, std::time::Instant::now()));
        }
        Ok(n)
    }

    /// The count the janitor read last (at most a minute old), or `None`.
    fn count_now(&self) -> Option<usize> {
        let last = *self.last_count.lock().ok()?;
        last.filter(|(_, at)| at.elapsed() < Duration::from_secs(60))
            .map(|(n, _)| n)
    }

    async fn sweep(&self) {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let cutoff = ms(Utc::now()) - self.settings.limits.conversation_ttl.as_millis() as i64;
        let _: Result<i64, _> = c.zrembyscore(r.key(&["convs"]), "-inf", cutoff).await;
        let _ = self.count().await;
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.redis.ping().await
    }
}
