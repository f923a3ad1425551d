//! Conversations in memory, in per-key namespaces.
//!
//! A conversation is keyed by its owner and its id, so that two keys can both use `support-1`.
//! Bounds: `max_conversations` in all, `max_conversations_per_key` per key, the byte budget
//! (`MAX_STORE_MIB`), `max_messages` per conversation (oldest turns dropped, the system prompt
//! kept), and the TTL for idle ones.
//!
//! A conversation counts (toward every bound) only once its first turn commits: a first turn
//! that fails leaves nothing behind and evicts nothing. Room is made at that commit, in CLOCK
//! order (oldest first; one used again since it was last passed over gets a second chance;
//! one with a turn running is never taken):
//! - a key at its quota evicts its own oldest idle conversation;
//! - a full store (count or bytes) evicts from the key that holds the most, so that a key
//!   under its share never loses a conversation to another key's traffic.
//!
//! A new conversation is refused up front (before the model is called) only when no room could
//! be made: 429 when the key's own conversations are all busy, 503 when the whole store is.
//! Lock order: an owner's ring, then a map shard, then a slot's data; never the other way round.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::ByteBudget;
use crate::llm::Message;
use crate::store::{
    Conversation, ConversationStore, ConversationSummary, StoreError, StoreLimits, TurnLease,
};

/// What a conversation is charged beyond its text, and each message beyond its text.
const SLOT_BYTES: usize = 256;
const MESSAGE_BYTES: usize = 64;

/// Cheap to clone: the state is shared with the turns it hands out, which make room and count
/// themselves in when they commit.
#[derive(Clone)]
pub struct MemoryConversationStore {
    inner: Arc<Inner>,
}

impl std::ops::Deref for MemoryConversationStore {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

pub struct Inner {
    /// By `owner \0 id`.
    map: DashMap<Box<str>, Arc<Slot>>,
    /// Each key's committed conversations, and their count and bytes.
    owners: DashMap<Arc<str>, Arc<Owner>>,
    /// Committed conversations in all, kept beside the map: `DashMap::len` takes every shard's
    /// read lock.
    len: AtomicUsize,
    budget: Arc<ByteBudget>,
    max_conversations: usize,
    max_per_key: usize,
    max_messages: usize,
    ttl: Duration,
}

/// One key's conversations.
struct Owner {
    /// Its committed conversations in the order they were committed first, for eviction.
    ring: Mutex<VecDeque<Weak<Slot>>>,
    count: AtomicUsize,
    bytes: AtomicUsize,
}

impl Owner {
    fn ring(&self) -> MutexGuard<'_, VecDeque<Weak<Slot>>> {
        // Poisoning cannot leave a ring half-changed: every change is one VecDeque call.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Slot {
    key: Box<str>,
    id: Box<str>,
    owner: Arc<Owner>,
    /// Set when the conversation is used again; eviction clears it and passes the slot over once.
    referenced: AtomicBool,
    /// Serializes turns. A tokio mutex because it is held across the model call.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The data; a std mutex, held only to copy or append, never across an `.await`.
    data: Mutex<Data>,
}

struct Data {
    messages: Vec<Message>,
    agent: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_used: Instant,
    /// False until the first turn commits: until then the conversation is invisible and counts
    /// toward nothing.
    committed: bool,
    /// What it is charged against the byte budget (0 until committed).
    bytes: usize,
    /// Taken out of the map (deleted, evicted, expired): a turn still holding it commits
    /// nothing, so that a `DELETE` during a turn is not undone by that turn.
    removed: bool,
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

fn key_of(owner: &str, id: &str) -> String {
    let mut k = String::with_capacity(owner.len() + 1 + id.len());
    k.push_str(owner);
    k.push('\0');
    k.push_str(id);
    k
}

fn bytes_of(messages: &[Message]) -> usize {
    SLOT_BYTES
        + messages
            .iter()
            .map(|m| MESSAGE_BYTES + m.role.len() + m.content.len() + m.tool_bytes())
            .sum::<usize>()
}

impl MemoryConversationStore {
    /// A store with its own byte budget.
    pub fn new(limits: &StoreLimits) -> Self {
        Self::with_budget(limits, Arc::new(ByteBudget::new(limits.max_bytes)))
    }

    pub fn with_budget(limits: &StoreLimits, budget: Arc<ByteBudget>) -> Self {
        Self {
            inner: Arc::new(Inner {
                map: DashMap::new(),
                owners: DashMap::new(),
                len: AtomicUsize::new(0),
                budget,
                max_conversations: limits.max_conversations,
                max_per_key: limits.max_conversations_per_key,
                max_messages: limits.max_messages,
                ttl: limits.conversation_ttl,
            }),
        }
    }
}

impl Inner {
    fn owner(&self, name: &str) -> Arc<Owner> {
        if let Some(o) = self.owners.get(name) {
            return Arc::clone(o.value());
        }
        let owner = self.owners.entry(Arc::from(name)).or_insert_with(|| {
            Arc::new(Owner {
                ring: Mutex::new(VecDeque::new()),
                count: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
            })
        });
        Arc::clone(owner.value())
    }

    fn holds(&self, slot: &Arc<Slot>) -> bool {
        self.map
            .get(&*slot.key)
            .is_some_and(|e| Arc::ptr_eq(e.value(), slot))
    }

    /// Removes a committed conversation if `still` holds for it under its shard's lock, and
    /// releases what it was charged: every removal (eviction, expiry, `DELETE`) goes through
    /// here, so the counts cannot drift from the map.
    fn remove_if(&self, key: &str, still: impl FnOnce(&Arc<Slot>) -> bool) -> Option<Arc<Slot>> {
        let (_, slot) = self
            .map
            .remove_if(key, |_, slot| still(slot) && slot.data().committed)?;
        let bytes = {
            let mut data = slot.data();
            data.removed = true;
            std::mem::take(&mut data.bytes)
        };
        self.len.fetch_sub(1, Ordering::Relaxed);
        slot.owner.count.fetch_sub(1, Ordering::Relaxed);
        slot.owner.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.sub(bytes);
        Some(slot)
    }

    /// A new, uncommitted conversation with its turn already held (between its insertion and a
    /// lock taken afterwards, a racing request could take the turn first), or the one a
    /// concurrent request just made under the same key, whose turn is that request's (`None`).
    fn create(&self, owner: Arc<Owner>, key: String, id: &str) -> (Arc<Slot>, Option<TurnGuard>) {
        let now = Utc::now();
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        // A mutex nobody else has seen: always free.
        let guard = Arc::clone(&turn).try_lock_owned().ok();
        let key: Box<str> = key.into();
        let fresh = Arc::new(Slot {
            key: key.clone(),
            id: id.into(),
            owner,
            referenced: AtomicBool::new(false),
            turn,
            data: Mutex::new(Data {
                messages: Vec::new(),
                agent: None,
                created_at: now,
                updated_at: now,
                last_used: Instant::now(),
                committed: false,
                bytes: 0,
                removed: false,
            }),
        });
        match self.map.entry(key) {
            Entry::Occupied(e) => (Arc::clone(e.get()), None),
            Entry::Vacant(v) => (Arc::clone(v.insert(fresh).value()), guard),
        }
    }

    /// Takes a removed conversation out of its owner's ring (a scan of one ring: for `DELETE`).
    fn unlink(slot: &Arc<Slot>) {
        let mut ring = slot.owner.ring();
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
        let keys: Vec<Box<str>> = self
            .map
            .iter()
            .filter(|e| expired(e.value()))
            .map(|e| e.key().clone())
            .collect();
        // One short write lock per key (`retain` would hold each shard's for its whole pass,
        // and requests for its conversations would wait behind it); each slot is freed outside.
        for key in keys {
            drop(self.remove_if(&key, |slot| expired(slot)));
        }
        // And the rings forget what is gone, one ring locked at a time.
        let owners: Vec<Arc<Owner>> = self.owners.iter().map(|o| Arc::clone(o.value())).collect();
        for owner in owners {
            owner.ring().retain(|w| w.strong_count() > 0);
        }
    }

    /// The owner's committed conversations (from its ring: no scan of the whole map).
    fn of_owner(&self, owner: &str) -> Vec<Arc<Slot>> {
        let Some(owner) = self.owners.get(owner).map(|o| Arc::clone(o.value())) else {
            return Vec::new();
        };
        let ring = owner.ring();
        ring.iter()
            .filter_map(Weak::upgrade)
            .filter(|s| self.holds(s))
            .collect()
    }
}

type TurnGuard = tokio::sync::OwnedMutexGuard<()>;

struct MemoryTurn {
    store: Arc<Inner>,
    slot: Arc<Slot>,
    /// Released when the turn ends, after a failed new conversation was taken out of the map.
    guard: Option<TurnGuard>,
    history: Vec<Message>,
    agent: Option<String>,
}

impl Drop for MemoryTurn {
    /// A new conversation whose first turn did not commit leaves the map: it never existed.
    /// (A turn waiting on it finds it gone and starts its own.)
    fn drop(&mut self) {
        if !self.slot.data().committed {
            let slot = &self.slot;
            self.store.map.remove_if(&*slot.key, |_, s| {
                Arc::ptr_eq(s, slot) && !s.data().committed
            });
        }
        drop(self.guard.take());
    }
}

#[async_trait]
impl TurnLease for MemoryTurn {
    fn history(&self) -> &[Message] {
        &self.history
    }

    fn agent(&self) -> Option<&str> {
        self.agent.as_deref()
    }

    async fn commit_as(
        self: Box<Self>,
        new_messages: Vec<Message>,
        agent: Option<&str>,
    ) -> Result<(), StoreError> {
        let store = &self.store;
        let slot = &self.slot;
        let owner = &slot.owner;
        let first = !slot.data().committed;
        if first {
            // The one moment a new conversation takes room (never before: a failed first
            // turn must evict nothing). Its own charge is added below, and the bytes bound
            // is enforced again after it.
            store.make_room(owner, 1);
        }
        let delta: isize = {
            let mut data = slot.data();
            // Deleted while this turn ran: the DELETE wins (checked under the lock that the
            // removal takes to release the conversation's bytes, so neither can miss the other).
            if data.removed {
                return Err(StoreError::deleted());
            }
            data.messages.extend(new_messages);
            if first {
                data.agent = agent.map(str::to_owned);
            }
            trim(&mut data.messages, store.max_messages);
            let bytes = bytes_of(&data.messages);
            let before = std::mem::replace(&mut data.bytes, bytes);
            data.updated_at = Utc::now();
            data.last_used = Instant::now();
            if first {
                // Counted before it is visible, so that a DELETE's release cannot come first.
                store.len.fetch_add(1, Ordering::Relaxed);
                owner.count.fetch_add(1, Ordering::Relaxed);
                data.committed = true;
            }
            bytes as isize - before as isize
        };
        if delta >= 0 {
            owner.bytes.fetch_add(delta as usize, Ordering::Relaxed);
            store.budget.add(delta as usize);
        } else {
            owner
                .bytes
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
            store.budget.sub(delta.unsigned_abs());
        }
        if first {
            owner.ring().push_back(Arc::downgrade(slot));
        }
        if store.budget.over() {
            store.make_room(owner, 0);
        }
        Ok(())
    }
}

/// Drops the oldest turns (in pairs, keeping a leading system message) until `max` remain.
/// The cut moves on to the next user message (a turn's start), so that a tool call is never
/// separated from its result.
pub fn trim(messages: &mut Vec<Message>, max: usize) {
    if messages.len() <= max {
        return;
    }
    let keep_first = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    let mut excess = messages.len() - max;
    excess += excess % 2;
    let mut end = (keep_first + excess).min(messages.len());
    if let Some(next) = messages[end..].iter().position(|m| m.role == "user") {
        end += next;
    } else {
        // No turn starts after the cut: keep the last one whole (more than `max`, rather than
        // a call without its result).
        end = messages[keep_first..end]
            .iter()
            .rposition(|m| m.role == "user")
            .map_or(keep_first, |i| keep_first + i);
    }
    messages.drain(keep_first..end);
}

#[async_trait]
impl ConversationStore for MemoryConversationStore {
    async fn begin_turn(
        &self,
        owner: &str,
        id: &str,
        wait: Duration,
    ) -> Result<Option<Box<dyn TurnLease>>, StoreError> {
        let key = key_of(owner, id);
        let (slot, guard) = loop {
            let existing = self.map.get(key.as_str()).map(|s| Arc::clone(s.value()));
            let (slot, held) = match existing {
                Some(slot) => {
                    if !slot.referenced.load(Ordering::Relaxed) {
                        slot.referenced.store(true, Ordering::Relaxed);
                    }
                    (slot, None)
                }
                None => {
                    let owner = self.owner(owner);
                    self.check_room(&owner)?;
                    self.create(owner, key.clone(), id)
                }
            };
            // A conversation made here is born in this turn: nothing can have taken it.
            if let Some(guard) = held {
                break (slot, guard);
            }
            let guard = match Arc::clone(&slot.turn).try_lock_owned() {
                Ok(guard) => guard,
                Err(_) if wait.is_zero() => return Err(StoreError::busy()),
                // Busy: wait for it, at most `wait` (the timer only when needed).
                Err(_) => {
                    let lock = Arc::clone(&slot.turn).lock_owned();
                    tokio::time::timeout(wait, lock)
                        .await
                        .map_err(|_| StoreError::busy())?
                }
            };
            // Evicted, deleted, or a failed first turn while this turn waited for it: the
            // conversation is gone, and the turn would be committed to nothing. Look the id up
            // again (gone, it starts a new conversation, as it would have a moment later).
            if self.holds(&slot) {
                break (slot, guard);
            }
        };
        let (history, agent) = {
            let mut data = slot.data();
            data.last_used = Instant::now();
            (data.messages.clone(), data.agent.clone())
        };
        Ok(Some(Box::new(MemoryTurn {
            store: Arc::clone(&self.inner),
            slot,
            guard: Some(guard),
            history,
            agent,
        })))
    }

    async fn get(&self, owner: &str, id: &str) -> Result<Option<Conversation>, StoreError> {
        let key = key_of(owner, id);
        let Some(slot) = self.map.get(key.as_str()).map(|s| Arc::clone(s.value())) else {
            return Ok(None);
        };
        let data = slot.data();
        Ok(data.committed.then(|| Conversation {
            id: id.to_owned(),
            agent: data.agent.clone(),
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
            .of_owner(owner)
            .iter()
            .filter_map(|slot| {
                let data = slot.data();
                data.committed.then(|| ConversationSummary {
                    id: slot.id.to_string(),
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
        let key = key_of(owner, id);
        let Some(slot) = self.remove_if(&key, |_| true) else {
            return Ok(false);
        };
        Inner::unlink(&slot);
        Ok(true)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.len.load(Ordering::Relaxed))
    }

    fn count_now(&self) -> Option<usize> {
        Some(self.len.load(Ordering::Relaxed))
    }

    async fn sweep(&self) {
        self.expire();
    }
}

mod room;
#[cfg(test)]
mod tests;
