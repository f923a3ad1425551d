//! Task records in Redis, with the per-key quota and the store's bound kept exactly across
//! replicas (`scripts/task_insert.lua`); status changes are compare-and-set scripts.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::Utc;
use redis::{AsyncCommands, Script};

use super::{Redis, unavailable};
use crate::store::{StoreError, StoreLimits, Task, TaskChange, TaskStatus, TaskStore};

pub struct RedisTaskStore {
    redis: Redis,
    limits: StoreLimits,
}

impl RedisTaskStore {
    pub fn new(redis: Redis, limits: StoreLimits) -> Self {
        Self { redis, limits }
    }
}

static INSERT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/task_insert.lua")));

static TRANSITION: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/task_transition.lua")));

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
        let limits = &self.limits;
        let res: Result<i64, _> = INSERT
            .key(r.key(&["task", &task.task_id]))
            .key(r.key(&["owner", &task.owner, "tasks"]))
            .key(r.key(&["tasks"]))
            .arg(json)
            .arg(&task.task_id)
            .arg(task.created_at.timestamp_millis())
            .arg(limits.max_tasks_per_key)
            .arg(limits.max_tasks)
            .arg(&r.prefix)
            .arg((limits.task_ttl.as_millis() as u64).max(86_400_000))
            .invoke_async(&mut c)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("QUOTA") => Err(StoreError::Quota(format!(
                "this key holds its maximum of {} tasks, none of them finished",
                limits.max_tasks_per_key
            ))),
            Err(e) if e.to_string().contains("FULL") => Err(StoreError::Full(format!(
                "the server holds its maximum of {} tasks",
                limits.max_tasks
            ))),
            Err(e) => Err(unavailable(e)),
        }
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

    async fn transition_with(
        &self,
        id: &str,
        from: &[TaskStatus],
        to: TaskStatus,
        change: TaskChange,
    ) -> Result<Option<Task>, StoreError> {
        let TaskChange {
            result,
            tool_calls,
            run_id,
        } = change;
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
        let mut script = TRANSITION.prepare_invoke();
        script
            .key(r.key(&["task", id]))
            .arg(to.as_str())
            .arg(if result.is_some() { "1" } else { "0" })
            .arg(result.unwrap_or_default())
            .arg(completed)
            .arg(self.limits.task_ttl.as_millis() as u64)
            .arg(tool_calls.unwrap_or_default())
            .arg(run_id.unwrap_or_default());
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
