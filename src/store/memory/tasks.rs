//! Task records in memory.
//!
//! Bounds: `max_tasks` in all, `max_tasks_per_key` per key (pending, running and finished: a
//! key at its quota drops its oldest finished task, or is refused with 429 when none has
//! finished), the byte budget shared with the conversations (`MAX_STORE_MIB`), and the TTL of
//! finished tasks. Lock order: the owners' map, then the tasks' map.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use dashmap::DashMap;

use super::ByteBudget;
use crate::store::{StoreError, StoreLimits, Task, TaskChange, TaskStatus, TaskStore};

/// What a task is charged beyond its texts.
const TASK_BYTES: usize = 256;

fn bytes_of(t: &Task) -> usize {
    TASK_BYTES
        + t.prompt.len()
        + t.task_type.len()
        + t.model.len()
        + t.owner.len()
        + t.result.as_ref().map_or(0, String::len)
        + t.tool_calls.as_ref().map_or(0, String::len)
        + t.agent.as_ref().map_or(0, String::len)
}

pub struct MemoryTaskStore {
    map: DashMap<String, Task>,
    /// Each key's task ids, oldest first.
    owners: DashMap<String, VecDeque<String>>,
    budget: Arc<ByteBudget>,
    max_tasks: usize,
    max_per_key: usize,
    ttl: Duration,
}

impl MemoryTaskStore {
    /// A store with its own byte budget.
    pub fn new(limits: &StoreLimits) -> Self {
        Self::with_budget(limits, Arc::new(ByteBudget::new(limits.max_bytes)))
    }

    pub fn with_budget(limits: &StoreLimits, budget: Arc<ByteBudget>) -> Self {
        Self {
            map: DashMap::new(),
            owners: DashMap::new(),
            budget,
            max_tasks: limits.max_tasks,
            max_per_key: limits.max_tasks_per_key,
            ttl: limits.task_ttl,
        }
    }

    fn remove(&self, id: &str) {
        if let Some((_, t)) = self.map.remove(id) {
            self.budget.sub(bytes_of(&t));
        }
    }

    fn expire(&self) {
        let cutoff = Utc::now() - chrono::Duration::from_std(self.ttl).unwrap_or_default();
        let mut freed = 0;
        self.map.retain(|_, t| {
            let keep = !t.status.is_final() || t.completed_at.is_none_or(|c| c > cutoff);
            if !keep {
                freed += bytes_of(t);
            }
            keep
        });
        self.budget.sub(freed);
        self.owners.retain(|_, ids| {
            ids.retain(|id| self.map.contains_key(id));
            !ids.is_empty()
        });
    }

    fn is_final(&self, id: &str) -> bool {
        self.map.get(id).is_none_or(|t| t.status.is_final())
    }
}

#[async_trait]
impl TaskStore for MemoryTaskStore {
    async fn insert(&self, task: Task) -> Result<(), StoreError> {
        if self.map.len() >= self.max_tasks {
            self.expire();
            if self.map.len() >= self.max_tasks {
                return Err(StoreError::Full(format!(
                    "the server holds its maximum of {} tasks",
                    self.max_tasks
                )));
            }
        }
        let bytes = bytes_of(&task);
        let mut ids = self.owners.entry(task.owner.clone()).or_default();
        // The key's quota, and then the byte budget: its own oldest finished tasks go first.
        while ids.len() >= self.max_per_key
            || (self.budget.used() + bytes > self.budget.max() && !ids.is_empty())
        {
            let Some(i) = ids.iter().position(|id| self.is_final(id)) else {
                break;
            };
            if let Some(id) = ids.remove(i) {
                self.remove(&id);
            }
        }
        if ids.len() >= self.max_per_key {
            return Err(StoreError::Quota(format!(
                "this key holds its maximum of {} tasks, none of them finished",
                self.max_per_key
            )));
        }
        if self.budget.used() + bytes > self.budget.max() {
            return Err(StoreError::Full(
                "the server's store is at its memory bound (MAX_STORE_MIB)".into(),
            ));
        }
        ids.push_back(task.task_id.clone());
        self.budget.add(bytes);
        self.map.insert(task.task_id.clone(), task);
        Ok(())
    }

    async fn get(&self, owner: Option<&str>, id: &str) -> Result<Option<Task>, StoreError> {
        Ok(self
            .map
            .get(id)
            .filter(|t| owner.is_none_or(|o| o == t.owner))
            .map(|t| t.value().clone()))
    }

    async fn list(&self, owner: &str, limit: usize) -> Result<Vec<Task>, StoreError> {
        let ids: Vec<String> = self
            .owners
            .get(owner)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        let mut out: Vec<Task> = ids
            .iter()
            .filter_map(|id| self.map.get(id).map(|t| t.value().clone()))
            .collect();
        out.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then(a.task_id.cmp(&b.task_id))
        });
        out.truncate(limit);
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
        let Some(mut task) = self.map.get_mut(id) else {
            return Ok(None);
        };
        if !from.contains(&task.status) {
            return Ok(None);
        }
        let before = bytes_of(&task);
        task.status = to;
        if result.is_some() {
            task.result = result;
        }
        if tool_calls.is_some() {
            task.tool_calls = tool_calls;
        }
        if run_id.is_some() {
            task.run_id = run_id;
        }
        if to.is_final() {
            task.completed_at = Some(Utc::now());
        }
        self.budget.sub(before);
        self.budget.add(bytes_of(&task));
        Ok(Some(task.clone()))
    }

    async fn sweep(&self) {
        self.expire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, owner: &str) -> Task {
        Task {
            task_id: id.into(),
            owner: owner.into(),
            prompt: "p".into(),
            task_type: "analysis".into(),
            model: "m".into(),
            status: TaskStatus::Pending,
            result: None,
            created_at: Utc::now(),
            completed_at: None,
            agent: None,
            tool_calls: None,
            run_id: None,
        }
    }

    fn limits(per_key: usize, bytes: usize) -> StoreLimits {
        StoreLimits {
            max_tasks_per_key: per_key,
            max_bytes: bytes,
            ..StoreLimits::new(100, 10, Duration::from_secs(60))
        }
    }

    #[tokio::test]
    async fn a_key_at_its_quota_drops_its_oldest_finished_task_or_is_refused() {
        let s = MemoryTaskStore::new(&limits(2, 1 << 20));
        s.insert(task("a1", "a")).await.unwrap();
        s.insert(task("a2", "a")).await.unwrap();
        assert!(matches!(
            s.insert(task("a3", "a")).await,
            Err(StoreError::Quota(_))
        ));
        // Another key is not affected.
        s.insert(task("b1", "b")).await.unwrap();
        let done = [TaskStatus::Pending];
        s.transition("a2", &done, TaskStatus::Completed, Some("r".into()))
            .await
            .unwrap()
            .unwrap();
        s.insert(task("a3", "a")).await.unwrap();
        assert!(s.get(None, "a2").await.unwrap().is_none());
        assert!(s.get(None, "a1").await.unwrap().is_some());
        assert_eq!(s.list("a", 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_what_tasks_hold() {
        let s = MemoryTaskStore::new(&limits(100, 4096));
        let mut big = task("big", "a");
        big.prompt = "x".repeat(3000);
        s.insert(big).await.unwrap();
        let mut second = task("second", "a");
        second.prompt = "y".repeat(3000);
        // The first is not finished: nothing can go, and the store says it is full.
        assert!(matches!(
            s.insert(second.clone()).await,
            Err(StoreError::Full(_))
        ));
        s.transition("big", &[TaskStatus::Pending], TaskStatus::Failed, None)
            .await
            .unwrap();
        s.insert(second).await.unwrap();
        assert!(s.get(None, "big").await.unwrap().is_none());
        assert!(s.budget.used() <= 4096);
    }
}
