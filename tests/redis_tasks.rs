//! Tasks on the shared Redis queue beyond "Redis is down": a final write that fails, a failure
//! between the final write and the acknowledgement, a lease lost to another replica, and a
//! Redis that hangs (a paused redis-server). The runner is built here on the real Redis stores,
//! with a task store that fails on purpose where a test needs it.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_api::agent::TaskRunner;
use agent_api::agent::runner::{NewTask, RunnerLimits};
use agent_api::llm::http::ProxySettings;
use agent_api::llm::{LlmProvider, OpenAiProvider};
use agent_api::metrics::Metrics;
use agent_api::store::redis::{RedisSettings, RedisStores};
use agent_api::store::{
    StoreError, StoreLimits, Task, TaskChange, TaskQueue, TaskStatus, TaskStore,
};
use async_trait::async_trait;
use common::{Behaviour, FakeOpenAi, PrivateRedis, ServerProcess, redis_url};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(1);

struct Setup {
    stores: RedisStores,
    prefix: String,
}

impl Setup {
    /// A connection of the test's own, to look at the queue from outside.
    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = self.stores.queue.client();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    /// The queue's stream.
    fn queue_key(&self) -> String {
        format!("{}tasks:queue", self.prefix)
    }
}

fn setup() -> Setup {
    let prefix = format!("tasks-{}:", uuid::Uuid::new_v4().simple());
    let stores = RedisStores::connect(
        RedisSettings {
            url: redis_url(),
            prefix: prefix.clone(),
            limits: StoreLimits::new(100, 100, Duration::from_secs(60)),
        },
        LEASE,
        Duration::from_secs(60),
        1000,
    )
    .unwrap();
    Setup { stores, prefix }
}

fn llm(fake: &FakeOpenAi) -> Arc<dyn LlmProvider> {
    Arc::new(
        OpenAiProvider::new(
            &fake.url,
            None,
            &ProxySettings::default(),
            Duration::from_secs(30),
        )
        .unwrap(),
    )
}

fn runner(llm: Arc<dyn LlmProvider>, tasks: Arc<dyn TaskStore>, s: &Setup) -> TaskRunner {
    let config = agent_api::config::Config::for_tests();
    let metrics = Arc::new(Metrics::new());
    let agents = Arc::new(agent_api::agent::Agents::new(&config, Arc::clone(&metrics)));
    let runner = TaskRunner::new(
        llm,
        agents,
        tasks,
        metrics,
        RunnerLimits {
            concurrency: 2,
            queue_size: 10,
            timeout: Duration::from_secs(30),
        },
        s.stores.queue.clone(),
        agent_api::runs::Runs::new(
            agent_api::runs::RunSettings::from_config(&config),
            Some(s.stores.runs.clone()),
            tokio_util::sync::CancellationToken::new(),
        ),
    );
    runner.start_workers();
    runner
}

fn new_task() -> NewTask {
    NewTask {
        owner: "k".into(),
        prompt: "work".into(),
        task_type: "general".into(),
        model: "gpt-4o-mini".into(),
        agent: None,
    }
}

/// A task store whose writes of a final state fail while `fail_final` > 0.
struct FlakyTasks {
    inner: Arc<dyn TaskStore>,
    fail_final: AtomicUsize,
}

#[async_trait]
impl TaskStore for FlakyTasks {
    async fn insert(&self, task: Task) -> Result<(), StoreError> {
        self.inner.insert(task).await
    }
    async fn get(&self, owner: Option<&str>, id: &str) -> Result<Option<Task>, StoreError> {
        self.inner.get(owner, id).await
    }
    async fn list(&self, owner: &str, limit: usize) -> Result<Vec<Task>, StoreError> {
        self.inner.list(owner, limit).await
    }
    async fn transition_with(
        &self,
        id: &str,
        from: &[TaskStatus],
        to: TaskStatus,
        change: TaskChange,
    ) -> Result<Option<Task>, StoreError> {
        if to.is_final()
            && self
                .fail_final
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::Unavailable("injected".into()));
        }
        self.inner.transition_with(id, from, to, change).await
    }
}

async fn status(tasks: &dyn TaskStore, id: &str) -> TaskStatus {
    tasks.get(None, id).await.unwrap().unwrap().status
}

async fn wait_for(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The queue's pending entries: (entry id, consumer).
async fn pending(s: &Setup) -> Vec<(String, String)> {
    let mut c = s.conn().await;
    let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(s.queue_key())
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut c)
        .await
        .unwrap();
    reply.into_iter().map(|(id, who, _, _)| (id, who)).collect()
}

#[tokio::test]
async fn a_task_whose_final_write_fails_stays_queued_and_is_finished_after_the_lease() {
    let fake = FakeOpenAi::start().await;
    let s = setup();
    let tasks = Arc::new(FlakyTasks {
        inner: s.stores.tasks.clone(),
        // Every try of the first run fails.
        fail_final: AtomicUsize::new(3),
    });
    let runner = runner(llm(&fake), tasks.clone(), &s);
    let task = runner.submit(new_task()).await.unwrap();
    let id = task.task_id;
    // The first run could not record its end: the entry is not acknowledged, and after the
    // lease the task is taken over and finished (before: acknowledged, `running` forever).
    assert!(
        wait_for(10, async || status(&*tasks, &id).await
            == TaskStatus::Completed)
        .await,
        "still {:?}",
        status(&*tasks, &id).await
    );
    assert!(wait_for(5, async || pending(&s).await.is_empty()).await);
    assert_eq!(s.stores.queue.waiting().await.unwrap(), 0);
}

#[tokio::test]
async fn an_entry_whose_task_is_final_but_unacknowledged_is_acknowledged_without_a_rerun() {
    let fake = FakeOpenAi::start().await;
    let s = setup();
    // A replica wrote the final state and died before its acknowledgement.
    let now = chrono::Utc::now();
    let task = Task {
        task_id: uuid::Uuid::new_v4().to_string(),
        owner: "k".into(),
        prompt: "done already".into(),
        task_type: "general".into(),
        model: "m".into(),
        status: TaskStatus::Pending,
        result: None,
        created_at: now,
        completed_at: None,
        agent: None,
        tool_calls: None,
        run_id: None,
    };
    s.stores.tasks.insert(task.clone()).await.unwrap();
    s.stores.queue.push(&task.task_id).await.unwrap();
    let mut c = s.conn().await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("dead-replica")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(s.queue_key())
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    let all = [TaskStatus::Pending, TaskStatus::Running];
    s.stores
        .tasks
        .transition(
            &task.task_id,
            &all,
            TaskStatus::Completed,
            Some("kept".into()),
        )
        .await
        .unwrap()
        .unwrap();
    let _runner = runner(llm(&fake), s.stores.tasks.clone(), &s);
    assert!(wait_for(10, async || pending(&s).await.is_empty()).await);
    assert_eq!(s.stores.queue.waiting().await.unwrap(), 0);
    let t = s
        .stores
        .tasks
        .get(None, &task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (t.status, t.result.as_deref()),
        (TaskStatus::Completed, Some("kept"))
    );
    assert!(fake.requests().is_empty(), "a finished task was run again");
}

#[tokio::test]
async fn a_replica_that_lost_its_lease_stops_and_writes_nothing() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_millis(2500),
        ..Default::default()
    })
    .await;
    let s = setup();
    let runner = runner(llm(&fake), s.stores.tasks.clone(), &s);
    let task = runner.submit(new_task()).await.unwrap();
    let id = task.task_id;
    assert!(wait_for(5, async || !fake.requests().is_empty()).await);
    // Another replica takes the entry over (as it would after this one missed its renewals),
    // and keeps renewing it as its own.
    let (entry, _) = pending(&s).await.pop().unwrap();
    let mut c = s.conn().await;
    let key = s.queue_key();
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&key)
            .arg("workers")
            .arg("other-replica")
            .arg(0)
            .arg(&entry)
            .arg("JUSTID")
            .query_async(&mut c)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // This replica sees it at its next renewal, stops, and writes nothing; the entry stays the
    // other's (before: the renewal took it back, and both ran the task).
    assert_eq!(status(&*s.stores.tasks, &id).await, TaskStatus::Running);
    assert_eq!(pending(&s).await, vec![(entry, "other-replica".to_owned())]);
    assert_eq!(runner.active(), 0);
    assert_eq!(
        fake.cancelled() + fake.finished(),
        0,
        "a unary call is not a stream"
    );
}

#[tokio::test]
async fn a_paused_redis_gets_503_in_bounded_time_and_the_server_recovers() {
    let redis = PrivateRedis::start(common::free_port());
    let fake = FakeOpenAi::start().await;
    let store = redis.url();
    let server = ServerProcess::start(&[
        ("OPENAI_BASE_URL", fake.url.as_str()),
        ("STORE", store.as_str()),
    ]);
    let client = common::client();
    let chat = |msg: &str| {
        client
            .post(format!("{}/chat", server.url))
            .json(&json!({"message": msg, "conversation_id": "c1"}))
            .send()
    };
    assert_eq!(chat("before").await.unwrap().status(), 200);
    redis.pause(true);
    let started = Instant::now();
    let res = chat("during").await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    // Liveness never waits on the store.
    let started = Instant::now();
    let health = client
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    redis.pause(false);
    let mut ok = false;
    for _ in 0..50 {
        if chat("after").await.unwrap().status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "not recovered 10 s after Redis resumed");
}

#[tokio::test]
async fn sigterm_hands_an_unfinished_task_to_another_replica_at_once() {
    let fake = FakeOpenAi::start_with(Behaviour {
        first_chunk_delay: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let prefix = format!("handback-{}:", uuid::Uuid::new_v4().simple());
    let url = redis_url();
    let envs = [
        ("OPENAI_BASE_URL", fake.url.as_str()),
        ("OPENAI_API_KEY", "sk-test"),
        ("STORE", url.as_str()),
        ("STORE_PREFIX", prefix.as_str()),
        // A lease far longer than the test: the hand-back, not the lease, moves the task.
        ("TASK_LEASE_SECS", "60"),
        ("SHUTDOWN_GRACE_SECS", "2"),
    ];
    let a = ServerProcess::start(&envs);
    let client = common::client();
    let (status, task) = common::answer(
        client
            .post(format!("{}/task", a.url))
            .json(&json!({"prompt": "hand me on"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{task}");
    let path = format!("/task/{}", task["task_id"].as_str().unwrap());
    assert!(
        wait_for(5, async || !fake.requests().is_empty()).await,
        "never ran"
    );
    let b = ServerProcess::start(&envs);
    fake.set(|b| b.first_chunk_delay = Duration::ZERO);
    let signalled = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &a.pid()])
        .status()
        .unwrap();
    assert!(sent.success());
    let done = wait_for(10, async || {
        let (_, t) =
            common::answer(client.get(format!("{}{path}", b.url)).send().await.unwrap()).await;
        t["status"] == "completed"
    })
    .await;
    assert!(done, "not finished by the other replica");
    // The grace (2 s) and a second for the other replica to take it: not the 60 s lease, and
    // not `failed` by the replica that stopped.
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(fake.requests().len(), 2);
}
