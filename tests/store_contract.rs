//! One contract suite for every store implementation: memory always, Redis through `REDIS_URL`
//! (default `redis://127.0.0.1:6379`). An unreachable Redis fails the suite: it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agent_api::llm::Message;
use agent_api::store::redis::{RedisSettings, RedisStores};
use agent_api::store::{
    ConversationStore, MemoryConversationStore, MemoryTaskStore, Task, TaskStatus, TaskStore,
};
use common::redis_url;

struct Stores {
    conversations: Arc<dyn ConversationStore>,
    tasks: Arc<dyn TaskStore>,
}

fn memory() -> Stores {
    Stores {
        conversations: Arc::new(MemoryConversationStore::new(
            100,
            25,
            Duration::from_secs(60),
        )),
        tasks: Arc::new(MemoryTaskStore::new(100, Duration::from_secs(60))),
    }
}

async fn redis() -> Stores {
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let stores = RedisStores::connect(
        RedisSettings {
            url: redis_url(),
            prefix,
            max_messages: 25,
            conversation_ttl: Duration::from_secs(60),
            task_ttl: Duration::from_secs(60),
            turn_wait: Duration::from_secs(10),
        },
        Duration::from_secs(5),
    )
    .unwrap();
    stores
        .conversations
        .ready()
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is required for this suite: {e}", redis_url()));
    Stores {
        conversations: stores.conversations,
        tasks: stores.tasks,
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
    drop(c.begin_turn("alice", "conv-1").await.unwrap().unwrap());
    assert!(c.get("alice", "conv-1").await.unwrap().is_none());
    assert!(c.list("alice", 10).await.unwrap().is_empty());

    let t = c.begin_turn("alice", "conv-1").await.unwrap().unwrap();
    assert!(t.history().is_empty());
    let mut first = vec![Message::new("system", "sys")];
    first.extend(turn("one"));
    t.commit(first).await.unwrap();
    let t = c.begin_turn("alice", "conv-1").await.unwrap().unwrap();
    assert_eq!(t.history().len(), 3);
    assert_eq!(t.history()[0], Message::new("system", "sys"));
    t.commit(turn("two")).await.unwrap();

    let conv = c.get("alice", "conv-1").await.unwrap().unwrap();
    assert_eq!(conv.messages.len(), 5);
    assert_eq!(conv.messages[4].content, "re: two");
    assert!(conv.updated_at >= conv.created_at);

    // Another owner sees nothing and cannot take it over.
    assert!(c.get("bob", "conv-1").await.unwrap().is_none());
    assert!(c.begin_turn("bob", "conv-1").await.unwrap().is_none());
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
    let t = c.begin_turn("a", "long").await.unwrap().unwrap();
    let mut first = vec![Message::new("system", "sys")];
    first.extend(turn("0"));
    t.commit(first).await.unwrap();
    for i in 1..15 {
        let t = c.begin_turn("a", "long").await.unwrap().unwrap();
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
    let t = c.begin_turn("a", "busy").await.unwrap().unwrap();
    t.commit(vec![Message::new("system", "s")]).await.unwrap();
    let workers = (0..10).map(|i| {
        let c = Arc::clone(&c);
        async move {
            let t = c.begin_turn("a", "busy").await.unwrap().unwrap();
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

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            use super::*;
            $( #[tokio::test] async fn $name() { super::$name(memory()).await } )*
        }
        mod redis_store {
            use super::*;
            $( #[tokio::test] async fn $name() { super::$name(redis().await).await } )*
        }
    };
}

contract!(
    conversation_lifecycle,
    history_is_bounded_and_keeps_the_system_prompt,
    turns_are_serialized,
    task_lifecycle,
);
