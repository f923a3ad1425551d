//! `MAX_STREAMS_PER_KEY`: how many streams (SSE responses and WebSockets) one key holds open at
//! once. A stream takes a [`StreamPermit`] before it calls the model, and gives it back when it
//! ends, however it ends. In memory the count is this process's (one entry per key with a
//! stream open: bounded by the key ring); with Redis it is the fleet's
//! ([`crate::store::redis::streams`]).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::error::ApiError;
use crate::store::redis::RedisStreams;

pub struct StreamQuota {
    open: Arc<DashMap<String, usize>>,
    shared: Option<Arc<RedisStreams>>,
    max: usize,
}

/// One open stream of a key; dropping it gives the stream's place back.
pub struct StreamPermit(Place);

enum Place {
    Local {
        open: Arc<DashMap<String, usize>>,
        owner: String,
    },
    Shared {
        streams: Arc<RedisStreams>,
        id: String,
    },
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        match &mut self.0 {
            Place::Local { open, owner } => {
                if let dashmap::Entry::Occupied(mut e) = open.entry(std::mem::take(owner)) {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
            }
            Place::Shared { streams, id } => streams.release(id),
        }
    }
}

impl StreamQuota {
    pub fn new(max: usize, shared: Option<Arc<RedisStreams>>) -> Self {
        Self {
            open: Arc::new(DashMap::new()),
            shared,
            max,
        }
    }

    fn full(&self) -> ApiError {
        ApiError::Quota {
            message: format!(
                "this key has its maximum of {} streams open (MAX_STREAMS_PER_KEY)",
                self.max
            ),
            retry_after: Duration::from_secs(1),
        }
    }

    /// A place for one more stream of `owner`, or the 429 to answer.
    pub async fn acquire(&self, owner: &str) -> Result<StreamPermit, ApiError> {
        if let Some(streams) = &self.shared {
            return match streams.acquire(owner, self.max).await? {
                Some(id) => Ok(StreamPermit(Place::Shared {
                    streams: Arc::clone(streams),
                    id,
                })),
                None => Err(self.full()),
            };
        }
        let mut n = self.open.entry(owner.to_owned()).or_insert(0);
        if *n >= self.max {
            return Err(self.full());
        }
        *n += 1;
        Ok(StreamPermit(Place::Local {
            open: Arc::clone(&self.open),
            owner: owner.to_owned(),
        }))
    }

    /// How many streams `owner` has open in this process (memory).
    pub fn open(&self, owner: &str) -> usize {
        self.open.get(owner).map_or(0, |n| *n)
    }

    /// With Redis: renews this replica's streams' leases; called periodically.
    pub async fn renew(&self) {
        if let Some(streams) = &self.shared {
            streams.renew().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_are_counted_per_key_and_given_back_on_drop() {
        let q = StreamQuota::new(2, None);
        let a1 = q.acquire("a").await.unwrap();
        let _a2 = q.acquire("a").await.unwrap();
        assert!(matches!(q.acquire("a").await, Err(ApiError::Quota { .. })));
        let _b = q.acquire("b").await.unwrap();
        drop(a1);
        assert_eq!(q.open("a"), 1);
        let _a3 = q.acquire("a").await.unwrap();
        assert_eq!(q.open("a"), 2);
    }

    #[tokio::test]
    async fn the_map_forgets_keys_with_nothing_open() {
        let q = StreamQuota::new(2, None);
        drop(q.acquire("a").await.unwrap());
        assert!(q.open.is_empty());
    }
}
