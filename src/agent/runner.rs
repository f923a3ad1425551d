//! Background work: the one place that spawns. Tasks (`POST /task`) go through a
//! [`TaskQueue`] (in memory, or Redis shared by the replicas) and run here with bounded
//! concurrency, each with a time limit and a cancellation token, so that every task ends
//! `completed`, `failed` or `cancelled`. Other long-lived work (the store janitor, streamed
//! turns) is spawned here too, so that shutdown can wait for all of it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AgentError, Agents, TurnEvent};
use crate::llm::{ChatRequest, LlmProvider, Message, count_tokens};
use crate::metrics::{Metrics, StateLabels};
use crate::runs::{NewRun, RunStatus, RunWriter, Runs, frames};
use crate::store::{QueueEntry, Task, TaskChange, TaskQueue, TaskStatus, TaskStore};

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
    agents: Arc<Agents>,
    tasks: Arc<dyn TaskStore>,
    /// Counts finished tasks by state.
    metrics: Arc<Metrics>,
    limits: RunnerLimits,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
    /// Cancellation tokens of the tasks not yet finished, by id.
    cancels: DashMap<String, CancellationToken>,
    /// Cancelled when shutdown begins: no new queue entries are taken.
    draining: CancellationToken,
    /// Cancelled when the shutdown's grace is over: what still runs is stopped.
    shutdown: CancellationToken,
    /// The queue: this process's own, or the one shared by every replica.
    queue: Arc<dyn TaskQueue>,
    /// Every task is a run: its events go to its log.
    runs: Runs,
}

/// What a task asks of the model.
pub struct NewTask {
    pub owner: String,
    pub prompt: String,
    pub task_type: String,
    pub model: String,
    /// The agent it runs as (`None`: the default); its instructions, model and tools apply.
    pub agent: Option<String>,
}

impl TaskRunner {
    pub fn new(
        llm: Arc<dyn LlmProvider>,
        agents: Arc<Agents>,
        tasks: Arc<dyn TaskStore>,
        metrics: Arc<Metrics>,
        limits: RunnerLimits,
        queue: Arc<dyn TaskQueue>,
        runs: Runs,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                llm,
                agents,
                tasks,
                metrics,
                slots: Arc::new(Semaphore::new(limits.concurrency)),
                limits,
                tracker: TaskTracker::new(),
                cancels: DashMap::new(),
                draining: CancellationToken::new(),
                shutdown: runs.shutdown_token(),
                queue,
                runs,
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

    /// A token cancelled when the shutdown's grace is over (streams still open end then).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Accepts a task, or refuses it when the queue is full.
    pub async fn submit(&self, new: NewTask) -> Result<Task, AgentError> {
        let inner = &self.inner;
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
            agent: new.agent,
            tool_calls: None,
            run_id: None,
        };
        if inner.queue.waiting().await? >= inner.limits.queue_size {
            return Err(queue_full(inner.limits.queue_size));
        }
        inner.tasks.insert(task.clone()).await?;
        if let Err(e) = inner.queue.push(&task.task_id).await {
            let failed = Some(format!("the task could not be queued: {e}"));
            let pending = [TaskStatus::Pending];
            let _ = inner
                .tasks
                .transition(&task.task_id, &pending, TaskStatus::Failed, failed)
                .await;
            return Err(e.into());
        }
        Ok(task)
    }

    /// Runs one task. It may start from `pending` or from `running` (a task taken over from a
    /// replica that died, or that stopped at the grace's end, is still `running`).
    async fn run(&self, id: &str, token: &CancellationToken) -> Outcome {
        let inner = &self.inner;
        let task = match inner.tasks.get(None, id).await {
            Ok(Some(t)) => t,
            // Expired or dropped: nothing is left to do.
            Ok(None) => return Outcome::Recorded,
            Err(e) => {
                tracing::error!(task_id = %id, error = %e, "could not read a task to run");
                return Outcome::Unrecorded;
            }
        };
        // Its run: its events as they come, for `GET /task/{id}/events`.
        let run = inner.runs.start(NewRun {
            owner: task.owner.clone(),
            conversation_id: None,
            agent: task
                .agent
                .clone()
                .unwrap_or_else(|| super::DEFAULT_AGENT.to_owned()),
            task_id: Some(id.to_owned()),
        });
        let unfinished = [TaskStatus::Pending, TaskStatus::Running];
        let change = TaskChange {
            run_id: Some(run.id().to_owned()),
            ..TaskChange::default()
        };
        let started = inner
            .tasks
            .transition_with(id, &unfinished, TaskStatus::Running, change)
            .await;
        let end = match started {
            Ok(Some(_)) => match self.execute(&task, token, &run).await {
                Some(end) => end,
                None => {
                    run.end_stopped();
                    return self.stopped(id).await;
                }
            },
            // Cancelled (or finished) before it started.
            Ok(None) => {
                let frame = frames::error_detail("the task was cancelled before it ran");
                run.end(RunStatus::Cancelled, frame, 0);
                return Outcome::Recorded;
            }
            Err(e) => Ended {
                status: TaskStatus::Failed,
                result: Some(e.to_string()),
                calls: None,
                tokens: 0,
            },
        };
        let change = TaskChange {
            result: end.result.clone(),
            tool_calls: end.calls,
            run_id: None,
        };
        let outcome = self.finish_with(id, end.status, change).await;
        // The run ends after the task's record, so that a follower told `done` finds it so.
        let (status, frame) = match end.status {
            TaskStatus::Completed => (
                RunStatus::Completed,
                frames::task_done(id, end.result.as_deref(), run.id()),
            ),
            TaskStatus::Cancelled => (
                RunStatus::Cancelled,
                frames::error_detail("the task was cancelled"),
            ),
            _ => (
                RunStatus::Failed,
                frames::error_detail(end.result.as_deref().unwrap_or("the task failed")),
            ),
        };
        run.end(status, frame, end.tokens);
        outcome
    }

    /// A task stopped by the end of the shutdown's grace: with the shared queue it goes back
    /// to `pending` for another replica; alone, it ends `failed`.
    async fn stopped(&self, id: &str) -> Outcome {
        if !self.inner.queue.shared() {
            let why = "the server shut down before the task finished";
            return self.finish(id, TaskStatus::Failed, Some(why.into())).await;
        }
        let back = [TaskStatus::Running];
        let pending = self
            .inner
            .tasks
            .transition(id, &back, TaskStatus::Pending, None);
        if let Err(e) = pending.await {
            // Handed back all the same: whoever takes it runs it from `running`.
            tracing::warn!(task_id = %id, error = %e, "could not set a stopped task back to pending");
        }
        Outcome::HandBack
    }

    /// Records a task's end, unless it ended already (cancelled meanwhile). A failed write is
    /// tried again a few times (the queue entry stays unacknowledged until it succeeds).
    async fn finish(&self, id: &str, status: TaskStatus, result: Option<String>) -> Outcome {
        let change = TaskChange {
            result,
            ..TaskChange::default()
        };
        self.finish_with(id, status, change).await
    }

    async fn finish_with(&self, id: &str, status: TaskStatus, change: TaskChange) -> Outcome {
        let inner = &self.inner;
        let from = [TaskStatus::Pending, TaskStatus::Running];
        let mut pause = Duration::from_millis(200);
        for attempt in 1..=3 {
            match inner
                .tasks
                .transition_with(id, &from, status, change.clone())
                .await
            {
                Ok(Some(_)) => {
                    inner
                        .metrics
                        .tasks_finished
                        .get_or_create(&StateLabels {
                            state: status.as_str(),
                        })
                        .inc();
                    return Outcome::Recorded;
                }
                // Cancelled through DELETE meanwhile; counted there.
                Ok(None) => return Outcome::Recorded,
                Err(e) if attempt == 3 => {
                    tracing::error!(task_id = %id, error = %e, "could not record the end of a task");
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        Outcome::Unrecorded
    }

    /// Takes entries (new ones, and ones whose runner stopped renewing them) while a slot is
    /// free, and listens for cancellations published by other replicas.
    pub fn start_workers(&self) {
        let queue = Arc::clone(&self.inner.queue);
        let runner = self.clone();
        let q = Arc::clone(&queue);
        let draining = self.inner.draining.clone();
        self.spawn(async move {
            // Shutdown stops the taking at once (a read in progress is dropped: its entry stays
            // in the queue for the others).
            tokio::select! {
                () = draining.cancelled() => {}
                () = runner.take_entries(q) => {}
            }
        });
        let runner = self.clone();
        self.spawn_until_shutdown(async move {
            loop {
                match queue.cancellations().await {
                    Ok(mut ids) => {
                        while let Some(id) = ids.next().await {
                            if let Some(token) = runner.inner.cancels.get(&id) {
                                token.cancel();
                            }
                            // The same channel carries `DELETE /runs/{id}` to the run's producer.
                            runner.inner.runs.cancel_here(&id);
                        }
                        tracing::warn!("cancellation channel lost; reconnecting");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cancellation channel unavailable; retrying")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    async fn take_entries(&self, q: Arc<dyn TaskQueue>) {
        // Entries handed back at shutdown are taken within a second, not a lease.
        let claim_every = (q.lease() / 2).min(Duration::from_secs(1));
        let mut last_claim = tokio::time::Instant::now();
        loop {
            let Ok(permit) = Arc::clone(&self.inner.slots).acquire_owned().await else {
                return;
            };
            let took = if last_claim.elapsed() >= claim_every {
                last_claim = tokio::time::Instant::now();
                match q.claim_stale().await {
                    Ok(Some(e)) => Ok(Some(e)),
                    Ok(None) => q.read(Duration::from_millis(500)).await,
                    Err(e) => Err(e),
                }
            } else {
                q.read(Duration::from_millis(500)).await
            };
            match took {
                Ok(Some(entry)) => {
                    let runner = self.clone();
                    let q = Arc::clone(&q);
                    self.spawn(async move {
                        runner.run_entry(&*q, entry).await;
                        drop(permit);
                    });
                }
                Ok(None) => drop(permit),
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, "task queue unavailable; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Runs one queue entry while renewing its lease. The entry is acknowledged only once the
    /// task's final state is written; if that write fails, it stays pending, and another
    /// replica takes it over after the lease. If the lease is lost (another replica took the
    /// entry over), this replica stops at once and writes nothing: one runner at a time.
    async fn run_entry(&self, queue: &dyn TaskQueue, entry: QueueEntry) {
        let inner = &self.inner;
        let token = inner.shutdown.child_token();
        inner.cancels.insert(entry.task_id.clone(), token.clone());
        let heartbeat = async {
            loop {
                tokio::time::sleep(queue.lease() / 3).await;
                match queue.renew(&entry.entry).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(task_id = %entry.task_id, "task lease lost to another replica; stopping here");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not renew a task lease"),
                }
            }
        };
        tokio::select! {
            outcome = self.run(&entry.task_id, &token) => match outcome {
                Outcome::Recorded => {
                    if let Err(e) = queue.done(&entry.entry).await {
                        tracing::warn!(error = %e, "could not acknowledge a finished task");
                    }
                }
                Outcome::Unrecorded => {}
                Outcome::HandBack => {
                    if let Err(e) = queue.hand_back(&entry.entry).await {
                        tracing::warn!(error = %e, "could not hand a task back");
                    }
                }
            },
            () = heartbeat => {}
        }
        inner.cancels.remove(&entry.task_id);
    }

    /// Runs a task's turn, its events going to its run: `None` when stopped by the end of the
    /// shutdown's grace; else how it ended.
    async fn execute(
        &self,
        task: &Task,
        token: &CancellationToken,
        log: &RunWriter,
    ) -> Option<Ended> {
        let inner = &self.inner;
        let name = task.agent.as_deref().unwrap_or(super::DEFAULT_AGENT);
        let Some(agent) = inner.agents.get(name).cloned() else {
            let why = format!("the agent `{name}` is no longer configured");
            return Some(Ended::failed(why));
        };
        let system = agent.instructions.clone().unwrap_or_else(|| {
            format!(
                "You are an expert assistant. Perform this {} task thoroughly.",
                task.task_type
            )
        });
        let messages = vec![
            Message::new("system", system),
            Message::new("user", task.prompt.clone()),
        ];
        let model = agent.model.as_deref().unwrap_or(&task.model);
        let temperature = agent.temperature.unwrap_or(0.7);
        // The request without its messages: the loop owns those.
        let max_tokens = agent.max_tokens.unwrap_or(1000);
        let mut req = ChatRequest::new(model, Vec::new(), temperature, max_tokens);
        let limit = inner.limits.timeout;
        let run = async {
            if !agent.has_tools() {
                let sent: u64 = messages.iter().map(|m| count_tokens(&m.content)).sum();
                req.messages = crate::llm::Messages::Turn(messages);
                let mut upstream = inner.llm.stream(req).await?;
                let (mut text, mut usage) = (String::new(), None);
                while let Some(chunk) = upstream.next().await {
                    let chunk = chunk?;
                    usage = chunk.usage.or(usage);
                    if !chunk.delta.is_empty() {
                        text.push_str(&chunk.delta);
                        log.push(frames::render(TurnEvent::Delta(chunk.delta), None));
                    }
                }
                let tokens = usage.map_or_else(|| sent + count_tokens(&text), |u| u.total_tokens);
                return Ok::<_, AgentError>((text, None, tokens));
            }
            let deadline = tokio::time::Instant::now() + limit;
            let agents = &inner.agents;
            let drive = super::driver::Drive::new(
                inner.llm.as_ref(),
                agents,
                &agent,
                &req,
                deadline,
                limit,
            );
            let done = drive.run(messages, None, &mut ToLog(log)).await?;
            let calls: Vec<super::ToolCallView> = done
                .calls
                .iter()
                .map(|c| super::ToolCallView::call(&c.call).with_outcome(&c.outcome))
                .collect();
            let calls =
                (!calls.is_empty()).then(|| serde_json::to_string(&calls).unwrap_or_default());
            Ok((done.response, calls, done.tokens_used))
        };
        // Cancelled through `DELETE /task/{id}`, or `DELETE /runs/{id}` of its run.
        let cancelled = async {
            tokio::select! {
                () = token.cancelled() => {}
                () = log.stopped() => {}
            }
        };
        // `None`: stopped by the end of the shutdown's grace.
        Some(tokio::select! {
            () = cancelled => {
                if inner.shutdown.is_cancelled() {
                    return None;
                }
                Ended { status: TaskStatus::Cancelled, result: None, calls: None, tokens: 0 }
            }
            res = tokio::time::timeout(limit, run) => match res {
                Ok(Ok((text, calls, tokens))) => Ended { status: TaskStatus::Completed, result: Some(text), calls, tokens },
                Ok(Err(e)) => Ended::failed(e.to_string()),
                Err(_) => Ended::failed(format!("the task took longer than {}s", limit.as_secs())),
            }
        })
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
        if changed.is_some() && inner.queue.shared() {
            // The replica running it may be another one.
            if let Err(e) = inner.queue.publish_cancel(id).await {
                tracing::warn!(task_id = %id, error = %e, "could not announce a cancellation");
            }
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

    /// (waiting in the queue where it is known at once, running here), for `/metrics`.
    pub fn counts(&self) -> (usize, usize) {
        (self.inner.queue.waiting_now().unwrap_or(0), self.active())
    }

    /// Shutdown, first step: stops taking queue entries at once (running tasks go on).
    pub fn drain(&self) {
        self.inner.tracker.close();
        self.inner.draining.cancel();
    }

    /// Waits until no task is running or waiting here.
    pub async fn idle(&self) {
        while !self.inner.cancels.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shutdown, at the end of the grace: stops what still runs (a task alone ends `failed`;
    /// with the shared queue it is handed back for another replica), ends the streams still
    /// open and the background loops. Then [`TaskRunner::wait`] for them to record it.
    pub fn stop(&self) {
        self.drain();
        self.inner.shutdown.cancel();
    }

    /// Waits for every spawned job to end (after [`TaskRunner::stop`]).
    pub async fn wait(&self) {
        self.inner.tracker.wait().await;
    }
}

/// How a task's turn ended.
struct Ended {
    status: TaskStatus,
    result: Option<String>,
    /// Its tool calls (JSON text), when its agent called any.
    calls: Option<String>,
    tokens: u64,
}

impl Ended {
    fn failed(why: String) -> Self {
        Self {
            status: TaskStatus::Failed,
            result: Some(why),
            calls: None,
            tokens: 0,
        }
    }
}

/// A task's agent loop, as the driver sees it: every event goes to the task's run.
struct ToLog<'a>(&'a RunWriter);

#[async_trait::async_trait]
impl super::driver::Events for ToLog<'_> {
    fn streamed(&self) -> bool {
        true
    }
    async fn send(&mut self, event: TurnEvent) -> bool {
        self.0.push(frames::render(event, None));
        true
    }
}

/// How a task's run ended, for its queue entry.
enum Outcome {
    /// Its final state is written (or nothing is left to write): acknowledge the entry.
    Recorded,
    /// Its final state could not be written: leave the entry for another replica.
    Unrecorded,
    /// Stopped by shutdown before it finished: hand the entry back at once.
    HandBack,
}

fn queue_full(size: usize) -> AgentError {
    AgentError::Busy(format!(
        "the task queue is full ({size} waiting); retry later"
    ))
}
