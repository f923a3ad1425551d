//! The shared task queue: a Redis stream with one consumer group.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{Redis, unavailable};
use crate::store::{QueueEntry, StoreError, TaskQueue};

static LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/task_lease.lua")));

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
    channel: String,
    lease: Duration,
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

    async fn lease_entry(&self, entry: &str, idle_ms: u64) -> Result<bool, StoreError> {
        let mut c = self.redis.conn.clone();
        let ours: i64 = LEASE
            .key(&self.stream)
            .arg(self.group)
            .arg(&self.consumer)
            .arg(entry)
            .arg(idle_ms)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(ours == 1)
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
}

#[async_trait]
impl TaskQueue for RedisQueue {
    /// The stream's length less the entries taken and not yet acknowledged.
    async fn waiting(&self) -> Result<usize, StoreError> {
        self.ensure_group().await?;
        let mut c = self.redis.conn.clone();
        let (len, pending): (usize, redis::Value) = redis::pipe()
            .xlen(&self.stream)
            .cmd("XPENDING")
            .arg(&self.stream)
            .arg(self.group)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let taken = match pending {
            redis::Value::Array(v) => match v.first() {
                Some(redis::Value::Int(n)) => *n as usize,
                _ => 0,
            },
            _ => 0,
        };
        Ok(len.saturating_sub(taken))
    }

    async fn push(&self, task_id: &str) -> Result<(), StoreError> {
        self.ensure_group().await?;
        let mut c = self.redis.conn.clone();
        let _: String = c
            .xadd(&self.stream, "*", &[("task", task_id)])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Waits up to `block` for one new entry.
    async fn read(&self, block: Duration) -> Result<Option<QueueEntry>, StoreError> {
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
    async fn claim_stale(&self) -> Result<Option<QueueEntry>, StoreError> {
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

    /// Renews the lease on an entry (resets its idle time) if it is still this replica's:
    /// false when another replica has taken it over, which then runs the task alone.
    async fn renew(&self, entry: &str) -> Result<bool, StoreError> {
        self.lease_entry(entry, 0).await
    }

    /// Hands an unfinished entry back (shutdown): its idle time is set to the lease, so that
    /// another replica takes it over at once instead of waiting for the lease to pass.
    async fn hand_back(&self, entry: &str) -> Result<bool, StoreError> {
        self.lease_entry(entry, self.lease.as_millis() as u64).await
    }

    async fn done(&self, entry: &str) -> Result<(), StoreError> {
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

    async fn publish_cancel(&self, task_id: &str) -> Result<(), StoreError> {
        let mut c = self.redis.conn.clone();
        let _: i64 = c
            .publish(&self.channel, task_id)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn cancellations(&self) -> Result<BoxStream<'static, String>, StoreError> {
        let mut pubsub = self
            .redis
            .client
            .get_async_pubsub()
            .await
            .map_err(unavailable)?;
        pubsub.subscribe(&self.channel).await.map_err(unavailable)?;
        let ids = pubsub
            .into_on_message()
            .filter_map(|msg| std::future::ready(msg.get_payload::<String>().ok()));
        Ok(Box::pin(ids))
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    fn shared(&self) -> bool {
        true
    }
}
