use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn msgs(n: usize) -> Vec<Message> {
    let mut v = vec![Message::new("system", "s")];
    for i in 0..n {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        v.push(Message::new(role, i.to_string()));
    }
    v
}

fn store(max: usize, per_key: usize) -> MemoryConversationStore {
    MemoryConversationStore::new(&StoreLimits {
        max_conversations_per_key: per_key,
        ..StoreLimits::new(max, 10, Duration::from_secs(60))
    })
}

/// One committed turn of `owner` on each of the conversations `c{i}`, `i` in `ids`.
async fn turns(s: &MemoryConversationStore, owner: &str, ids: std::ops::Range<usize>) {
    for i in ids {
        let t = s
            .begin_turn(owner, &format!("c{i}"), WAIT)
            .await
            .unwrap()
            .unwrap();
        t.commit(msgs(2)).await.unwrap();
    }
}

async fn has(s: &MemoryConversationStore, owner: &str, i: usize) -> bool {
    s.get(owner, &format!("c{i}")).await.unwrap().is_some()
}

#[test]
fn trim_keeps_system_and_pairs() {
    let mut m = msgs(6);
    trim(&mut m, 5);
    assert_eq!(m.len(), 5);
    assert_eq!(m[0].role, "system");
    assert_eq!(m[1].role, "user");
    assert_eq!(m[1].content, "2");
}

#[test]
fn trim_never_separates_a_tool_call_from_its_result() {
    use crate::llm::ToolCall;
    let call = || Message::assistant_calls("", vec![ToolCall::function("c", "f", "{}")]);
    let mut m = vec![
        Message::new("system", "s"),
        Message::new("user", "1"),
        call(),
        Message::tool_result("c", "r"),
        Message::new("assistant", "a1"),
        Message::new("user", "2"),
        Message::new("assistant", "a2"),
    ];
    // Cutting two would leave a tool result without its call: the whole first turn goes.
    trim(&mut m, 5);
    let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant"]);
    // A last turn longer than the bound stays whole.
    let mut m = vec![
        Message::new("system", "s"),
        Message::new("user", "1"),
        call(),
        Message::tool_result("c", "r"),
        Message::new("assistant", "a1"),
    ];
    trim(&mut m, 3);
    assert_eq!(m.len(), 5);
}

#[tokio::test]
async fn a_failed_first_turn_leaves_nothing_and_ids_are_per_key() {
    let s = store(10, 10);
    drop(s.begin_turn("a", "c1", WAIT).await.unwrap().unwrap());
    assert!(s.get("a", "c1").await.unwrap().is_none());
    assert_eq!(s.map.len(), 0, "a failed first turn is not even in the map");
    assert_eq!(s.count().await.unwrap(), 0);
    // Both keys can use the same id, each its own conversation.
    let t = s.begin_turn("a", "c1", WAIT).await.unwrap().unwrap();
    t.commit(msgs(2)).await.unwrap();
    let t = s.begin_turn("b", "c1", WAIT).await.unwrap().unwrap();
    assert!(t.history().is_empty(), "b never sees a's conversation");
    t.commit(msgs(4)).await.unwrap();
    assert_eq!(s.get("a", "c1").await.unwrap().unwrap().messages.len(), 3);
    assert_eq!(s.get("b", "c1").await.unwrap().unwrap().messages.len(), 5);
    assert!(s.delete("b", "c1").await.unwrap());
    assert!(!s.delete("b", "c1").await.unwrap());
    assert!(s.get("a", "c1").await.unwrap().is_some());
    assert_eq!(s.list("a", 10).await.unwrap().len(), 1);
    assert!(s.list("b", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn failed_first_turns_of_one_key_evict_nothing_of_another() {
    let s = store(10, 1000);
    turns(&s, "victim", 0..5).await;
    turns(&s, "other", 0..5).await;
    for i in 0..50 {
        drop(
            s.begin_turn("attacker", &format!("x{i}"), WAIT)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for i in 0..5 {
        assert!(has(&s, "victim", i).await && has(&s, "other", i).await);
    }
    assert_eq!(s.count().await.unwrap(), 10);
}

#[tokio::test]
async fn a_key_at_its_quota_evicts_its_own_oldest() {
    let s = store(100, 3);
    turns(&s, "b", 0..3).await;
    turns(&s, "a", 0..5).await;
    // a keeps its 3 newest; b, under its quota, lost nothing.
    assert!(!has(&s, "a", 0).await && !has(&s, "a", 1).await);
    assert!(has(&s, "a", 4).await);
    for i in 0..3 {
        assert!(has(&s, "b", i).await);
    }
    assert_eq!(s.count().await.unwrap(), 6);
}

#[tokio::test]
async fn a_key_whose_conversations_are_all_busy_gets_429_others_go_on() {
    let s = store(100, 2);
    let _one = s.begin_turn("a", "one", WAIT).await.unwrap().unwrap();
    let t = s.begin_turn("a", "two", WAIT).await.unwrap().unwrap();
    t.commit(msgs(2)).await.unwrap();
    let _two = s.begin_turn("a", "two", WAIT).await.unwrap().unwrap();
    // "one" is not committed yet; commit it so that a holds 2, both busy.
    drop(_one);
    let t = s.begin_turn("a", "one", WAIT).await.unwrap().unwrap();
    t.commit(msgs(2)).await.unwrap();
    let _one = s.begin_turn("a", "one", WAIT).await.unwrap().unwrap();
    assert!(matches!(
        s.begin_turn("a", "three", WAIT).await,
        Err(StoreError::Quota(_))
    ));
    assert!(s.begin_turn("b", "three", WAIT).await.unwrap().is_some());
}

#[tokio::test]
async fn a_full_store_evicts_from_the_key_that_holds_the_most() {
    let s = store(10, 1000);
    turns(&s, "small", 0..3).await;
    turns(&s, "big", 0..7).await;
    // The store is full: a new conversation of either key evicts big's oldest.
    turns(&s, "small", 3..4).await;
    assert!(!has(&s, "big", 0).await);
    turns(&s, "big", 7..9).await;
    for i in 0..4 {
        assert!(has(&s, "small", i).await, "small lost c{i}");
    }
    assert_eq!(s.count().await.unwrap(), 10);
}

#[tokio::test]
async fn the_oldest_goes_first_but_the_used_get_a_second_chance() {
    let s = store(8, 1000);
    turns(&s, "a", 0..8).await;
    // c0 is used again, so c1 and c2 are the first to go.
    turns(&s, "a", 0..1).await;
    turns(&s, "a", 8..10).await;
    assert_eq!(s.count().await.unwrap(), 8);
    assert!(!has(&s, "a", 1).await && !has(&s, "a", 2).await);
    assert!(has(&s, "a", 0).await && has(&s, "a", 3).await);
    turns(&s, "a", 10..16).await;
    assert!(!has(&s, "a", 0).await);
    assert!(has(&s, "a", 8).await);
    assert_eq!(s.count().await.unwrap(), 8);
}

#[tokio::test]
async fn the_byte_budget_evicts_too() {
    let s = MemoryConversationStore::new(&StoreLimits {
        max_bytes: 8 * 1024,
        ..StoreLimits::new(1000, 10, Duration::from_secs(60))
    });
    for i in 0..20 {
        let t = s
            .begin_turn("a", &format!("c{i}"), WAIT)
            .await
            .unwrap()
            .unwrap();
        t.commit(vec![Message::new("user", "x".repeat(1000))])
            .await
            .unwrap();
        assert!(s.budget.used() <= 8 * 1024, "{}", s.budget.used());
    }
    assert!(has(&s, "a", 19).await);
    assert!(!has(&s, "a", 0).await);
    let n = s.count().await.unwrap();
    assert!((5..=7).contains(&n), "{n}");
}

#[tokio::test]
async fn deleted_and_expired_conversations_leave_the_rings_and_the_counts() {
    let s = MemoryConversationStore::new(&StoreLimits::new(4, 10, Duration::from_millis(20)));
    turns(&s, "a", 0..3).await;
    assert!(s.delete("a", "c1").await.unwrap());
    let owner = s.owner("a");
    assert_eq!(owner.ring().len(), 2);
    assert_eq!(owner.count.load(Ordering::Relaxed), 2);
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.sweep().await;
    assert_eq!(s.count().await.unwrap(), 0);
    assert_eq!(s.map.len(), 0);
    assert_eq!(owner.ring().len(), 0);
    assert_eq!(owner.bytes.load(Ordering::Relaxed), 0);
    assert_eq!(s.budget.used(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creators_keep_the_bound_and_the_rings_whole() {
    let s = store(2048, 100_000);
    let busy = s.begin_turn("a", "busy", WAIT).await.unwrap().unwrap();
    let creators: Vec<_> = (0..4)
        .map(|w| {
            let s = s.clone();
            #[expect(clippy::disallowed_methods, reason = "creators race in the test")]
            tokio::spawn(async move {
                for i in 0..2000 {
                    let t = s
                        .begin_turn(&format!("k{}", i % 3), &format!("w{w}-{i}"), WAIT)
                        .await
                        .unwrap()
                        .unwrap();
                    t.commit(msgs(2)).await.unwrap();
                }
            })
        })
        .collect();
    for c in creators {
        c.await.unwrap();
    }
    let count = s.count().await.unwrap();
    assert!((2048..=2048 + 4).contains(&count), "{count}");
    let in_rings: usize = ["k0", "k1", "k2"]
        .iter()
        .map(|k| {
            s.owner(k)
                .ring()
                .iter()
                .filter(|w| w.strong_count() > 0)
                .count()
        })
        .sum();
    assert_eq!(in_rings, count);
    // The uncommitted "busy" conversation is in the map, but counts toward nothing.
    assert_eq!(s.map.len(), count + 1);
    drop(busy);
    assert_eq!(s.map.len(), count);
}

#[tokio::test]
async fn a_turn_that_waited_on_a_conversation_deleted_meanwhile_starts_it_anew() {
    let s = store(10, 10);
    let t = s.begin_turn("a", "c", WAIT).await.unwrap().unwrap();
    t.commit(msgs(2)).await.unwrap();
    let running = s.begin_turn("a", "c", WAIT).await.unwrap().unwrap();
    let waiter = {
        let s = s.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "the waiting turn runs beside the test"
        )]
        tokio::spawn(async move {
            let t = s.begin_turn("a", "c", WAIT).await.unwrap().unwrap();
            let before = t.history().len();
            t.commit(vec![Message::new("user", "after")]).await.unwrap();
            before
        })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(s.delete("a", "c").await.unwrap());
    drop(running);
    assert_eq!(waiter.await.unwrap(), 0);
    let now = s.get("a", "c").await.unwrap().unwrap();
    assert_eq!(now.messages.len(), 1);
    assert_eq!(s.count().await.unwrap(), 1);
}

#[tokio::test]
async fn conversations_in_a_turn_are_never_evicted() {
    let s = store(1, 10);
    let t = s.begin_turn("a", "one", WAIT).await.unwrap().unwrap();
    t.commit(msgs(2)).await.unwrap();
    let _busy = s.begin_turn("a", "one", WAIT).await.unwrap().unwrap();
    assert!(matches!(
        s.begin_turn("b", "two", WAIT).await,
        Err(StoreError::Full(_))
    ));
}
