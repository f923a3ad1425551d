//! `MAX_STREAMS_PER_KEY` across replicas: each open stream of a key is a member of the key's
//! sorted set `streams:{owner}`, scored by when its lease ends. The replica holding it renews
//! the leases of all its streams every third of the lease (one script per key), and removes a
//! member when its stream ends; a replica that dies leaves members that lapse within the lease.
//! Counting and adding are one script, on Redis's clock, so the quota is exact across replicas.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use dashmap::DashMap;
use redis::Script;

use super::{Redis, spawn_detached, unavailable};
use crate::store::StoreError;

/// How long an open stream's place lasts without renewal.
pub const STREAM_LEASE: Duration = Duration::from_secs(30);

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/stream_acquire.lua")));

static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/stream_renew.lua")));

pub struct RedisStreams {
    redis: Redis,
    /// This replica's open streams: id → owner.
    open: DashMap<String, String>,
}

impl RedisStreams {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            open: DashMap::new(),
        }
    }

    fn key(&self, owner: &str) -> String {
        self.redis.key(&["streams", owner])
    }

    /// A place for one more stream of `owner` (its id), or `None` when it has `max` open.
    pub async fn acquire(&self, owner: &str, max: usize) -> Result<Option<String>, StoreError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut c = self.redis.conn.clone();
        let got: i64 = ACQUIRE
            .key(self.key(owner))
            .arg(&id)
            .arg(max)
            .arg(STREAM_LEASE.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        if got == 1 {
            self.open.insert(id.clone(), owner.to_owned());
            Ok(Some(id))
        } else {
            Ok(None)
        }
    }

    /// Gives a stream's place back (in the background: a stream's end cannot wait on Redis).
    pub fn release(self: &Arc<Self>, id: &str) {
        let Some((id, owner)) = self.open.remove(id) else {
            return;
        };
        let this = Arc::clone(self);
        spawn_detached(async move {
            let mut c = this.redis.conn.clone();
            let _: Result<i64, _> = redis::cmd("ZREM")
                .arg(this.key(&owner))
                .arg(&id)
                .query_async(&mut c)
                .await;
        });
    }

    /// Renews the leases of every stream this replica holds: one script per key.
    pub async fn renew(&self) {
        let mut by_owner: std::collections::HashMap<String, Vec<String>> = Default::default();
        for e in self.open.iter() {
            by_owner
                .entry(e.value().clone())
                .or_default()
                .push(e.key().clone());
        }
        let mut c = self.redis.conn.clone();
        for (owner, ids) in by_owner {
            let mut script = RENEW.prepare_invoke();
            script
                .key(self.key(&owner))
                .arg(STREAM_LEASE.as_millis() as u64);
            for id in &ids {
                script.arg(id);
            }
            if let Err(e) = script.invoke_async::<i64>(&mut c).await {
                tracing::warn!(error = %e, "could not renew open streams' leases in Redis");
            }
        }
    }

    /// How many streams this replica holds.
    pub fn held(&self) -> usize {
        self.open.len()
    }
}
