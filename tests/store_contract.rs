//! One contract suite for every store implementation: memory always, Redis through `REDIS_URL`
//! (default `redis://127.0.0.1:6379`). An unreachable Redis fails the suite: it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agent_api::llm::Message;
use agent_api::store::redis::{RedisSettings, RedisStores};
use agent_api::store::{
    ConversationStore, MemoryQueue, StoreError, StoreLimits, Task, TaskQueue, TaskStatus, TaskStore,
};
use common::redis_url;

/// How long the suite's turns wait for a busy conversation.
const WAIT: Duration = Duration::from_secs(10);

/// The task queue's lease in the suite.
const LEASE: Duration = Duration::from_millis(300);

struct Stores {
    conversations: Arc<dyn ConversationStore>,
    tasks: Arc<dyn TaskStore>,
    /// Two runners' views of one task queue (memory: one process, so the same queue twice;
    /// Redis: two replicas).
    queues: [Arc<dyn TaskQueue>; 2],
}

/// The limits of the suite: generous, except where a test says otherwise.
fn limits() -> StoreLimits {
    StoreLimits {
        max_tasks: 100,
        ..StoreLimits::new(100, 25, Duration::from_secs(60))
    }
}

fn memory(limits: StoreLimits) -> Stores {
    let (conversations, tasks) = agent_api::store::memory::stores(&limits);
    let queue: Arc<dyn TaskQueue> = Arc::new(MemoryQueue::new(LEASE));
    Stores {
        conversations: Arc::new(conversations),
        tasks: Arc::new(tasks),
        queues: [Arc::clone(&queue), queue],
    }
}

async fn redis(limits: StoreLimits) -> Stores {
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let connect = || {
        RedisStores::connect(
            RedisSettings {
                url: redis_url(),
                prefix: prefix.clone(),
                limits: limits.clone(),
            },
            LEASE,
            Duration::from_secs(60),
            1000,
        )
        .unwrap()
    };
    let (stores, other) = (connect(), connect());
    stores
        .conversations
        .ready()
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is required for this suite: {e}", redis_url()));
    Stores {
        conversations: stores.conversations,
        tasks: stores.tasks,
        queues: [stores.queue, other.queue],
    }
}

fn turn(user: &str) -> Vec<Message> {
    vec![
        Message::new("user", user),
        Message::new("assistant", format!("re: {user}")),
    ]
}

async fn conversation_lifecycle(s: Stores) {
    let c = &s.conversations;
    // A first turn that is dropped leaves nothing behind.
    drop(
        c.begin_turn("alice", "conv-1", WAIT)
            .await
            .unwrap()
            .unwrap(),
    );
    assert!(c.get("alice", "conv-1").await.unwrap().is_none());
    assert!(c.list("alice", 10).await.unwrap().is_empty());

    let t = c
        .begin_turn("alice", "conv-1", WAIT)
        .await
        .unwrap()
        .unwrap();
    assert!(t.history().is_empty());
    let mut first = vec![Message::new("system", "sys")];
    first.extend(turn("one"));
    t.commit(first).await.unwrap();
    let t = c
        .begin_turn("alice", "conv-1", WAIT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.history().len(), 3);
    assert_eq!(t.history()[0], Message::new("system", "sys"));
    t.commit(turn("two")).await.unwrap();

    let conv = c.get("alice", "conv-1").await.unwrap().unwrap();
    assert_eq!(conv.messages.len(), 5);
    assert_eq!(conv.messages[4].content, "re: two");
    assert!(conv.updated_at >= conv.created_at);

    // Another owner sees nothing and cannot take it over: the same id is a new conversation
    // of its own (that this one fails to commit leaves nothing).
    assert!(c.get("bob", "conv-1").await.unwrap().is_none());
    let theirs = c.begin_turn("bob", "conv-1", WAIT).await.unwrap().unwrap();
    assert!(theirs.history().is_empty());
    drop(theirs);
    assert!(c.list("bob", 10).await.unwrap().is_empty());
    assert!(!c.delete("bob", "conv-1").await.unwrap());

    let list = c.list("alice", 10).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, "conv-1");
    assert_eq!(list[0].message_count, 5);
    assert!(c.count().await.unwrap() >= 1);

    assert!(c.delete("alice", "conv-1").await.unwrap());
    assert!(c.get("alice", "conv-1").await.unwrap().is_none());
    assert!(!c.delete("alice", "conv-1").await.unwrap());
}

async fn history_is_bounded_and_keeps_the_system_prompt(s: Stores) {
    let c = &s.conversations;
    let t = c.begin_turn("a", "long", WAIT).await.unwrap().unwrap();
    let mut first = vec![Message::new("system", "sys")];
    first.extend(turn("0"));
    t.commit(first).await.unwrap();
    for i in 1..15 {
        let t = c.begin_turn("a", "long", WAIT).await.unwrap().unwrap();
        t.commit(turn(&i.to_string())).await.unwrap();
    }
    let conv = c.get("a", "long").await.unwrap().unwrap();
    assert!(conv.messages.len() <= 25, "{}", conv.messages.len());
    assert!(conv.messages.len() >= 23, "{}", conv.messages.len());
    assert_eq!(conv.messages[0].role, "system");
    assert_eq!(conv.messages[1].role, "user");
    assert_eq!(conv.messages.last().unwrap().content, "re: 14");
}

async fn turns_are_serialized(s: Stores) {
    let c = Arc::clone(&s.conversations);
    let t = c.begin_turn("a", "busy", WAIT).await.unwrap().unwrap();
    t.commit(vec![Message::new("system", "s")]).await.unwrap();
    let workers = (0..10).map(|i| {
        let c = Arc::clone(&c);
        async move {
            let t = c.begin_turn("a", "busy", WAIT).await.unwrap().unwrap();
            let seen = t.history().len();
            tokio::time::sleep(Duration::from_millis(5)).await;
            t.commit(turn(&i.to_string())).await.unwrap();
            seen
        }
    });
    let mut seen = futures::future::join_all(workers).await;
    seen.sort();
    // Each turn saw every turn before it: 1, 3, 5, ...
    assert_eq!(seen, (0..10).map(|i| 1 + 2 * i).collect::<Vec<_>>());
}

fn task(id: &str, owner: &str) -> Task {
    Task {
        task_id: id.into(),
        owner: owner.into(),
        prompt: "p".into(),
        task_type: "analysis".into(),
        model: "m".into(),
        status: TaskStatus::Pending,
        result: None,
        created_at: chrono::Utc::now(),
        completed_at: None,
        agent: None,
        tool_calls: None,
        run_id: None,
    }
}

async fn task_lifecycle(s: Stores) {
    let t = &s.tasks;
    t.insert(task("t1", "alice")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    t.insert(task("t2", "alice")).await.unwrap();
    assert_eq!(
        t.get(Some("alice"), "t1").await.unwrap().unwrap().status,
        TaskStatus::Pending
    );
    assert!(t.get(Some("bob"), "t1").await.unwrap().is_none());
    assert!(t.get(None, "t1").await.unwrap().is_some());
    let ids: Vec<String> = t
        .list("alice", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(ids, ["t2", "t1"], "newest first");
    assert!(t.list("bob", 10).await.unwrap().is_empty());

    let running = t
        .transition("t1", &[TaskStatus::Pending], TaskStatus::Running, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    assert!(running.completed_at.is_none());
    // Compare-and-set: a second start is refused.
    assert!(
        t.transition("t1", &[TaskStatus::Pending], TaskStatus::Running, None)
            .await
            .unwrap()
            .is_none()
    );
    let cancelled = t
        .transition(
            "t1",
            &[TaskStatus::Pending, TaskStatus::Running],
            TaskStatus::Cancelled,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert!(cancelled.completed_at.is_some());
    // A cancelled task never becomes completed.
    let late = t
        .transition(
            "t1",
            &[TaskStatus::Running],
            TaskStatus::Completed,
            Some("late".into()),
        )
        .await
        .unwrap();
    assert!(late.is_none());
    let done = t
        .transition(
            "t2",
            &[TaskStatus::Pending],
            TaskStatus::Failed,
            Some("boom".into()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.result.as_deref(), Some("boom"));
    let reread = t.get(Some("alice"), "t2").await.unwrap().unwrap();
    assert_eq!(reread, done);
    assert!(
        t.transition("nope", &[TaskStatus::Pending], TaskStatus::Running, None)
            .await
            .unwrap()
            .is_none()
    );
}

/// One committed first turn of `owner` on `id`.
async fn converse(c: &Arc<dyn ConversationStore>, owner: &str, id: &str) {
    let t = c.begin_turn(owner, id, WAIT).await.unwrap().unwrap();
    let mut first = vec![Message::new("system", "sys")];
    first.extend(turn(id));
    t.commit(first).await.unwrap();
}

async fn exists(c: &Arc<dyn ConversationStore>, owner: &str, id: &str) -> bool {
    c.get(owner, id).await.unwrap().is_some()
}

async fn ids_are_per_key(s: Stores) {
    let c = &s.conversations;
    converse(c, "alice", "support-1").await;
    converse(c, "bob", "support-1").await;
    let t = c
        .begin_turn("bob", "support-1", WAIT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.history().len(), 3, "bob's own history");
    t.commit(turn("more")).await.unwrap();
    assert_eq!(
        c.get("alice", "support-1")
            .await
            .unwrap()
            .unwrap()
            .messages
            .len(),
        3
    );
    assert_eq!(
        c.get("bob", "support-1")
            .await
            .unwrap()
            .unwrap()
            .messages
            .len(),
        5
    );
    assert!(c.delete("alice", "support-1").await.unwrap());
    assert!(exists(c, "bob", "support-1").await);
}

async fn failed_first_turns_take_no_room(s: Stores) {
    let c = &s.conversations;
    for i in 0..5 {
        converse(c, "victim", &format!("v{i}")).await;
    }
    for i in 0..30 {
        drop(
            c.begin_turn("attacker", &format!("x{i}"), WAIT)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for i in 0..5 {
        assert!(exists(c, "victim", &format!("v{i}")).await, "v{i}");
    }
    assert_eq!(c.count().await.unwrap(), 5);
    assert!(c.list("attacker", 100).await.unwrap().is_empty());
}

async fn a_key_at_its_quota_evicts_its_own_oldest(s: Stores) {
    let c = &s.conversations;
    for i in 0..3 {
        converse(c, "b", &format!("c{i}")).await;
    }
    for i in 0..5 {
        converse(c, "a", &format!("c{i}")).await;
    }
    assert!(!exists(c, "a", "c0").await && !exists(c, "a", "c1").await);
    for i in 2..5 {
        assert!(exists(c, "a", &format!("c{i}")).await);
    }
    for i in 0..3 {
        assert!(exists(c, "b", &format!("c{i}")).await, "b lost c{i}");
    }
    assert_eq!(c.list("a", 100).await.unwrap().len(), 3);
}

async fn a_key_whose_conversations_are_all_busy_is_refused_with_quota(s: Stores) {
    let c = &s.conversations;
    for i in 0..3 {
        converse(c, "a", &format!("c{i}")).await;
    }
    let _held: Vec<_> = futures::future::join_all((0..3).map(|i| async move {
        c.begin_turn("a", &format!("c{i}"), WAIT)
            .await
            .unwrap()
            .unwrap()
    }))
    .await;
    assert!(matches!(
        c.begin_turn("a", "new", WAIT).await,
        Err(StoreError::Quota(_))
    ));
    // Another key is not affected.
    converse(c, "b", "new").await;
}

async fn a_full_store_evicts_from_the_key_that_holds_the_most(s: Stores) {
    let c = &s.conversations;
    for i in 0..3 {
        converse(c, "small", &format!("c{i}")).await;
    }
    for i in 0..7 {
        converse(c, "big", &format!("c{i}")).await;
    }
    converse(c, "small", "c3").await;
    converse(c, "big", "c7").await;
    for i in 0..4 {
        assert!(
            exists(c, "small", &format!("c{i}")).await,
            "small lost c{i}"
        );
    }
    assert!(!exists(c, "big", "c0").await && !exists(c, "big", "c1").await);
    assert_eq!(c.count().await.unwrap(), 10);
}

async fn a_full_store_of_busy_conversations_refuses(s: Stores) {
    let c = &s.conversations;
    for i in 0..10 {
        converse(c, "a", &format!("c{i}")).await;
    }
    let _held: Vec<_> = futures::future::join_all((0..10).map(|i| async move {
        c.begin_turn("a", &format!("c{i}"), WAIT)
            .await
            .unwrap()
            .unwrap()
    }))
    .await;
    assert!(matches!(
        c.begin_turn("b", "new", WAIT).await,
        Err(StoreError::Full(_))
    ));
}

async fn idle_conversations_expire(s: Stores) {
    let c = &s.conversations;
    converse(c, "a", "short").await;
    assert!(exists(c, "a", "short").await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.sweep().await;
    assert!(!exists(c, "a", "short").await);
    assert!(c.list("a", 10).await.unwrap().is_empty());
    assert_eq!(c.count().await.unwrap(), 0);
}

async fn a_key_at_its_task_quota_drops_its_oldest_finished(s: Stores) {
    let t = &s.tasks;
    t.insert(task("a1", "a")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    t.insert(task("a2", "a")).await.unwrap();
    assert!(matches!(
        t.insert(task("a3", "a")).await,
        Err(StoreError::Quota(_))
    ));
    t.insert(task("b1", "b")).await.unwrap();
    t.transition(
        "a2",
        &[TaskStatus::Pending],
        TaskStatus::Completed,
        Some("r".into()),
    )
    .await
    .unwrap()
    .unwrap();
    t.insert(task("a3", "a")).await.unwrap();
    assert!(
        t.get(None, "a2").await.unwrap().is_none(),
        "the finished one went"
    );
    assert!(
        t.get(None, "a1").await.unwrap().is_some(),
        "the pending one stayed"
    );
    let ids: Vec<String> = t
        .list("a", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(ids.len(), 2);
}

async fn the_store_holds_at_most_max_tasks(s: Stores) {
    let t = &s.tasks;
    for i in 0..5 {
        t.insert(task(&format!("t{i}"), &format!("k{i}")))
            .await
            .unwrap();
    }
    assert!(matches!(
        t.insert(task("t5", "k5")).await,
        Err(StoreError::Full(_))
    ));
}

async fn a_turn_waits_for_a_busy_conversation_at_most_its_wait(s: Stores) {
    let c = &s.conversations;
    converse(c, "a", "busy").await;
    let held = c.begin_turn("a", "busy", WAIT).await.unwrap().unwrap();
    // `if_busy: "reject"`: no wait at all.
    let started = std::time::Instant::now();
    assert!(matches!(
        c.begin_turn("a", "busy", Duration::ZERO).await,
        Err(StoreError::Busy(_))
    ));
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    assert!(matches!(
        c.begin_turn("a", "busy", Duration::from_millis(300)).await,
        Err(StoreError::Busy(_))
    ));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    drop(held);
    // Once the turn ends, the next one gets it (Redis: the release is in the background).
    let mut got = None;
    for _ in 0..50 {
        if let Ok(Some(t)) = c.begin_turn("a", "busy", WAIT).await {
            got = Some(t);
            break;
        }
    }
    assert_eq!(got.unwrap().history().len(), 3);
}

async fn a_delete_during_a_turn_wins(s: Stores) {
    let c = &s.conversations;
    converse(c, "a", "doomed").await;
    let t = c.begin_turn("a", "doomed", WAIT).await.unwrap().unwrap();
    assert!(c.delete("a", "doomed").await.unwrap());
    // The turn that was running when the DELETE came writes nothing back.
    assert!(matches!(
        t.commit(turn("late")).await,
        Err(StoreError::Deleted(_))
    ));
    assert!(c.get("a", "doomed").await.unwrap().is_none());
    assert!(c.list("a", 10).await.unwrap().is_empty());
    // The id is free for a new conversation afterwards.
    let t = c.begin_turn("a", "doomed", WAIT).await.unwrap().unwrap();
    assert!(t.history().is_empty());
    t.commit(turn("again")).await.unwrap();
    assert_eq!(
        c.get("a", "doomed").await.unwrap().unwrap().messages.len(),
        2
    );
}

async fn the_queue_leases_entries_and_takes_over_only_lapsed_ones(s: Stores) {
    let [a, b] = &s.queues;
    assert_eq!(a.waiting().await.unwrap(), 0);
    assert!(a.read(Duration::from_millis(50)).await.unwrap().is_none());
    a.push("t1").await.unwrap();
    a.push("t2").await.unwrap();
    assert_eq!(b.waiting().await.unwrap(), 2);
    let e1 = a.read(Duration::from_secs(1)).await.unwrap().unwrap();
    assert_eq!(e1.task_id, "t1", "first in, first out");
    assert_eq!(
        a.waiting().await.unwrap(),
        1,
        "a taken entry is no longer waiting"
    );
    // A leased entry that is renewed is not taken over.
    assert!(b.claim_stale().await.unwrap().is_none());
    tokio::time::sleep(LEASE / 2).await;
    assert!(a.renew(&e1.entry).await.unwrap());
    tokio::time::sleep(LEASE / 2 + Duration::from_millis(50)).await;
    assert!(
        b.claim_stale().await.unwrap().is_none(),
        "renewed: still a's"
    );
    // One that lapses is, and its first runner can neither renew nor hand it back.
    tokio::time::sleep(LEASE + Duration::from_millis(50)).await;
    let taken = b.claim_stale().await.unwrap().unwrap();
    assert_eq!(taken.task_id, "t1");
    assert!(
        !a.renew(&e1.entry).await.unwrap(),
        "a lost it: one runner at a time"
    );
    assert!(!a.hand_back(&e1.entry).await.unwrap());
    assert!(b.renew(&taken.entry).await.unwrap());
    b.done(&taken.entry).await.unwrap();
    // A handed-back entry is taken at once, without waiting for the lease.
    let e2 = b.read(Duration::from_secs(1)).await.unwrap().unwrap();
    assert_eq!(e2.task_id, "t2");
    assert!(b.hand_back(&e2.entry).await.unwrap());
    let again = a.claim_stale().await.unwrap().unwrap();
    assert_eq!(again.task_id, "t2");
    a.done(&again.entry).await.unwrap();
    assert_eq!(a.waiting().await.unwrap(), 0);
    assert!(
        a.claim_stale().await.unwrap().is_none(),
        "acknowledged entries are gone"
    );
}

async fn a_reader_waiting_on_an_empty_queue_gets_the_next_push(s: Stores) {
    let [a, b] = &s.queues;
    let reader = async { a.read(Duration::from_secs(3)).await.unwrap() };
    let pusher = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.push("late").await.unwrap();
    };
    let started = std::time::Instant::now();
    let (got, ()) = tokio::join!(reader, pusher);
    assert_eq!(got.unwrap().task_id, "late");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

async fn cancellations_reach_every_listener(s: Stores) {
    let [a, b] = &s.queues;
    let mut heard = b.cancellations().await.unwrap();
    // A subscription takes a moment to be in place (Redis pub/sub).
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.publish_cancel("t9").await.unwrap();
    let id = tokio::time::timeout(Duration::from_secs(2), futures::StreamExt::next(&mut heard))
        .await
        .unwrap();
    assert_eq!(id.as_deref(), Some("t9"));
}

async fn a_conversation_keeps_its_first_agent_and_whole_tool_turns(s: Stores) {
    use agent_api::llm::ToolCall;
    let c = &s.conversations;
    let t = c.begin_turn("k", "agentic", WAIT).await.unwrap().unwrap();
    assert_eq!(t.agent(), None);
    let call = Message::assistant_calls("", vec![ToolCall::function("c1", "f", r#"{"a":[]}"#)]);
    let mut first = vec![Message::new("system", "sys"), Message::new("user", "u1")];
    first.extend([
        call.clone(),
        Message::tool_result("c1", "r1"),
        Message::new("assistant", "a1"),
    ]);
    t.commit_as(first, Some("support")).await.unwrap();
    // A later turn sees it; naming another agent at its commit changes nothing.
    let t = c.begin_turn("k", "agentic", WAIT).await.unwrap().unwrap();
    assert_eq!(t.agent(), Some("support"));
    assert_eq!(
        t.history()[2],
        call,
        "tool calls stored exactly as the model saw them"
    );
    t.commit_as(turn("u2"), Some("other")).await.unwrap();
    let conv = c.get("k", "agentic").await.unwrap().unwrap();
    assert_eq!(conv.agent.as_deref(), Some("support"));
    assert_eq!(conv.messages[3], Message::tool_result("c1", "r1"));
    // Trimming to max_messages (7 here) never leaves a tool result without its call: the whole
    // first turn goes.
    let t = c.begin_turn("k", "agentic", WAIT).await.unwrap().unwrap();
    t.commit(turn("u3")).await.unwrap();
    let conv = c.get("k", "agentic").await.unwrap().unwrap();
    let roles: Vec<&str> = conv.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
    assert_eq!(conv.messages[1].content, "u2");
}

macro_rules! contract {
    ($($name:ident: $limits:expr),* $(,)?) => {
        mod memory_store {
            use super::*;
            $( #[tokio::test] async fn $name() { super::$name(memory($limits)).await } )*
        }
        mod redis_store {
            use super::*;
            $( #[tokio::test] async fn $name() { super::$name(redis($limits).await).await } )*
        }
    };
}

contract!(
    conversation_lifecycle: limits(),
    history_is_bounded_and_keeps_the_system_prompt: limits(),
    turns_are_serialized: limits(),
    task_lifecycle: limits(),
    ids_are_per_key: limits(),
    failed_first_turns_take_no_room: StoreLimits { max_conversations: 10, ..limits() },
    a_key_at_its_quota_evicts_its_own_oldest: StoreLimits { max_conversations_per_key: 3, ..limits() },
    a_key_whose_conversations_are_all_busy_is_refused_with_quota:
        StoreLimits { max_conversations_per_key: 3, ..limits() },
    a_full_store_evicts_from_the_key_that_holds_the_most:
        StoreLimits { max_conversations: 10, ..limits() },
    a_full_store_of_busy_conversations_refuses: StoreLimits { max_conversations: 10, ..limits() },
    idle_conversations_expire: StoreLimits { conversation_ttl: Duration::from_millis(300), ..limits() },
    a_key_at_its_task_quota_drops_its_oldest_finished:
        StoreLimits { max_tasks_per_key: 2, ..limits() },
    the_store_holds_at_most_max_tasks: StoreLimits { max_tasks: 5, ..limits() },
    a_turn_waits_for_a_busy_conversation_at_most_its_wait: limits(),
    a_delete_during_a_turn_wins: limits(),
    the_queue_leases_entries_and_takes_over_only_lapsed_ones: limits(),
    a_reader_waiting_on_an_empty_queue_gets_the_next_push: limits(),
    cancellations_reach_every_listener: limits(),
    a_conversation_keeps_its_first_agent_and_whole_tool_turns:
        StoreLimits { max_messages: 7, ..limits() },
);
