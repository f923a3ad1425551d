//! Background work: the one place that spawns. Tasks (`POST /task`) run here with bounded
//! concurrency and a bounded queue, each with a time limit and a cancellation token, so that
//! every task ends `completed`, `failed` or `cancelled`. Other long-lived work (the store
//! janitor) is spawned here too, so that shutdown can wait for all of it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::AgentError;
use crate::llm::{ChatRequest, LlmProvider, Message};
use crate::metrics::{Metrics, StateLabels};
use crate::store::{Task, TaskStatus, TaskStore};

#[derive(Debug, Clone)]
pub struct RunnerLimits {
    pub concurrency: usize,
    pub queue_size: usize,
    pub timeout: Duration,
}

/// Cheap to clone; every clone drives the same runner.
#[derive(Clone)]
pub struct TaskRunner {
    inner: Arc<Inner>,
}

struct Inner {
    llm: Arc<dyn LlmProvider>,
    tasks: Arc<dyn TaskStore>,
    /// Counts finished tasks by state.
    metrics: Arc<Metrics>,
    limits: RunnerLimits,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
    /// Tasks accepted but not yet running; bounded by `limits.queue_size`.
    queued: AtomicUsize,
    /// Cancellation tokens of the tasks not yet finished, by id.
    cancels: DashMap<String, CancellationToken>,
    /// Cancelled when the server stops for good.
    shutdown: CancellationToken,
}

/// What a task asks of the model.
pub struct NewTask {
    pub owner: String,
    pub prompt: String,
    pub task_type: String,
    pub model: String,
}

impl TaskRunner {
    pub fn new(
        llm: Arc<dyn LlmProvider>,
        tasks: Arc<dyn TaskStore>,
        metrics: Arc<Metrics>,
        limits: RunnerLimits,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                llm,
                tasks,
                metrics,
                slots: Arc::new(Semaphore::new(limits.concurrency)),
                limits,
                tracker: TaskTracker::new(),
                queued: AtomicUsize::new(0),
                cancels: DashMap::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Spawns tracked background work that shutdown waits for.
    #[expect(
        clippy::disallowed_methods,
        reason = "the runner is the one place that spawns"
    )]
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tracker.spawn(fut);
    }

    /// Spawns work that must stop when the server stops (loops such as the janitor).
    pub fn spawn_until_shutdown<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.inner.shutdown.clone();
        self.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    /// A token cancelled when the server stops for good.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Accepts a task, or refuses it when the queue is full.
    pub async fn submit(&self, new: NewTask) -> Result<Task, AgentError> {
        let inner = &self.inner;
        let queued = inner.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= inner.limits.queue_size {
            inner.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(AgentError::Busy(format!(
                "the task queue is full ({} waiting); retry later",
                inner.limits.queue_size
            )));
        }
        let task = Task {
            task_id: uuid::Uuid::new_v4().to_string(),
            owner: new.owner,
            prompt: new.prompt,
            task_type: new.task_type,
            model: new.model,
            status: TaskStatus::Pending,
            result: None,
            created_at: chrono::Utc::now(),
            completed_at: None,
        };
        if let Err(e) = inner.tasks.insert(task.clone()).await {
            inner.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(e.into());
        }
        let token = inner.shutdown.child_token();
        inner.cancels.insert(task.task_id.clone(), token.clone());
        let runner = self.clone();
        let id = task.task_id.clone();
        let (prompt, task_type, model) = (
            task.prompt.clone(),
            task.task_type.clone(),
            task.model.clone(),
        );
        self.spawn(async move {
            runner.run(id, prompt, task_type, model, token).await;
        });
        Ok(task)
    }

    async fn run(
        &self,
        id: String,
        prompt: String,
        task_type: String,
        model: String,
        token: CancellationToken,
    ) {
        let inner = &self.inner;
        let permit = tokio::select! {
            p = Arc::clone(&inner.slots).acquire_owned() => p.ok(),
            _ = token.cancelled() => None,
        };
        inner.queued.fetch_sub(1, Ordering::SeqCst);
        let outcome = match permit {
            None => Some((TaskStatus::Cancelled, None)),
            Some(_permit) => {
                let started = inner
                    .tasks
                    .transition(&id, &[TaskStatus::Pending], TaskStatus::Running, None)
                    .await;
                match started {
                    Ok(Some(_)) => Some(self.execute(&prompt, &task_type, &model, &token).await),
                    // Cancelled (or gone) before it started.
                    Ok(None) => None,
                    Err(e) => Some((TaskStatus::Failed, Some(e.to_string()))),
                }
            }
        };
        if let Some((status, result)) = outcome {
            let from = [TaskStatus::Pending, TaskStatus::Running];
            match inner.tasks.transition(&id, &from, status, result).await {
                Ok(Some(_)) => {
                    inner
                        .metrics
                        .tasks_finished
                        .get_or_create(&StateLabels {
                            state: status.as_str(),
                        })
                        .inc();
                }
                // Cancelled through DELETE meanwhile; counted there.
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(task_id = %id, error = %e, "could not record the end of a task")
                }
            };
        }
        inner.cancels.remove(&id);
    }

    async fn execute(
        &self,
        prompt: &str,
        task_type: &str,
        model: &str,
        token: &CancellationToken,
    ) -> (TaskStatus, Option<String>) {
        let inner = &self.inner;
        let messages = [
            Message::new(
                "system",
                format!("You are an expert assistant. Perform this {task_type} task thoroughly."),
            ),
            Message::new("user", prompt),
        ];
        let req = ChatRequest::new(model, &messages, 0.7, 1000);
        let limit = inner.limits.timeout;
        tokio::select! {
            _ = token.cancelled() => {
                if inner.shutdown.is_cancelled() {
                    (TaskStatus::Failed, Some("the server shut down before the task finished".into()))
                } else {
                    (TaskStatus::Cancelled, None)
                }
            }
            res = tokio::time::timeout(limit, inner.llm.complete(req)) => match res {
                Ok(Ok(done)) => (TaskStatus::Completed, Some(done.content)),
                Ok(Err(e)) => (TaskStatus::Failed, Some(e.to_string())),
                Err(_) => (TaskStatus::Failed, Some(format!("the task took longer than {}s", limit.as_secs()))),
            }
        }
    }

    /// Cancels a pending or running task of `owner`. `None` when it is unknown to this owner;
    /// a finished task is returned unchanged.
    pub async fn cancel(&self, owner: &str, id: &str) -> Result<Option<Task>, AgentError> {
        let inner = &self.inner;
        let Some(task) = inner.tasks.get(Some(owner), id).await? else {
            return Ok(None);
        };
        let from = [TaskStatus::Pending, TaskStatus::Running];
        let changed = inner
            .tasks
            .transition(id, &from, TaskStatus::Cancelled, None)
            .await?;
        if let Some(token) = inner.cancels.get(id) {
            token.cancel();
        }
        if changed.is_some() {
            inner
                .metrics
                .tasks_finished
                .get_or_create(&StateLabels { state: "cancelled" })
                .inc();
        }
        Ok(Some(changed.unwrap_or(task)))
    }

    /// Tasks accepted and not yet finished.
    pub fn active(&self) -> usize {
        self.inner.cancels.len()
    }

    /// (waiting for a slot, running), for `/metrics`.
    pub fn counts(&self) -> (usize, usize) {
        let queued = self.inner.queued.load(Ordering::SeqCst);
        (queued, self.active().saturating_sub(queued))
    }

    /// Stops accepting work and waits up to `grace` for what runs; then cancels the rest
    /// (unfinished tasks end `failed`) and waits for them to record it.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.tracker.close();
        // Loops such as the janitor never end by themselves.
        let tasks_done = async {
            while !inner.cancels.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(grace, tasks_done).await;
        inner.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), inner.tracker.wait()).await;
    }
}
