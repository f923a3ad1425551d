//! `MAX_STREAMS_PER_KEY`: how many streams (SSE responses and WebSockets) one key holds open at
//! once. A stream takes a [`StreamPermit`] before it calls the model, and gives it back when it
//! ends, however it ends. Counted per process; the map holds one entry per key with a stream
//! open (keys are configured names, so it is bounded by the key ring).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::error::ApiError;

pub struct StreamQuota {
    open: Arc<DashMap<String, usize>>,
    max: usize,
}

/// One open stream of a key; dropping it closes the stream's place.
pub struct StreamPermit {
    open: Arc<DashMap<String, usize>>,
    owner: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut e) = self.open.entry(std::mem::take(&mut self.owner)) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl StreamQuota {
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::new(DashMap::new()),
            max,
        }
    }

    /// A place for one more stream of `owner`, or the 429 to answer.
    pub fn acquire(&self, owner: &str) -> Result<StreamPermit, ApiError> {
        let mut n = self.open.entry(owner.to_owned()).or_insert(0);
        if *n >= self.max {
            return Err(ApiError::Quota {
                message: format!(
                    "this key has its maximum of {} streams open (MAX_STREAMS_PER_KEY)",
                    self.max
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        *n += 1;
        Ok(StreamPermit {
            open: Arc::clone(&self.open),
            owner: owner.to_owned(),
        })
    }

    /// How many streams `owner` has open.
    pub fn open(&self, owner: &str) -> usize {
        self.open.get(owner).map_or(0, |n| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_counted_per_key_and_given_back_on_drop() {
        let q = StreamQuota::new(2);
        let a1 = q.acquire("a").unwrap();
        let _a2 = q.acquire("a").unwrap();
        assert!(matches!(q.acquire("a"), Err(ApiError::Quota { .. })));
        let _b = q.acquire("b").unwrap();
        drop(a1);
        assert_eq!(q.open("a"), 1);
        let _a3 = q.acquire("a").unwrap();
        assert_eq!(q.open("a"), 2);
    }

    #[test]
    fn the_map_forgets_keys_with_nothing_open() {
        let q = StreamQuota::new(2);
        drop(q.acquire("a").unwrap());
        assert!(q.open.is_empty());
    }
}
