//! In-memory stores on DashMap: the default, for one process.
//!
//! Memory is bounded: at most `max_conversations` conversations of at most `max_messages`
//! messages each (the oldest turns are dropped, the system prompt kept), idle conversations
//! expire after the TTL, finished tasks after theirs, and at most `max_tasks` tasks are kept.
//! When the store is full, each new conversation evicts an idle one in CLOCK order (oldest
//! first; one used again since it was last passed over gets a second chance): a constant amount
//! of work on the request that needs the room, no scan and no background job.
//! No DashMap guard is ever held across an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{
    Conversation, ConversationStore, ConversationSummary, StoreError, Task, TaskStatus, TaskStore,
    TurnLease,
};
use crate::llm::Message;

pub struct MemoryConversationStore {
    map: DashMap<Arc<str>, Arc<Slot>>,
    /// Every conversation, in the order it was created, for eviction. A few rings, each behind
    /// its own lock, taken in turn by new conversations so that they do not queue on one lock.
    /// Lock order: a ring, then a map shard; never the other way round.
    rings: Box<[Mutex<Ring>]>,
    next_ring: AtomicUsize,
    /// How many conversations the map holds, kept beside it: `DashMap::len` takes every shard's
    /// read lock (eight atomic updates on lines the other core writes), on every new conversation.
    len: AtomicUsize,
    max_conversations: usize,
    max_messages: usize,
    ttl: Duration,
}

type Ring = VecDeque<Weak<Slot>>;

struct Slot {
    id: Arc<str>,
    owner: String,
    /// Which of the store's rings holds this conversation.
    ring: usize,
    /// Set when the conversation is used again; eviction clears it and passes the slot over once.
    referenced: AtomicBool,
    /// Serializes turns. A tokio mutex because it is held across the model call.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The data; a std mutex, held only to copy or append, never across an `.await`.
    data: Mutex<Data>,
}

struct Data {
    messages: Vec<Message>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_used: Instant,
    /// False until the first turn commits: a conversation whose first turn failed is invisible.
    committed: bool,
}

impl Slot {
    fn data(&self) -> MutexGuard<'_, Data> {
        // A poisoned lock only means a panic elsewhere while appending; the data is still whole.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// No turn is running: the conversation may be evicted or expired.
    fn idle(&self) -> bool {
        self.turn.try_lock().is_ok()
    }
}

impl MemoryConversationStore {
    pub fn new(max_conversations: usize, max_messages: usize, ttl: Duration) -> Self {
        let rings = (max_conversations / 1024).clamp(1, 8);
        Self {
            map: DashMap::new(),
            rings: (0..rings).map(|_| Mutex::new(Ring::new())).collect(),
            next_ring: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            max_conversations,
            max_messages,
            ttl,
        }
    }

    fn ring(&self, i: usize) -> MutexGuard<'_, Ring> {
        // Poisoning cannot leave a ring half-changed: every change is one VecDeque call.
        self.rings[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn holds(&self, slot: &Arc<Slot>) -> bool {
        self.map
            .get(&*slot.id)
            .is_some_and(|e| Arc::ptr_eq(e.value(), slot))
    }

    /// Removes `id`'s conversation if `still` holds for it under its shard's lock, keeping the
    /// count in step: every removal (eviction, expiry, `DELETE`) goes through here.
    fn remove_if(&self, id: &str, still: impl FnOnce(&Arc<Slot>) -> bool) -> Option<Arc<Slot>> {
        let (_, slot) = self.map.remove_if(id, |_, slot| still(slot))?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(slot)
    }

    /// Evicts up to `n` idle conversations, starting with ring `first`; returns how many went.
    ///
    /// CLOCK: take the oldest slot of the ring; one in a turn, or used again since it was last
    /// passed over (its flag, cleared now), goes to the back; otherwise it is removed. Two turns
    /// of a ring at most, so a ring whose every conversation was used again still gives one
    /// up, and one whose every conversation is in a turn gives up none. Slots already removed
    /// (deleted, expired) are dropped from the ring as they come. The evicted conversations are
    /// freed after every lock is released.
    fn evict(&self, first: usize, mut n: usize) -> usize {
        let mut victims = Vec::new();
        for i in 0..self.rings.len() {
            if n == 0 {
                break;
            }
            let mut ring = self.ring((first + i) % self.rings.len());
            let mut budget = ring.len() * 2;
            while n > 0 && budget > 0 {
                budget -= 1;
                let Some(weak) = ring.pop_front() else { break };
                let Some(slot) = weak.upgrade() else { continue };
                if slot.referenced.swap(false, Ordering::Relaxed) || !slot.idle() {
                    ring.push_back(weak);
                    continue;
                }
                match self.remove_if(&slot.id, |s| Arc::ptr_eq(s, &slot) && s.idle()) {
                    Some(gone) => {
                        victims.push(gone);
                        n -= 1;
                    }
                    // A turn began in between: it stays.
                    None if self.holds(&slot) => ring.push_back(weak),
                    None => {}
                }
            }
        }
        let evicted = victims.len();
        drop(victims);
        evicted
    }

    /// A new conversation, after evicting as many as the store is over its bound, with its turn
    /// already held: between its insertion and a lock taken afterwards, a racing eviction would
    /// see it idle and drop it. (Or the one a concurrent request just made under the same id,
    /// whose turn is that request's: `None`.)
    fn create(&self, owner: &str, id: &str) -> Result<(Arc<Slot>, Option<TurnGuard>), StoreError> {
        let ring = self.next_ring.fetch_add(1, Ordering::Relaxed) % self.rings.len();
        let len = self.len.load(Ordering::Relaxed);
        // Creators racing here may leave the store a few over its bound for a moment (as many
        // as race); the next one evicts the excess. Only a store whose every conversation is in
        // a turn says no: a recount after evicting would count the racers too.
        if len >= self.max_conversations
            && self.evict(ring, len + 1 - self.max_conversations) == 0
            && self.len.load(Ordering::Relaxed) >= self.max_conversations
        {
            return Err(StoreError::Full(format!(
                "the server holds its maximum of {} conversations, all in use",
                self.max_conversations
            )));
        }
        let id: Arc<str> = Arc::from(id);
        let now = Utc::now();
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        // A mutex nobody else has seen: always free.
        let guard = Arc::clone(&turn).try_lock_owned().ok();
        let fresh = Arc::new(Slot {
            id: Arc::clone(&id),
            owner: owner.to_owned(),
            ring,
            referenced: AtomicBool::new(false),
            turn,
            data: Mutex::new(Data {
                messages: Vec::new(),
                created_at: now,
                updated_at: now,
                last_used: Instant::now(),
                committed: false,
            }),
        });
        // The shard's lock is released at the end of the match, before the ring's is taken.
        let slot = match self.map.entry(id) {
            Entry::Occupied(e) => return Ok((Arc::clone(e.get()), None)),
            Entry::Vacant(v) => {
                self.len.fetch_add(1, Ordering::Relaxed);
                Arc::clone(v.insert(fresh).value())
            }
        };
        self.ring(ring).push_back(Arc::downgrade(&slot));
        Ok((slot, guard))
    }

    /// Takes a removed conversation out of its ring (a scan of one ring: for `DELETE`).
    fn unlink(&self, slot: &Arc<Slot>) {
        let mut ring = self.ring(slot.ring);
        if let Some(i) = ring
            .iter()
            .position(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(slot)))
        {
            ring.remove(i);
        }
    }

    fn expire(&self) {
        let ttl = self.ttl;
        // A slot whose turn is running is in use, whatever its age.
        let expired = |slot: &Slot| slot.idle() && slot.data().last_used.elapsed() >= ttl;
        let keys: Vec<Arc<str>> = self
            .map
            .iter()
            .filter(|e| expired(e.value()))
            .map(|e| Arc::clone(e.key()))
            .collect();
        // One short write lock per key (`retain` would hold each shard's for its whole pass,
        // and requests for its conversations would wait behind it); each slot is freed outside.
        for key in keys {
            drop(self.remove_if(&key, |slot| expired(slot)));
        }
        // And the rings forget what is gone, one ring locked at a time.
        for i in 0..self.rings.len() {
            self.ring(i).retain(|w| w.strong_count() > 0);
        }
    }
}

type TurnGuard = tokio::sync::OwnedMutexGuard<()>;

struct MemoryTurn {
    slot: Arc<Slot>,
    _guard: TurnGuard,
    history: Vec<Message>,
    max_messages: usize,
}

#[async_trait]
impl TurnLease for MemoryTurn {
    fn history(&self) -> &[Message] {
        &self.history
    }

    async fn commit(self: Box<Self>, new_messages: Vec<Message>) -> Result<(), StoreError> {
        let mut data = self.slot.data();
        data.messages.extend(new_messages);
        trim(&mut data.messages, self.max_messages);
        data.committed = true;
        data.updated_at = Utc::now();
        data.last_used = Instant::now();
        Ok(())
    }
}

/// Drops the oldest turns (in pairs, keeping a leading system message) until `max` remain.
pub fn trim(messages: &mut Vec<Message>, max: usize) {
    if messages.len() <= max {
        return;
    }
    let keep_first = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    let mut excess = messages.len() - max;
    excess += excess % 2;
    let end = (keep_first + excess).min(messages.len());
    messages.drain(keep_first..end);
}

#[async_trait]
impl ConversationStore for MemoryConversationStore {
    async fn begin_turn(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<Box<dyn TurnLease>>, StoreError> {
        let (slot, guard) = loop {
            let existing = self.map.get(id).map(|s| Arc::clone(s.value()));
            let (slot, held) = match existing {
                Some(slot) => {
                    if !slot.referenced.load(Ordering::Relaxed) {
                        slot.referenced.store(true, Ordering::Relaxed);
                    }
                    (slot, None)
                }
                None => self.create(owner, id)?,
            };
            if slot.owner != owner {
                return Ok(None);
            }
            // A conversation made here is born in this turn: nothing can have taken it (a busy
            // one is never evicted, an uncommitted one never deleted).
            if let Some(guard) = held {
                break (slot, guard);
            }
            let guard = Arc::clone(&slot.turn).lock_owned().await;
            // Evicted or deleted while this turn waited for it, the conversation is gone, and
            // the turn would be committed to nothing: look the id up again (gone, it starts a
            // new conversation, as it would have a moment later).
            if self.holds(&slot) {
                break (slot, guard);
            }
        };
        let history = {
            let mut data = slot.data();
            data.last_used = Instant::now();
            data.messages.clone()
        };
        Ok(Some(Box::new(MemoryTurn {
            slot,
            _guard: guard,
            history,
            max_messages: self.max_messages,
        })))
    }

    async fn get(&self, owner: &str, id: &str) -> Result<Option<Conversation>, StoreError> {
        let Some(slot) = self.map.get(id).map(|s| Arc::clone(s.value())) else {
            return Ok(None);
        };
        if slot.owner != owner {
            return Ok(None);
        }
        let data = slot.data();
        Ok(data.committed.then(|| Conversation {
            id: id.to_owned(),
            messages: data.messages.clone(),
            created_at: data.created_at,
            updated_at: data.updated_at,
        }))
    }

    async fn list(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let mut out: Vec<ConversationSummary> = self
            .map
            .iter()
            .filter(|e| e.value().owner == owner)
            .filter_map(|e| {
                let data = e.value().data();
                data.committed.then(|| ConversationSummary {
                    id: e.key().to_string(),
                    message_count: data.messages.len(),
                    created_at: data.created_at,
                    updated_at: data.updated_at,
                })
            })
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        out.truncate(limit);
        Ok(out)
    }

    async fn delete(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let Some(slot) = self.remove_if(id, |slot| slot.owner == owner && slot.data().committed)
        else {
            return Ok(false);
        };
        self.unlink(&slot);
        Ok(true)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.len.load(Ordering::Relaxed))
    }

    async fn sweep(&self) {
        self.expire();
    }
}

pub struct MemoryTaskStore {
    map: DashMap<String, Task>,
    max_tasks: usize,
    ttl: Duration,
}

impl MemoryTaskStore {
    pub fn new(max_tasks: usize, ttl: Duration) -> Self {
        Self {
            map: DashMap::new(),
            max_tasks,
            ttl,
        }
    }

    fn expire(&self) {
        let cutoff = Utc::now() - chrono::Duration::from_std(self.ttl).unwrap_or_default();
        self.map
            .retain(|_, t| !t.status.is_final() || t.completed_at.is_none_or(|c| c > cutoff));
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
        let mut out: Vec<Task> = self
            .map
            .iter()
            .filter(|t| t.owner == owner)
            .map(|t| t.value().clone())
            .collect();
        out.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then(a.task_id.cmp(&b.task_id))
        });
        out.truncate(limit);
        Ok(out)
    }

    async fn transition(
        &self,
        id: &str,
        from: &[TaskStatus],
        to: TaskStatus,
        result: Option<String>,
    ) -> Result<Option<Task>, StoreError> {
        let Some(mut task) = self.map.get_mut(id) else {
            return Ok(None);
        };
        if !from.contains(&task.status) {
            return Ok(None);
        }
        task.status = to;
        if result.is_some() {
            task.result = result;
        }
        if to.is_final() {
            task.completed_at = Some(Utc::now());
        }
        Ok(Some(task.clone()))
    }

    async fn sweep(&self) {
        self.expire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(n: usize) -> Vec<Message> {
        let mut v = vec![Message::new("system", "s")];
        for i in 0..n {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            v.push(Message::new(role, i.to_string()));
        }
        v
    }

    /// One committed turn on each of the conversations `c{i}`, `i` in `ids`.
    async fn turns(s: &MemoryConversationStore, ids: std::ops::Range<usize>) {
        for i in ids {
            let t = s.begin_turn("a", &format!("c{i}")).await.unwrap().unwrap();
            t.commit(msgs(2)).await.unwrap();
        }
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

    #[tokio::test]
    async fn failed_first_turn_is_invisible_and_owner_is_checked() {
        let s = MemoryConversationStore::new(10, 10, Duration::from_secs(60));
        let turn = s.begin_turn("a", "c1").await.unwrap().unwrap();
        drop(turn);
        assert!(s.get("a", "c1").await.unwrap().is_none());
        assert!(s.begin_turn("b", "c1").await.unwrap().is_none());
        let turn = s.begin_turn("a", "c1").await.unwrap().unwrap();
        turn.commit(msgs(2)).await.unwrap();
        assert_eq!(s.get("a", "c1").await.unwrap().unwrap().messages.len(), 3);
        assert!(s.get("b", "c1").await.unwrap().is_none());
        assert!(!s.delete("b", "c1").await.unwrap());
        assert!(s.delete("a", "c1").await.unwrap());
    }

    #[tokio::test]
    async fn a_full_store_evicts_the_oldest_but_gives_the_used_a_second_chance() {
        let s = MemoryConversationStore::new(8, 10, Duration::from_secs(60));
        turns(&s, 0..8).await;
        // c0 is used again, so c1 and c2 are the first to go.
        turns(&s, 0..1).await;
        turns(&s, 8..10).await;
        assert_eq!(s.count().await.unwrap(), 8);
        assert!(s.get("a", "c1").await.unwrap().is_none());
        assert!(s.get("a", "c2").await.unwrap().is_none());
        assert!(s.get("a", "c0").await.unwrap().is_some());
        assert!(s.get("a", "c3").await.unwrap().is_some());
        // c0's second chance is spent: unused since, it is the next to go after c3..c7.
        turns(&s, 10..16).await;
        assert!(s.get("a", "c0").await.unwrap().is_none());
        assert!(s.get("a", "c8").await.unwrap().is_some());
        assert_eq!(s.count().await.unwrap(), 8);
    }

    #[tokio::test]
    async fn deleted_and_expired_conversations_leave_the_rings() {
        let s = MemoryConversationStore::new(4, 10, Duration::from_millis(20));
        turns(&s, 0..3).await;
        assert!(s.delete("a", "c1").await.unwrap());
        assert_eq!(s.ring(0).len(), 2);
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.sweep().await;
        assert_eq!(s.count().await.unwrap(), 0);
        assert_eq!(s.map.len(), 0);
        assert_eq!(s.ring(0).len(), 0);
    }

    #[tokio::test]
    async fn many_rings_stay_bounded_and_in_step_with_the_map() {
        let max = 4096;
        let s = MemoryConversationStore::new(max, 10, Duration::from_secs(60));
        assert_eq!(s.rings.len(), 4);
        for i in 0..3 * max {
            let t = s.begin_turn("a", &format!("c{i}")).await.unwrap().unwrap();
            t.commit(msgs(2)).await.unwrap();
            if i % 7 == 0 {
                assert!(s.delete("a", &format!("c{i}")).await.unwrap());
            }
        }
        assert_eq!(s.count().await.unwrap(), max);
        let in_rings: usize = (0..s.rings.len()).map(|i| s.ring(i).len()).sum();
        assert_eq!(in_rings, max);
        assert_eq!(s.map.len(), max);
        // The newest survive.
        assert!(
            s.get("a", &format!("c{}", 3 * max - 1))
                .await
                .unwrap()
                .is_some()
        );
        assert!(s.get("a", "c1").await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creators_keep_the_bound_and_the_rings_whole() {
        let s = Arc::new(MemoryConversationStore::new(
            2048,
            10,
            Duration::from_secs(60),
        ));
        assert_eq!(s.rings.len(), 2);
        let busy = s.begin_turn("a", "busy").await.unwrap().unwrap();
        let creators: Vec<_> = (0..4)
            .map(|w| {
                let s = Arc::clone(&s);
                #[expect(clippy::disallowed_methods, reason = "creators race in the test")]
                tokio::spawn(async move {
                    for i in 0..2000 {
                        let t = s
                            .begin_turn("a", &format!("w{w}-{i}"))
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
        // Over the bound by at most the creators that raced at the end.
        let count = s.count().await.unwrap();
        assert!((2048..=2048 + 4).contains(&count), "{count}");
        let in_rings: usize = (0..s.rings.len()).map(|i| s.ring(i).len()).sum();
        assert_eq!(in_rings, count);
        assert_eq!(s.map.len(), count);
        // The conversation in a turn all along was passed over every time.
        assert!(s.map.contains_key("busy"));
        drop(busy);
    }

    #[tokio::test]
    async fn a_turn_that_waited_on_a_conversation_deleted_meanwhile_starts_it_anew() {
        let s = Arc::new(MemoryConversationStore::new(
            10,
            10,
            Duration::from_secs(60),
        ));
        let t = s.begin_turn("a", "c").await.unwrap().unwrap();
        t.commit(msgs(2)).await.unwrap();
        let running = s.begin_turn("a", "c").await.unwrap().unwrap();
        let waiter = {
            let s = Arc::clone(&s);
            #[expect(
                clippy::disallowed_methods,
                reason = "the waiting turn runs beside the test"
            )]
            tokio::spawn(async move {
                let t = s.begin_turn("a", "c").await.unwrap().unwrap();
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
        // The waiting turn did not commit into the deleted conversation: it made a new one.
        assert_eq!(waiter.await.unwrap(), 0);
        let now = s.get("a", "c").await.unwrap().unwrap();
        assert_eq!(now.messages.len(), 1);
        assert_eq!(now.messages[0].content, "after");
        assert_eq!(s.count().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_new_conversation_is_born_in_its_turn_so_no_eviction_takes_it_first() {
        let s = MemoryConversationStore::new(1, 10, Duration::from_secs(60));
        let (slot, held) = s.create("a", "one").unwrap();
        // In the map and in its ring, and already busy: a creator racing in now finds nothing
        // to evict, instead of dropping it before its first turn runs.
        assert!(held.is_some() && !slot.idle() && s.holds(&slot));
        assert_eq!(s.evict(0, 1), 0);
        assert!(matches!(s.create("a", "two"), Err(StoreError::Full(_))));
        drop(held);
        assert!(s.create("a", "two").is_ok());
        assert!(!s.holds(&slot));
    }

    #[tokio::test]
    async fn a_full_store_stays_bounded_and_keeps_taking_conversations() {
        let s = MemoryConversationStore::new(10, 10, Duration::from_secs(60));
        for i in 0..50 {
            let t = s.begin_turn("a", &format!("c{i}")).await.unwrap().unwrap();
            t.commit(msgs(2)).await.unwrap();
            assert!(s.count().await.unwrap() <= 10);
            assert!(s.get("a", &format!("c{i}")).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn conversations_in_a_turn_are_never_evicted() {
        let s = MemoryConversationStore::new(1, 10, Duration::from_secs(60));
        let _busy = s.begin_turn("a", "one").await.unwrap().unwrap();
        assert!(matches!(
            s.begin_turn("a", "two").await,
            Err(StoreError::Full(_))
        ));
    }
}
