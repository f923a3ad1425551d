//! Runs' logs in Redis ([`crate::runs`] keeps the producer's side): `run:{id}` (hash: owner,
//! conversation_id, agent, task_id, status, created_at, completed_at, tokens_used, first and next
//! positions, the producer's token and the end of its lease) and `run:{id}:log` (a stream whose
//! entry ids are `<seq>-1`, fields `e` (event name) and `d` (data)).
//!
//! Writes go through `scripts/run_append.lua`, which takes a batch only from the producer whose
//! token the run holds and only while it runs (fencing: a producer that stalled past its lease
//! and whose run was meanwhile ended `interrupted` cannot write into it again). Reads go through
//! `scripts/run_read.lua`, which ends a run whose producer's lease lapsed (`interrupted`, with a
//! last `event: error`) before answering. Both keys expire `RUN_TTL_SECS` after the last write.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};

use super::{Redis, unavailable};
use crate::runs::{INTERRUPTED, LogEvent, RemoteMeta, RunInfo, RunStatus, frames};
use crate::store::StoreError;

static APPEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/run_append.lua")));
static READ: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/run_read.lua")));

pub struct RedisRuns {
    redis: Redis,
    /// `TASK_LEASE_SECS`: a producer that does not renew for this long is taken for dead.
    lease: Duration,
    ttl: Duration,
    /// The channel on which cancellations reach every replica (the task queue's).
    channel: String,
}

/// A run as Redis holds it.
#[derive(Debug, Clone)]
pub struct RemoteRun {
    pub owner: String,
    pub info: RunInfo,
    /// The first position still held.
    pub first: u64,
    /// The position after the last event.
    pub next: u64,
    pub events: Vec<LogEvent>,
}

fn time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl RedisRuns {
    pub fn new(redis: Redis, lease: Duration, ttl: Duration) -> Self {
        let channel = redis.key(&["tasks", "cancel"]);
        Self {
            redis,
            lease,
            ttl,
            channel,
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn keys(&self, id: &str) -> (String, String) {
        (
            self.redis.key(&["run", id]),
            self.redis.key(&["run", id, "log"]),
        )
    }

    /// Writes a batch (and the end, when given); false when this producer may no longer write.
    pub async fn append(
        &self,
        meta: &RemoteMeta<'_>,
        token: &str,
        create: bool,
        batch: &[LogEvent],
        first: u64,
        end: Option<(RunStatus, Option<DateTime<Utc>>, u64)>,
    ) -> Result<bool, StoreError> {
        let (meta_key, log_key) = self.keys(meta.id);
        let mut call = APPEND.key(meta_key);
        call.key(log_key)
            .arg(token)
            .arg(if create { "1" } else { "0" })
            .arg(self.ttl.as_millis() as u64)
            .arg(self.lease.as_millis() as u64)
            .arg(first);
        match end {
            Some((status, at, tokens)) => call
                .arg(status.as_str())
                .arg(at.map(|t| t.to_rfc3339()).unwrap_or_default())
                .arg(tokens),
            None => call.arg("").arg("").arg(0),
        };
        call.arg(meta.owner)
            .arg(meta.conversation_id.unwrap_or_default())
            .arg(meta.agent)
            .arg(meta.task_id.unwrap_or_default())
            .arg(meta.created_at.to_rfc3339());
        for e in batch {
            call.arg(e.seq)
                .arg(e.event.unwrap_or_default())
                .arg(&e.data);
        }
        let mut c = self.redis.conn.clone();
        let ok: i64 = call.invoke_async(&mut c).await.map_err(unavailable)?;
        Ok(ok == 1)
    }

    /// The run (ending it `interrupted` if its producer is gone) and up to `count` of its events
    /// from position `from`.
    pub async fn read(
        &self,
        id: &str,
        from: u64,
        count: usize,
    ) -> Result<Option<RemoteRun>, StoreError> {
        let (meta_key, log_key) = self.keys(id);
        let (_, interrupted) = frames::error_detail(INTERRUPTED);
        let mut c = self.redis.conn.clone();
        let out: Option<Vec<String>> = READ
            .key(meta_key)
            .key(log_key)
            .arg(from.min(i64::MAX as u64))
            .arg(count)
            .arg(interrupted)
            .arg(self.ttl.as_millis() as u64)
            .arg(Utc::now().to_rfc3339())
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let Some(out) = out else { return Ok(None) };
        if out.len() < 10 {
            return Ok(None);
        }
        let mut fields = out;
        let rest = fields.split_off(10);
        let mut field = |i: usize| std::mem::take(&mut fields[i]);
        let owner = field(0);
        let conversation_id = some(field(1));
        let agent = field(2);
        let task_id = some(field(3));
        let status = RunStatus::parse(&field(4)).unwrap_or(RunStatus::Interrupted);
        let created_at = time(&field(5)).unwrap_or_default();
        let completed_at = time(&field(6));
        let tokens_used = field(7).parse().unwrap_or(0);
        let first = field(8).parse().unwrap_or(0);
        let next = field(9).parse().unwrap_or(0);
        let events = rest
            .chunks_exact(3)
            .filter_map(|e| {
                Some(LogEvent {
                    seq: e[0].parse().ok()?,
                    event: frames::name(&e[1]),
                    data: e[2].clone(),
                })
            })
            .collect();
        Ok(Some(RemoteRun {
            owner,
            info: RunInfo {
                run_id: id.to_owned(),
                conversation_id,
                agent,
                task_id,
                status,
                created_at,
                completed_at,
                tokens_used,
            },
            first,
            next,
            events,
        }))
    }

    /// Tells every replica to stop the run (the one producing it does).
    pub async fn publish_cancel(&self, id: &str) -> Result<(), StoreError> {
        let mut c = self.redis.conn.clone();
        let _: i64 = c.publish(&self.channel, id).await.map_err(unavailable)?;
        Ok(())
    }
}
