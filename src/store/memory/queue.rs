//! The task queue in memory, for one process: the same leases as the Redis queue, so that the
//! runner has one way to take, renew, hand back and acknowledge work whatever the store.
//!
//! An entry's id carries a generation (`seq.gen`) that changes whenever it is taken over: a
//! runner still holding the old id can neither renew nor acknowledge it (fencing, as the Redis
//! queue does with consumer names).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::{Notify, broadcast};

use crate::store::{QueueEntry, StoreError, TaskQueue};

pub struct MemoryQueue {
    state: Mutex<State>,
    /// Wakes a reader when an entry is pushed.
    pushed: Notify,
    lease: Duration,
    cancels: broadcast::Sender<String>,
}

#[derive(Default)]
struct State {
    next: u64,
    waiting: VecDeque<(u64, String)>,
    /// Taken entries by sequence number: (task id, generation, lease start).
    leased: HashMap<u64, (String, u64, Instant)>,
}

impl State {
    /// The leased entry named by `entry` if its generation is still the current one.
    fn held(&mut self, entry: &str) -> Option<&mut (String, u64, Instant)> {
        let (seq, generation) = entry.split_once('.')?;
        let (seq, generation): (u64, u64) = (seq.parse().ok()?, generation.parse().ok()?);
        self.leased
            .get_mut(&seq)
            .filter(|(_, g, _)| *g == generation)
    }
}

fn entry(seq: u64, generation: u64, task_id: &str) -> QueueEntry {
    QueueEntry {
        entry: format!("{seq}.{generation}"),
        task_id: task_id.to_owned(),
    }
}

impl MemoryQueue {
    pub fn new(lease: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            pushed: Notify::new(),
            lease,
            cancels: broadcast::channel(64).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change is a single collection call: a poisoned lock still holds whole entries.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Option<QueueEntry> {
        let mut st = self.state();
        let (seq, task_id) = st.waiting.pop_front()?;
        let taken = entry(seq, 0, &task_id);
        st.leased.insert(seq, (task_id, 0, Instant::now()));
        Some(taken)
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    async fn waiting(&self) -> Result<usize, StoreError> {
        Ok(self.state().waiting.len())
    }

    fn waiting_now(&self) -> Option<usize> {
        Some(self.state().waiting.len())
    }

    async fn push(&self, task_id: &str) -> Result<(), StoreError> {
        {
            let mut st = self.state();
            let seq = st.next;
            st.next += 1;
            st.waiting.push_back((seq, task_id.to_owned()));
        }
        self.pushed.notify_one();
        Ok(())
    }

    async fn read(&self, block: Duration) -> Result<Option<QueueEntry>, StoreError> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            // Registered before looking, so that a push in between is not missed.
            let pushed = self.pushed.notified();
            if let Some(e) = self.take() {
                return Ok(Some(e));
            }
            if tokio::time::timeout_at(deadline, pushed).await.is_err() {
                return Ok(self.take());
            }
        }
    }

    async fn claim_stale(&self) -> Result<Option<QueueEntry>, StoreError> {
        let lease = self.lease;
        let mut st = self.state();
        let stale = st
            .leased
            .iter_mut()
            .find(|(_, (_, _, since))| since.elapsed() >= lease);
        Ok(stale.map(|(seq, (task_id, generation, since))| {
            *generation += 1;
            *since = Instant::now();
            entry(*seq, *generation, task_id)
        }))
    }

    async fn renew(&self, entry: &str) -> Result<bool, StoreError> {
        Ok(self
            .state()
            .held(entry)
            .map(|e| e.2 = Instant::now())
            .is_some())
    }

    async fn hand_back(&self, entry: &str) -> Result<bool, StoreError> {
        let lease = self.lease;
        let mut st = self.state();
        Ok(st
            .held(entry)
            .map(|e| e.2 = Instant::now().checked_sub(lease).unwrap_or(e.2))
            .is_some())
    }

    async fn done(&self, entry: &str) -> Result<(), StoreError> {
        let mut st = self.state();
        if st.held(entry).is_some()
            && let Some(seq) = entry.split_once('.').and_then(|(s, _)| s.parse().ok())
        {
            st.leased.remove(&seq);
        }
        Ok(())
    }

    async fn publish_cancel(&self, task_id: &str) -> Result<(), StoreError> {
        // No listener is fine: nothing runs the task here then.
        let _ = self.cancels.send(task_id.to_owned());
        Ok(())
    }

    async fn cancellations(&self) -> Result<BoxStream<'static, String>, StoreError> {
        let rx = self.cancels.subscribe();
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(id) => return Some((id, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })))
    }

    fn lease(&self) -> Duration {
        self.lease
    }
}
