//! Stored `/v1/responses` responses in memory.
//!
//! Bounds: `MAX_RESPONSES_PER_KEY` per key (a key at it loses its own oldest), the TTL from each
//! response's last write, and the byte budget shared with the conversations and tasks
//! (`MAX_STORE_MIB`; past it the oldest response of the key holding the most goes first, so
//! that one key filling the store costs itself). Lock order: the owners' map, then the
//! responses' map; no guard is held across an `.await`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::time::Instant;

use super::ByteBudget;
use crate::store::{ResponseStore, StoreError, StoredResponse};

/// What a response is charged beyond its JSON text.
const RESPONSE_BYTES: usize = 256;

struct Held {
    response: Arc<StoredResponse>,
    expires: Instant,
    bytes: usize,
}

pub struct MemoryResponseStore {
    map: DashMap<String, Held>,
    /// Each key's response ids, oldest first.
    owners: DashMap<String, VecDeque<String>>,
    budget: Arc<ByteBudget>,
    max_per_key: usize,
}

fn bytes_of(r: &StoredResponse) -> usize {
    // Counted from the JSON text: the items are JSON trees of about that size.
    RESPONSE_BYTES + serde_json::to_vec(r).map_or(0, |v| v.len())
}

impl MemoryResponseStore {
    pub fn new(max_per_key: usize, budget: Arc<ByteBudget>) -> Self {
        Self {
            map: DashMap::new(),
            owners: DashMap::new(),
            budget,
            max_per_key,
        }
    }

    fn remove(&self, id: &str) -> Option<Held> {
        let (_, held) = self.map.remove(id)?;
        self.budget.sub(held.bytes);
        Some(held)
    }

    /// Drops `owner`'s oldest response; false when it holds none.
    fn drop_oldest_of(&self, owner: &str) -> bool {
        let oldest = self
            .owners
            .get_mut(owner)
            .and_then(|mut ids| ids.pop_front());
        match oldest {
            Some(id) => {
                self.remove(&id);
                true
            }
            None => false,
        }
    }

    /// Makes room under the byte budget: the oldest responses of the key that holds the most.
    fn make_room(&self) {
        while self.budget.over() {
            let largest = self
                .owners
                .iter()
                .max_by_key(|e| e.value().len())
                .map(|e| e.key().clone());
            match largest {
                Some(owner) if self.drop_oldest_of(&owner) => {}
                _ => return,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[async_trait]
impl ResponseStore for MemoryResponseStore {
    async fn put(
        &self,
        r: &StoredResponse,
        ttl: Duration,
        replace_only: bool,
    ) -> Result<bool, StoreError> {
        let id = r.id().to_owned();
        let bytes = bytes_of(r);
        let held = Held {
            response: Arc::new(r.clone()),
            expires: Instant::now() + ttl,
            bytes,
        };
        let mut ids = self.owners.entry(r.owner.clone()).or_default();
        match self.map.get_mut(&id) {
            Some(mut old) if old.response.owner == r.owner => {
                self.budget.sub(old.bytes);
                self.budget.add(bytes);
                *old = held;
            }
            Some(_) => return Ok(false),
            None if replace_only => return Ok(false),
            None => {
                while ids.len() >= self.max_per_key {
                    match ids.pop_front() {
                        Some(old) => {
                            self.remove(&old);
                        }
                        None => break,
                    }
                }
                ids.push_back(id.clone());
                self.budget.add(bytes);
                self.map.insert(id, held);
            }
        }
        drop(ids);
        self.make_room();
        Ok(true)
    }

    async fn get(&self, owner: &str, id: &str) -> Result<Option<StoredResponse>, StoreError> {
        let Some(held) = self.map.get(id) else {
            return Ok(None);
        };
        if held.response.owner != owner || held.expires <= Instant::now() {
            return Ok(None);
        }
        Ok(Some(StoredResponse::clone(&held.response)))
    }

    async fn delete(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let mine = self
            .map
            .get(id)
            .is_some_and(|h| h.response.owner == owner && h.expires > Instant::now());
        if !mine {
            return Ok(false);
        }
        if let Some(mut ids) = self.owners.get_mut(owner) {
            ids.retain(|i| i != id);
        }
        Ok(self.remove(id).is_some())
    }

    async fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<(String, String)> = self
            .map
            .iter()
            .filter(|e| e.value().expires <= now)
            .map(|e| (e.value().response.owner.clone(), e.key().clone()))
            .collect();
        for (owner, id) in expired {
            if let Some(mut ids) = self.owners.get_mut(&owner) {
                ids.retain(|i| *i != id);
            }
            self.remove(&id);
        }
        self.owners.retain(|_, ids| !ids.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(owner: &str, id: &str, status: &str) -> StoredResponse {
        StoredResponse {
            owner: owner.into(),
            response: serde_json::from_value(json!({"id": id, "status": status})).unwrap(),
            input: vec![json!({"type": "message", "role": "user", "content": "hi"})],
            context: Vec::new(),
            background: false,
            run_id: None,
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn per_key_ownership_replace_and_delete() {
        let s = MemoryResponseStore::new(10, Arc::new(ByteBudget::new(1 << 20)));
        assert!(
            s.put(&response("a", "r1", "in_progress"), TTL, false)
                .await
                .unwrap()
        );
        assert!(s.get("b", "r1").await.unwrap().is_none());
        assert!(!s.delete("b", "r1").await.unwrap());
        // Another key cannot overwrite it.
        assert!(
            !s.put(&response("b", "r1", "completed"), TTL, false)
                .await
                .unwrap()
        );
        assert!(
            s.put(&response("a", "r1", "completed"), TTL, true)
                .await
                .unwrap()
        );
        assert_eq!(
            s.get("a", "r1").await.unwrap().unwrap().status(),
            "completed"
        );
        assert!(s.delete("a", "r1").await.unwrap());
        // A response deleted while it ran is not brought back by its last write.
        assert!(
            !s.put(&response("a", "r1", "completed"), TTL, true)
                .await
                .unwrap()
        );
        assert!(s.get("a", "r1").await.unwrap().is_none());
        assert_eq!(s.budget.used(), 0);
    }

    #[tokio::test]
    async fn a_key_at_its_quota_loses_its_own_oldest() {
        let s = MemoryResponseStore::new(2, Arc::new(ByteBudget::new(1 << 20)));
        for id in ["a1", "a2", "a3"] {
            s.put(&response("a", id, "completed"), TTL, false)
                .await
                .unwrap();
        }
        s.put(&response("b", "b1", "completed"), TTL, false)
            .await
            .unwrap();
        assert!(s.get("a", "a1").await.unwrap().is_none());
        assert!(s.get("a", "a3").await.unwrap().is_some());
        assert!(s.get("b", "b1").await.unwrap().is_some());
        assert_eq!(s.len(), 3);
    }

    #[tokio::test]
    async fn the_byte_budget_costs_the_largest_key() {
        let one = bytes_of(&response("a", "a0", "completed"));
        let s = MemoryResponseStore::new(100, Arc::new(ByteBudget::new(one * 4)));
        s.put(&response("b", "b0", "completed"), TTL, false)
            .await
            .unwrap();
        for i in 0..6 {
            s.put(&response("a", &format!("a{i}"), "completed"), TTL, false)
                .await
                .unwrap();
        }
        assert!(s.get("b", "b0").await.unwrap().is_some());
        assert!(s.get("a", "a0").await.unwrap().is_none());
        assert!(s.get("a", "a5").await.unwrap().is_some());
        assert!(s.budget.used() <= one * 4);
    }

    #[tokio::test]
    async fn expired_responses_are_gone_and_swept() {
        let s = MemoryResponseStore::new(10, Arc::new(ByteBudget::new(1 << 20)));
        let short = Duration::from_millis(30);
        s.put(&response("a", "r1", "completed"), short, false)
            .await
            .unwrap();
        tokio::time::sleep(short * 2).await;
        assert!(s.get("a", "r1").await.unwrap().is_none());
        s.sweep().await;
        assert!(s.is_empty());
        assert_eq!(s.budget.used(), 0);
    }
}
