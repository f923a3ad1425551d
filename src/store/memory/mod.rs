//! In-memory stores on DashMap: the default, for one process.
//!
//! - [`conversations`]: conversations in per-key namespaces, with per-key quotas and eviction
//!   that never crosses keys while a key is under its share.
//! - [`tasks`]: task records, with a per-key quota.
//! - [`queue`]: the task queue, with the same leases as the Redis one.
//! - [`responses`]: stored `/v1/responses` responses, with a per-key quota.
//!
//! All draw on one [`ByteBudget`] (`MAX_STORE_MIB`), so that what they hold is bounded in
//! bytes as well as in count. No DashMap guard is ever held across an `.await`.

pub mod conversations;
pub mod queue;
pub mod responses;
pub mod tasks;

use std::sync::atomic::{AtomicUsize, Ordering};

pub use conversations::MemoryConversationStore;
pub use queue::MemoryQueue;
pub use responses::MemoryResponseStore;
pub use tasks::MemoryTaskStore;

use super::StoreLimits;

/// The bytes the memory stores hold, against `MAX_STORE_MIB`. Counted, not measured: a
/// message or task is charged its text plus a fixed overhead for its allocations.
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    max: usize,
}

impl ByteBudget {
    pub fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Over the bound: something must go.
    pub fn over(&self) -> bool {
        self.used() > self.max
    }

    pub fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(&self, n: usize) {
        // Saturating: a release can never wrap the count around.
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// The memory stores for `limits`, sharing one byte budget.
pub fn stores(limits: &StoreLimits) -> (MemoryConversationStore, MemoryTaskStore) {
    let (conversations, tasks, _) = all_stores(limits, 1000);
    (conversations, tasks)
}

/// [`stores`] and the stored responses (`max_responses_per_key`), on the same byte budget.
pub fn all_stores(
    limits: &StoreLimits,
    max_responses_per_key: usize,
) -> (
    MemoryConversationStore,
    MemoryTaskStore,
    MemoryResponseStore,
) {
    let budget = std::sync::Arc::new(ByteBudget::new(limits.max_bytes));
    (
        MemoryConversationStore::with_budget(limits, std::sync::Arc::clone(&budget)),
        MemoryTaskStore::with_budget(limits, std::sync::Arc::clone(&budget)),
        MemoryResponseStore::new(max_responses_per_key, budget),
    )
}
