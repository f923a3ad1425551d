//! Runs (API.md, "Runs: resumable streams"): every streamed turn and every task is a run with
//! an id and an ordered, bounded log of the frames it sent, which clients replay and follow
//! (`GET /runs/{id}/events`, `GET /chat/stream` with `Last-Event-ID`, `GET /task/{id}/events`).
//!
//! [`Runs`] is the registry. A run's producer (the turn's or the task's own task) holds its
//! [`RunWriter`]: it pushes each frame into the run's [`RunLog`] (here, under a short lock;
//! followers in this process wake on a `Notify`) and ends it with exactly one terminal frame. A
//! writer dropped without an end ends its run `interrupted`.
//!
//! With `STORE=redis` each run's log is mirrored to Redis by a flusher task of its own (in
//! batches, fenced by the producer's token, renewing the producer's lease), so that any replica
//! serves it; a run whose producer stopped renewing is ended `interrupted` by whoever reads it
//! ([`crate::store::redis::RedisRuns`]). In memory a log stays here until `RUN_TTL_SECS` after its
//! end; all the logs held here are bounded together by `RUN_LOGS_MAX_MIB` (past it, the oldest
//! ended runs go first).

pub mod frames;
pub mod log;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use frames::Frame;
pub use log::{LogEvent, ReplayError, RunLog, event_id, parse_event_id};

use crate::store::StoreError;
use crate::store::redis::{RedisRuns, RemoteRun};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::Cancelled,
            Self::Interrupted,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// A run as `GET /runs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RunInfo {
    pub run_id: String,
    /// The conversation of a streamed turn (`null` for a task).
    pub conversation_id: Option<String>,
    pub agent: String,
    /// The task whose run this is (absent for a streamed turn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub status: RunStatus,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub tokens_used: u64,
}

/// What a new run is of.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub owner: String,
    pub conversation_id: Option<String>,
    pub agent: String,
    pub task_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RunSettings {
    /// `RUN_TTL_SECS`.
    pub ttl: Duration,
    /// `RUN_LOG_MAX_BYTES`.
    pub max_log_bytes: usize,
    /// `RUN_LOGS_MAX_MIB`, in bytes.
    pub max_total_bytes: usize,
}

impl RunSettings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            ttl: c.run_ttl,
            max_log_bytes: c.run_log_max_bytes,
            max_total_bytes: c.run_logs_max_bytes,
        }
    }
}

/// Why a run's events cannot be followed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FollowError {
    /// No run of this caller's by that id (or it expired): 404.
    #[error("run not found")]
    NotFound,
    /// The position's events were dropped: 410.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What following a run from a position gives.
pub enum Follow {
    /// Its events from there to its terminal one.
    Events(BoxStream<'static, LogEvent>),
    /// The run has ended and the position is past its terminal event: nothing more will come.
    AtEnd,
}

/// The frame of a run that was interrupted (its producer died, or the server shut down).
pub const INTERRUPTED: &str = "the run was interrupted";

/// How often a follower on another replica than the producer's reads the log from Redis.
const POLL: Duration = Duration::from_millis(100);
/// Events read or written in one Redis call.
const BATCH: usize = 512;

/// Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct Runs(Arc<Inner>);

struct Inner {
    /// Runs produced here (memory: and held after their end, until their TTL).
    local: DashMap<String, Arc<Run>>,
    shared: Option<Arc<RedisRuns>>,
    settings: RunSettings,
    /// Bytes of every log held here.
    held: AtomicUsize,
    /// Memory: the ended runs, oldest end first (TTL and the total bound).
    ended: Mutex<VecDeque<(Instant, String)>>,
    /// The server's end of the shutdown grace: every run still producing stops.
    shutdown: CancellationToken,
    /// Redis: the flushers, which shutdown waits for.
    flushers: TaskTracker,
}

struct Run {
    id: String,
    owner: String,
    conversation_id: Option<String>,
    agent: String,
    task_id: Option<String>,
    created_at: DateTime<Utc>,
    state: Mutex<State>,
    /// Followers here wait on it for the next event.
    changed: Notify,
    /// Wakes the flusher (Redis).
    flush: Notify,
    /// Cancelled by `DELETE /runs/{id}`, by a lost producer lease, and at the end of the
    /// shutdown's grace; the producer watches it.
    stop: CancellationToken,
}

struct State {
    log: RunLog,
    status: RunStatus,
    completed_at: Option<DateTime<Utc>>,
    ended_at: Option<Instant>,
    tokens_used: u64,
    /// Whether its bytes count in [`Runs::held_bytes`] (while it is in the registry).
    counted: bool,
    /// What the run costs besides its log (the record, its ids, its place in the registry).
    fixed: usize,
}

/// Locks, through poisoning: a panicked holder leaves a log that is still consistent (every
/// change to it is one push).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Run {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn info(&self) -> RunInfo {
        let st = self.state();
        RunInfo {
            run_id: self.id.clone(),
            conversation_id: self.conversation_id.clone(),
            agent: self.agent.clone(),
            task_id: self.task_id.clone(),
            status: st.status,
            created_at: self.created_at,
            completed_at: st.completed_at,
            tokens_used: st.tokens_used,
        }
    }
}

impl Runs {
    pub fn new(
        settings: RunSettings,
        shared: Option<Arc<RedisRuns>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self(Arc::new(Inner {
            local: DashMap::new(),
            shared,
            settings,
            held: AtomicUsize::new(0),
            ended: Mutex::new(VecDeque::new()),
            shutdown,
            flushers: TaskTracker::new(),
        }))
    }

    /// The token whose cancellation ends every run still producing (the runner's shutdown).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.0.shutdown.clone()
    }

    /// Starts a run; its producer holds the writer.
    pub fn start(&self, new: NewRun) -> RunWriter {
        let id = uuid::Uuid::new_v4().simple().to_string();
        // The record and its strings, the registry's key and entry (an estimate of the map's).
        let fixed = std::mem::size_of::<Run>()
            + 2 * id.len()
            + new.owner.len()
            + new.agent.len()
            + new.conversation_id.as_ref().map_or(0, String::len)
            + new.task_id.as_ref().map_or(0, String::len)
            + 64;
        let run = Arc::new(Run {
            id: id.clone(),
            owner: new.owner,
            conversation_id: new.conversation_id,
            agent: new.agent,
            task_id: new.task_id,
            created_at: Utc::now(),
            state: Mutex::new(State {
                log: RunLog::new(self.0.settings.max_log_bytes),
                status: RunStatus::Running,
                completed_at: None,
                ended_at: None,
                tokens_used: 0,
                counted: true,
                fixed,
            }),
            changed: Notify::new(),
            flush: Notify::new(),
            stop: self.0.shutdown.child_token(),
        });
        self.0.local.insert(id, Arc::clone(&run));
        self.charge(0, fixed);
        if let Some(shared) = &self.0.shared {
            let (runs, run, shared) = (self.clone(), Arc::clone(&run), Arc::clone(shared));
            self.spawn_flusher(flush(runs, run, shared));
        }
        RunWriter {
            run,
            runs: self.clone(),
        }
    }

    /// A run's flusher belongs to the run (it ends with its last write), not to the runner:
    /// shutdown waits for it after the runner ([`Runs::flushed`]).
    #[expect(
        clippy::disallowed_methods,
        reason = "a flusher belongs to its run, and ends with its last write"
    )]
    fn spawn_flusher(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.flushers.spawn(fut);
    }

    /// The caller's run (`None`: unknown to this owner, or expired).
    pub async fn get(&self, owner: &str, id: &str) -> Result<Option<RunInfo>, StoreError> {
        if let Some(run) = self.visible(owner, id) {
            return Ok(Some(run.info()));
        }
        let Some(shared) = &self.0.shared else {
            return Ok(None);
        };
        Ok(shared
            .read(id, u64::MAX, 0)
            .await?
            .filter(|r| r.owner == owner)
            .map(|r| r.info))
    }

    /// The caller's run's events from position `pos` (0: the start), then live to its end.
    pub async fn follow(&self, owner: &str, id: &str, pos: u64) -> Result<Follow, FollowError> {
        if let Some(run) = self.visible(owner, id) {
            let st = run.state();
            let events = st.log.from(pos)?;
            if events.is_empty() && st.log.is_ended() {
                return Ok(Follow::AtEnd);
            }
            drop(st);
            return Ok(Follow::Events(follow_local(run, pos)));
        }
        let Some(shared) = &self.0.shared else {
            return Err(FollowError::NotFound);
        };
        let remote = shared.read(id, pos, BATCH).await?;
        let remote = remote
            .filter(|r| r.owner == owner)
            .ok_or(FollowError::NotFound)?;
        if pos > remote.next {
            return Err(ReplayError::Unknown.into());
        }
        if pos < remote.first {
            return Err(ReplayError::Gone.into());
        }
        if remote.events.is_empty() && remote.info.status != RunStatus::Running {
            return Ok(Follow::AtEnd);
        }
        Ok(Follow::Events(follow_remote(
            Arc::clone(shared),
            id.to_owned(),
            pos,
            remote.events,
        )))
    }

    /// Cancels the caller's running run and answers it as it then is (an ended run as it is).
    /// Waits a little for the producer to end it, so that the answer says `cancelled`.
    pub async fn cancel(&self, owner: &str, id: &str) -> Result<Option<RunInfo>, StoreError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        if let Some(run) = self.visible(owner, id) {
            run.stop.cancel();
            loop {
                let changed = run.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if run.state().log.is_ended() {
                    break;
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    break;
                }
            }
            return Ok(Some(run.info()));
        }
        let Some(shared) = &self.0.shared else {
            return Ok(None);
        };
        let Some(remote) = shared.read(id, u64::MAX, 0).await? else {
            return Ok(None);
        };
        if remote.owner != owner {
            return Ok(None);
        }
        if remote.info.status != RunStatus::Running {
            return Ok(Some(remote.info));
        }
        // Its producer is on another replica: tell every replica.
        shared.publish_cancel(id).await?;
        let mut last = remote.info;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL / 2).await;
            if let Some(r) = shared.read(id, u64::MAX, 0).await? {
                last = r.info;
                if last.status != RunStatus::Running {
                    break;
                }
            }
        }
        Ok(Some(last))
    }

    /// Stops a run produced here (a cancellation published by another replica).
    pub fn cancel_here(&self, id: &str) {
        if let Some(run) = self.0.local.get(id) {
            run.stop.cancel();
        }
    }

    /// Drops the ended runs past their TTL (memory); called periodically.
    pub fn sweep(&self) {
        let ttl = self.0.settings.ttl;
        loop {
            let id = {
                let mut ended = lock(&self.0.ended);
                match ended.front() {
                    Some((at, _)) if at.elapsed() >= ttl => ended.pop_front().map(|(_, id)| id),
                    _ => None,
                }
            };
            let Some(id) = id else { return };
            self.forget(&id);
        }
    }

    /// The bytes of every run held here: their logs and their records.
    pub fn held_bytes(&self) -> usize {
        self.0.held.load(Ordering::Relaxed)
    }

    /// Runs held here (live ones, and in memory the ended ones within their TTL).
    pub fn len(&self) -> usize {
        self.0.local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.local.is_empty()
    }

    /// Waits until no run produced here is running (shutdown's grace).
    pub async fn idle(&self) {
        while self
            .0
            .local
            .iter()
            .any(|r| r.state().status == RunStatus::Running)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most `limit`) for the flushers to write the runs' last events (shutdown).
    pub async fn flushed(&self, limit: Duration) {
        self.0.flushers.close();
        let _ = tokio::time::timeout(limit, self.0.flushers.wait()).await;
    }

    /// The run by id, if produced or held here, owned by `owner` and not expired.
    fn visible(&self, owner: &str, id: &str) -> Option<Arc<Run>> {
        let run = Arc::clone(self.0.local.get(id)?.value());
        let st = run.state();
        let expired = st
            .ended_at
            .is_some_and(|t| t.elapsed() >= self.0.settings.ttl);
        drop(st);
        (run.owner == owner && !expired).then_some(run)
    }

    fn forget(&self, id: &str) {
        if let Some((_, run)) = self.0.local.remove(id) {
            let mut st = run.state();
            if std::mem::replace(&mut st.counted, false) {
                self.0
                    .held
                    .fetch_sub(st.log.bytes() + st.fixed, Ordering::Relaxed);
            }
        }
    }

    /// Drops the oldest ended runs while the logs held here are over their bound.
    fn evict(&self) {
        while self.held_bytes() > self.0.settings.max_total_bytes {
            let Some((_, id)) = lock(&self.0.ended).pop_front() else {
                return;
            };
            self.forget(&id);
        }
    }

    fn charge(&self, before: usize, after: usize) {
        if after >= before {
            let held = self.0.held.fetch_add(after - before, Ordering::Relaxed) + after - before;
            if held > self.0.settings.max_total_bytes {
                self.evict();
            }
        } else {
            self.0.held.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

/// The producer's hold on its run. Dropped without [`RunWriter::end`], it ends the run
/// `interrupted`.
pub struct RunWriter {
    run: Arc<Run>,
    runs: Runs,
}

impl RunWriter {
    pub fn id(&self) -> &str {
        &self.run.id
    }

    /// Logs a frame; the position after it (the number in its SSE id).
    pub fn push(&self, (event, data): Frame) -> u64 {
        let (before, after, seq) = {
            let mut st = self.run.state();
            let before = st.log.bytes();
            let Ok(seq) = st.log.push(event, data) else {
                return st.log.next();
            };
            let after = if st.counted { st.log.bytes() } else { before };
            (before, after, seq)
        };
        self.wake();
        self.runs.charge(before, after);
        seq + 1
    }

    /// Logs the terminal frame and ends the run as `status`; the position after it. A run ends
    /// once: later calls change nothing.
    pub fn end(&self, status: RunStatus, (event, data): Frame, tokens_used: u64) -> u64 {
        let (before, after, pos) = {
            let mut st = self.run.state();
            let before = st.log.bytes();
            let Ok(seq) = st.log.end(event, data) else {
                return st.log.next();
            };
            st.status = status;
            st.completed_at = Some(Utc::now());
            st.ended_at = Some(Instant::now());
            st.tokens_used = tokens_used;
            let after = if st.counted { st.log.bytes() } else { before };
            (before, after, seq + 1)
        };
        self.wake();
        self.runs.charge(before, after);
        if self.runs.0.shared.is_none() {
            lock(&self.runs.0.ended).push_back((Instant::now(), self.run.id.clone()));
        }
        pos
    }

    /// Whether the run has ended.
    pub fn is_ended(&self) -> bool {
        self.run.state().log.is_ended()
    }

    /// Resolves when the run must stop: `DELETE /runs/{id}`, a lost lease, or shutdown.
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.run.stop.clone().cancelled_owned()
    }

    /// Whether the stop is the server's shutdown.
    pub fn shutting_down(&self) -> bool {
        self.runs.0.shutdown.is_cancelled()
    }

    /// Ends the run as its stop asks: `interrupted` at shutdown (retryable), else `cancelled`;
    /// the terminal frame and the position after it.
    pub fn end_stopped(&self) -> (u64, Frame) {
        let (status, frame) = if self.shutting_down() {
            let detail = serde_json::json!({"detail": "server shutting down", "retryable": true});
            (RunStatus::Interrupted, (Some("error"), detail.to_string()))
        } else {
            let frame = frames::error_detail("the run was cancelled");
            (RunStatus::Cancelled, frame)
        };
        (self.end(status, frame.clone(), 0), frame)
    }

    fn wake(&self) {
        self.run.changed.notify_waiters();
        if self.runs.0.shared.is_some() {
            self.run.flush.notify_one();
        }
    }
}

impl Drop for RunWriter {
    fn drop(&mut self) {
        if !self.is_ended() {
            self.end(RunStatus::Interrupted, frames::error_detail(INTERRUPTED), 0);
        }
    }
}

/// A local run's events from `pos`, as they come, to its terminal one. A follower that falls
/// behind the log's byte bound ends without a terminal frame: its reconnect is answered 410.
fn follow_local(run: Arc<Run>, pos: u64) -> BoxStream<'static, LogEvent> {
    futures::stream::unfold(Some((run, pos)), |st| async move {
        let (run, pos) = st?;
        loop {
            let waiting = Arc::clone(&run);
            let changed = waiting.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (batch, ended) = {
                let st = run.state();
                (st.log.from(pos), st.log.is_ended())
            };
            match batch {
                Ok(events) if !events.is_empty() => {
                    let next = events.last().map_or(pos, |e| e.seq + 1);
                    return Some((events, Some((run, next))));
                }
                Ok(_) if ended => return None,
                Ok(_) => changed.await,
                Err(_) => return None,
            }
        }
    })
    .flat_map(futures::stream::iter)
    .boxed()
}

/// A run produced on another replica, read from Redis every [`POLL`] while nothing is new.
fn follow_remote(
    shared: Arc<RedisRuns>,
    id: String,
    pos: u64,
    first: Vec<LogEvent>,
) -> BoxStream<'static, LogEvent> {
    let start = (shared, id, pos, Some(first));
    futures::stream::unfold(Some(start), |st| async move {
        let (shared, id, mut pos, pending) = st?;
        if let Some(events) = pending.filter(|e| !e.is_empty()) {
            pos = events.last().map_or(pos, |e| e.seq + 1);
            return Some((events, Some((shared, id, pos, None))));
        }
        let mut failures = 0;
        loop {
            match shared.read(&id, pos, BATCH).await {
                Ok(Some(RemoteRun {
                    events,
                    first,
                    next,
                    info,
                    ..
                })) => {
                    if first > pos {
                        return None;
                    }
                    if let Some(last) = events.last() {
                        let next = last.seq + 1;
                        return Some((events, Some((shared, id, next, None))));
                    }
                    if info.status != RunStatus::Running && pos >= next {
                        return None;
                    }
                    failures = 0;
                }
                // Expired meanwhile.
                Ok(None) => return None,
                Err(e) => {
                    failures += 1;
                    if failures > 50 {
                        tracing::warn!(run_id = %id, error = %e, "giving up following a run");
                        return None;
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .flat_map(futures::stream::iter)
    .boxed()
}

/// Mirrors one run to Redis: what the producer logged since the last call, in one fenced script
/// call (which also renews the producer's lease, at least every third of it), until the run has
/// ended and its last event is written. A refused write means the run was ended elsewhere (a
/// reader found the lease lapsed): the producer is stopped.
async fn flush(runs: Runs, run: Arc<Run>, shared: Arc<RedisRuns>) {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let beat = shared.lease() / 3;
    let mut written = 0u64;
    let mut created = false;
    let mut failures = 0u32;
    loop {
        let (batch, first, end, next) = {
            let st = run.state();
            let first = st.log.first();
            let mut batch = st.log.from(written.max(first)).unwrap_or_default();
            batch.truncate(BATCH);
            let end = st
                .log
                .is_ended()
                .then(|| (st.status, st.completed_at, st.tokens_used));
            (batch, first, end, st.log.next())
        };
        let upto = batch.last().map_or(written.max(first), |e| e.seq + 1);
        let meta = RemoteMeta {
            id: &run.id,
            owner: &run.owner,
            conversation_id: run.conversation_id.as_deref(),
            agent: &run.agent,
            task_id: run.task_id.as_deref(),
            created_at: run.created_at,
        };
        let end_now = end.filter(|_| upto >= next);
        match shared
            .append(&meta, &token, !created, &batch, first, end_now)
            .await
        {
            Ok(true) => {
                created = true;
                failures = 0;
                written = upto;
                if end_now.is_some() {
                    break;
                }
                if upto < next {
                    continue;
                }
            }
            Ok(false) => {
                tracing::warn!(run_id = %run.id, "the run was ended elsewhere (its lease lapsed); stopping its producer");
                run.stop.cancel();
                break;
            }
            Err(e) => {
                failures += 1;
                if failures > 20 {
                    tracing::error!(run_id = %run.id, error = %e, "could not write a run's log to the store; giving up");
                    run.stop.cancel();
                    break;
                }
                tracing::warn!(run_id = %run.id, error = %e, "could not write a run's log to the store; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(10)))).await;
                continue;
            }
        }
        tokio::select! {
            () = run.flush.notified() => {}
            () = tokio::time::sleep(beat) => {}
        }
    }
    // Written (or given up): followers from here on read Redis.
    if run.state().log.is_ended() || run.stop.is_cancelled() {
        runs.forget(&run.id);
    }
}

/// What Redis keeps of a run besides its status and log.
pub struct RemoteMeta<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub conversation_id: Option<&'a str>,
    pub agent: &'a str,
    pub task_id: Option<&'a str>,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(max_total: usize) -> Runs {
        let settings = RunSettings {
            ttl: Duration::from_secs(60),
            max_log_bytes: 1 << 20,
            max_total_bytes: max_total,
        };
        Runs::new(settings, None, CancellationToken::new())
    }

    fn new_run() -> NewRun {
        NewRun {
            owner: "k".into(),
            conversation_id: Some("c".into()),
            agent: "default".into(),
            task_id: None,
        }
    }

    #[tokio::test]
    async fn a_writer_dropped_without_an_end_interrupts_its_run() {
        let runs = runs(1 << 20);
        let writer = runs.start(new_run());
        let id = writer.id().to_owned();
        assert_eq!(writer.push((None, "a".into())), 1);
        drop(writer);
        let info = runs.get("k", &id).await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::Interrupted);
        let Ok(Follow::Events(events)) = runs.follow("k", &id, 0).await else {
            panic!("events");
        };
        let events: Vec<LogEvent> = events.collect().await;
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].event, Some("error"));
        assert!(matches!(runs.follow("k", &id, 2).await, Ok(Follow::AtEnd)));
        // Another owner sees nothing.
        assert!(runs.get("other", &id).await.unwrap().is_none());
        assert!(matches!(
            runs.follow("other", &id, 0).await,
            Err(FollowError::NotFound)
        ));
    }

    #[tokio::test]
    async fn a_follower_wakes_for_each_event_and_ends_with_the_terminal_one() {
        let runs = runs(1 << 20);
        let writer = runs.start(new_run());
        let Ok(Follow::Events(mut events)) = runs.follow("k", writer.id(), 0).await else {
            panic!("events");
        };
        writer.push((None, "a".into()));
        assert_eq!(events.next().await.unwrap().data, "a");
        let next = tokio::time::timeout(Duration::from_millis(50), events.next()).await;
        assert!(next.is_err(), "nothing more yet");
        writer.end(RunStatus::Completed, (None, "done".into()), 3);
        assert_eq!(events.next().await.unwrap().data, "done");
        assert!(events.next().await.is_none());
        assert!(writer.is_ended());
    }

    #[tokio::test]
    async fn the_total_bound_drops_the_oldest_ended_runs_and_never_a_running_one() {
        let one = std::mem::size_of::<Run>() + 2 * 32 + 1 + 7 + 1 + 64 + 48 + 100;
        let runs = runs(3 * one);
        let live = runs.start(new_run());
        live.push((None, "x".repeat(100)));
        let mut ended = Vec::new();
        for _ in 0..4 {
            let w = runs.start(new_run());
            w.end(RunStatus::Completed, (None, "y".repeat(100)), 0);
            ended.push(w.id().to_owned());
        }
        assert!(runs.held_bytes() <= 3 * one);
        assert!(runs.get("k", live.id()).await.unwrap().is_some());
        assert!(runs.get("k", &ended[0]).await.unwrap().is_none());
        assert!(runs.get("k", &ended[3]).await.unwrap().is_some());
        drop(live);
        runs.sweep();
        assert!(runs.held_bytes() <= 3 * one);
    }
}
