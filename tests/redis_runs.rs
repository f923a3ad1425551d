//! Runs' logs in Redis, below HTTP: the producer's token fences every write, a lapsed lease
//! ends the run `interrupted` for the next reader (and a stale producer cannot write after
//! that), a batch sent twice is kept once, the byte bound's trimming, and the keys' TTL.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use agent_api::runs::{LogEvent, RemoteMeta, RunStatus};
use agent_api::store::redis::{Redis, RedisRuns};
use common::redis_url;
use redis::AsyncCommands;

fn event(seq: u64) -> LogEvent {
    LogEvent {
        seq,
        event: None,
        data: format!(r#"{{"content":"{seq}"}}"#),
    }
}

fn seqs(events: &[LogEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn the_producers_token_fences_every_write_and_a_lapsed_lease_interrupts() {
    let prefix = format!("runs-{}:", uuid::Uuid::new_v4().simple());
    let redis = Redis::connect(&redis_url(), &prefix).unwrap();
    let runs = RedisRuns::new(
        redis.clone(),
        Duration::from_millis(300),
        Duration::from_secs(60),
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let meta = RemoteMeta {
        id: &id,
        owner: "alice",
        conversation_id: Some("c1"),
        agent: "default",
        task_id: None,
        created_at: chrono::Utc::now(),
    };
    assert!(
        runs.append(&meta, "A", true, &[event(0), event(1)], 0, None)
            .await
            .unwrap()
    );
    // Another producer cannot write into it, nor make it again.
    assert!(
        !runs
            .append(&meta, "B", true, &[event(2)], 0, None)
            .await
            .unwrap()
    );
    // A batch sent again (a retry after a lost answer) is kept once.
    assert!(
        runs.append(&meta, "A", false, &[event(1), event(2)], 0, None)
            .await
            .unwrap()
    );
    let r = runs.read(&id, 0, 10).await.unwrap().unwrap();
    assert_eq!(seqs(&r.events), [0, 1, 2]);
    assert_eq!(r.events[2], event(2));
    assert_eq!(
        (r.owner.as_str(), r.info.status, r.next),
        ("alice", RunStatus::Running, 3)
    );
    assert_eq!(r.info.conversation_id.as_deref(), Some("c1"));
    // From a position; at most `count`.
    let r = runs.read(&id, 1, 1).await.unwrap().unwrap();
    assert_eq!(seqs(&r.events), [1]);
    // The byte bound dropped the oldest: Redis drops them too.
    assert!(runs.append(&meta, "A", false, &[], 2, None).await.unwrap());
    let r = runs.read(&id, 0, 10).await.unwrap().unwrap();
    assert_eq!((r.first, seqs(&r.events)), (2, vec![2]));
    // Both keys expire.
    let mut c = redis.conn.clone();
    for key in [format!("{prefix}run:{id}"), format!("{prefix}run:{id}:log")] {
        let ttl: i64 = c.pttl(&key).await.unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "{key}: {ttl}");
    }

    // The producer stops renewing: the next reader ends the run `interrupted`.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = runs.read(&id, 3, 10).await.unwrap().unwrap();
    assert_eq!(r.info.status, RunStatus::Interrupted);
    assert_eq!(seqs(&r.events), [3]);
    assert_eq!(r.events[0].event, Some("error"));
    assert_eq!(r.events[0].data, r#"{"detail":"the run was interrupted"}"#);
    assert!(r.info.completed_at.is_some());
    // The stale producer wakes up: it cannot write into the ended run.
    assert!(
        !runs
            .append(&meta, "A", false, &[event(3)], 2, None)
            .await
            .unwrap()
    );
    let r = runs.read(&id, 0, 10).await.unwrap().unwrap();
    assert_eq!(seqs(&r.events), [2, 3], "nothing after the terminal event");
    // Exactly one terminal event, however many read it.
    let again = runs.read(&id, 0, 10).await.unwrap().unwrap();
    assert_eq!(seqs(&again.events), [2, 3]);
    assert!(
        runs.read("0".repeat(32).as_str(), 0, 10)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_ended_run_is_ended_once() {
    let prefix = format!("runs-{}:", uuid::Uuid::new_v4().simple());
    let redis = Redis::connect(&redis_url(), &prefix).unwrap();
    let runs = RedisRuns::new(redis, Duration::from_secs(5), Duration::from_secs(60));
    let id = uuid::Uuid::new_v4().simple().to_string();
    let meta = RemoteMeta {
        id: &id,
        owner: "bob",
        conversation_id: None,
        agent: "default",
        task_id: Some("t1"),
        created_at: chrono::Utc::now(),
    };
    let done = LogEvent {
        seq: 1,
        event: None,
        data: r#"{"done":true}"#.into(),
    };
    let end = Some((RunStatus::Completed, Some(chrono::Utc::now()), 7));
    assert!(
        runs.append(&meta, "A", true, &[event(0), done], 0, end)
            .await
            .unwrap()
    );
    let r = runs.read(&id, 0, 10).await.unwrap().unwrap();
    assert_eq!(r.info.status, RunStatus::Completed);
    assert_eq!(
        (r.info.tokens_used, r.info.task_id.as_deref()),
        (7, Some("t1"))
    );
    assert!(
        !runs
            .append(&meta, "A", false, &[event(2)], 0, None)
            .await
            .unwrap()
    );
    assert_eq!(r.next, 2);
}
