//! Making room: eviction in CLOCK order within a key, and from the key that holds the most
//! when the whole store is full (see the parent module for the rules).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Inner, Owner};
use crate::store::StoreError;

/// Why room is wanted: which bound is over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Over {
    Count,
    Bytes,
}

impl Inner {
    /// Evicts one idle conversation of `owner` in CLOCK order: take the oldest of its ring; one
    /// in a turn, or used again since it was last passed over (its flag, cleared now), goes to
    /// the back. Two turns of the ring at most, so a ring whose every conversation was used
    /// again still gives one up, and one whose every conversation is in a turn gives up none.
    /// Slots already removed are dropped from the ring as they come. The evicted conversation
    /// is freed after every lock is released.
    pub(super) fn evict_one(&self, owner: &Owner) -> bool {
        let victim = {
            let mut ring = owner.ring();
            let mut budget = ring.len() * 2;
            let mut victim = None;
            while budget > 0 {
                budget -= 1;
                let Some(weak) = ring.pop_front() else { break };
                let Some(slot) = weak.upgrade() else { continue };
                if slot.referenced.swap(false, Ordering::Relaxed) || !slot.idle() {
                    ring.push_back(weak);
                    continue;
                }
                match self.remove_if(&slot.key, |s| Arc::ptr_eq(s, &slot) && s.idle()) {
                    Some(gone) => {
                        victim = Some(gone);
                        break;
                    }
                    // A turn began in between: it stays.
                    None if self.holds(&slot) => ring.push_back(weak),
                    None => {}
                }
            }
            victim
        };
        victim.is_some()
    }

    /// Whether `owner` has a conversation that could be evicted now (a scan that stops at the
    /// first idle one: the oldest, in the usual case).
    pub(super) fn has_idle(owner: &Owner) -> bool {
        owner
            .ring()
            .iter()
            .any(|w| w.upgrade().is_some_and(|s| s.idle()))
    }

    /// The store's bound that is reached (with `adding` more conversations), if any.
    pub(super) fn full(&self, adding: usize) -> Option<Over> {
        if self.len.load(Ordering::Relaxed) + adding > self.max_conversations {
            Some(Over::Count)
        } else if self.budget.over() {
            Some(Over::Bytes)
        } else {
            None
        }
    }

    /// The key that holds the most (by count or bytes), if any holds anything.
    pub(super) fn biggest_owner(&self, over: Over) -> Option<Arc<Owner>> {
        let held = |o: &Owner| match over {
            Over::Count => o.count.load(Ordering::Relaxed),
            Over::Bytes => o.bytes.load(Ordering::Relaxed),
        };
        self.owners
            .iter()
            .filter(|o| held(o.value()) > 0)
            .max_by_key(|o| held(o.value()))
            .map(|o| Arc::clone(o.value()))
    }

    /// The keys in the order they give up conversations when the whole store is full: the one
    /// that holds the most (by count or bytes, whichever bound is reached) first.
    pub(super) fn biggest_owners(&self, over: Over) -> Vec<Arc<Owner>> {
        let mut owners: Vec<(usize, Arc<Owner>)> = self
            .owners
            .iter()
            .map(|o| {
                let o = o.value();
                let held = match over {
                    Over::Count => o.count.load(Ordering::Relaxed),
                    Over::Bytes => o.bytes.load(Ordering::Relaxed),
                };
                (held, Arc::clone(o))
            })
            .filter(|(held, _)| *held > 0)
            .collect();
        owners.sort_by_key(|o| std::cmp::Reverse(o.0));
        owners.into_iter().map(|(_, o)| o).collect()
    }

    /// Whether a new conversation of `owner` could get room now: asked before its first turn
    /// calls the model, so that a refusal costs nothing.
    pub(super) fn check_room(&self, owner: &Owner) -> Result<(), StoreError> {
        if owner.count.load(Ordering::Relaxed) >= self.max_per_key && !Self::has_idle(owner) {
            return Err(StoreError::key_busy(self.max_per_key));
        }
        // Room anywhere will do: the creator's own idle conversation is checked first (the
        // usual case, without listing the keys).
        if let Some(over) = self.full(1)
            && !Self::has_idle(owner)
            && !self.biggest_owners(over).iter().any(|o| Self::has_idle(o))
        {
            return Err(StoreError::store_busy(self.max_conversations));
        }
        Ok(())
    }

    /// Makes room for what `owner` is about to add: its own oldest first while it is at its
    /// quota, then, while the store is full, from the keys that hold the most. Racing creators
    /// may leave a bound a few over for a moment (as many as race); the next one evicts the
    /// excess.
    pub(super) fn make_room(&self, owner: &Owner, adding: usize) {
        while owner.count.load(Ordering::Relaxed) + adding > self.max_per_key {
            if !self.evict_one(owner) {
                break;
            }
        }
        'outer: while let Some(over) = self.full(adding) {
            // The key that holds the most, found in one pass; the others in order only when it
            // has nothing idle.
            if let Some(biggest) = self.biggest_owner(over)
                && self.evict_one(&biggest)
            {
                continue;
            }
            for victim in self.biggest_owners(over) {
                if self.evict_one(&victim) {
                    continue 'outer;
                }
            }
            break;
        }
    }
}
