//! Stored `/v1/responses` responses in Redis: a hash `resp:{id}` (`owner`, `data`: the record
//! as JSON) with the response's TTL, and `owner:{owner}:resps`, the key's ids by creation, for
//! `MAX_RESPONSES_PER_KEY`. Writes are one script each (`scripts/response_put.lua`,
//! `scripts/response_delete.lua`), so that the owner check, the quota and the write are atomic.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{Redis, unavailable};
use crate::store::{ResponseStore, StoreError, StoredResponse};

pub struct RedisResponseStore {
    redis: Redis,
    max_per_key: usize,
}

impl RedisResponseStore {
    pub fn new(redis: Redis, max_per_key: usize) -> Self {
        Self { redis, max_per_key }
    }
}

static PUT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/response_put.lua")));

static DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/response_delete.lua")));

#[async_trait]
impl ResponseStore for RedisResponseStore {
    async fn put(
        &self,
        r: &StoredResponse,
        ttl: Duration,
        replace_only: bool,
    ) -> Result<bool, StoreError> {
        let redis = &self.redis;
        let mut c = redis.conn.clone();
        let data = serde_json::to_string(r)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode response: {e}")))?;
        let written: i64 = PUT
            .key(redis.key(&["resp", r.id()]))
            .key(redis.key(&["owner", &r.owner, "resps"]))
            .arg(&r.owner)
            .arg(data)
            .arg((ttl.as_millis() as u64).max(1))
            .arg(if replace_only { 1 } else { 0 })
            .arg(r.id())
            .arg(chrono::Utc::now().timestamp_millis())
            .arg(self.max_per_key)
            .arg(&redis.prefix)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(written == 1)
    }

    async fn get(&self, owner: &str, id: &str) -> Result<Option<StoredResponse>, StoreError> {
        let mut c = self.redis.conn.clone();
        let (held_by, data): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.redis.key(&["resp", id]))
            .arg("owner")
            .arg("data")
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        if held_by.as_deref() != Some(owner) {
            return Ok(None);
        }
        Ok(data.and_then(|d| serde_json::from_str(&d).ok()))
    }

    async fn delete(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let mut c = self.redis.conn.clone();
        let deleted: i64 = DELETE
            .key(self.redis.key(&["resp", id]))
            .key(self.redis.key(&["owner", owner, "resps"]))
            .arg(owner)
            .arg(id)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }
}
