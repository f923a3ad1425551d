//! One run's event log (API.md, "Runs: resumable streams"), as a pure data structure: events
//! in order with their positions, bounded in bytes (`RUN_LOG_MAX_BYTES`: past it the oldest
//! are dropped), ending with exactly one terminal event; a replay from any position still held.
//! No I/O and no clock: the stores keep it (memory) or mirror it (Redis), and the stream routes
//! follow it.

use std::collections::VecDeque;

/// An event as it was sent: its position, its SSE `event:` name (`None` for a plain `data:`
/// frame) and its data, so that a replay is byte for byte the first sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub seq: u64,
    pub event: Option<&'static str>,
    pub data: String,
}

/// What an event costs the log besides its data: the entry itself (48 bytes on 64-bit).
const ENTRY_BYTES: usize = std::mem::size_of::<LogEvent>();

impl LogEvent {
    fn bytes(&self) -> usize {
        ENTRY_BYTES + self.data.len()
    }
}

/// Why a replay could not be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The position was dropped (the log's byte bound): 410.
    #[error("the events after this position are no longer held")]
    Gone,
    /// The position is past anything the run has sent: 400.
    #[error("the run has sent no event at this position")]
    Unknown,
}

/// A push after the terminal event (a bug of the producer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the run has ended")]
pub struct Ended;

#[derive(Debug, Clone)]
pub struct RunLog {
    events: VecDeque<LogEvent>,
    bytes: usize,
    max_bytes: usize,
    next: u64,
    ended: bool,
}

impl RunLog {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_bytes,
            next: 0,
            ended: false,
        }
    }

    /// Appends an event; its position. The oldest events go while the log is over its bound
    /// (the newest always stays).
    pub fn push(&mut self, event: Option<&'static str>, data: String) -> Result<u64, Ended> {
        if self.ended {
            return Err(Ended);
        }
        Ok(self.append(event, data))
    }

    /// Appends the terminal event (the done frame, or an error); the log takes nothing after.
    pub fn end(&mut self, event: Option<&'static str>, data: String) -> Result<u64, Ended> {
        let seq = self.push(event, data)?;
        self.ended = true;
        Ok(seq)
    }

    fn append(&mut self, event: Option<&'static str>, data: String) -> u64 {
        let seq = self.next;
        self.next += 1;
        let e = LogEvent { seq, event, data };
        self.bytes += e.bytes();
        self.events.push_back(e);
        while self.bytes > self.max_bytes && self.events.len() > 1 {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.bytes();
            }
        }
        seq
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The position of the terminal event, once there is one.
    pub fn terminal(&self) -> Option<u64> {
        self.ended.then(|| self.next - 1)
    }

    /// The bytes the log holds (its charge against the store's budget).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The position after the last event (the next event's `seq`).
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The first position still held.
    pub fn first(&self) -> u64 {
        self.events.front().map_or(self.next, |e| e.seq)
    }

    /// The events from position `pos` on (an event at `seq` ends at position `seq + 1`, so a
    /// client that has seen it asks for `seq + 1`; `0` is the start), as held.
    pub fn from(&self, pos: u64) -> Result<Vec<LogEvent>, ReplayError> {
        if pos > self.next {
            return Err(ReplayError::Unknown);
        }
        let first = self.first();
        if pos < first {
            return Err(ReplayError::Gone);
        }
        let skip = (pos - first) as usize;
        Ok(self.events.iter().skip(skip).cloned().collect())
    }
}

/// An SSE event id: opaque to clients (they echo it back), naming the run and the position
/// after the event (the stream's opening frame names position 0: nothing seen yet).
pub fn event_id(run_id: &str, pos: u64) -> String {
    format!("{run_id}-{pos}")
}

/// The run and position an event id names; `None` for anything this server did not make
/// (a run id is 32 hex digits).
pub fn parse_event_id(id: &str) -> Option<(&str, u64)> {
    let (run, seq) = id.rsplit_once('-')?;
    let hex = run.len() == 32 && run.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = !seq.is_empty() && seq.len() <= 20 && seq.bytes().all(|b| b.is_ascii_digit());
    if !hex || !digits {
        return None;
    }
    Some((run, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(log: &[LogEvent]) -> Vec<&str> {
        log.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn replays_from_any_position_and_ends_with_one_terminal_event() {
        let mut log = RunLog::new(1 << 20);
        assert_eq!(log.push(None, "a".into()), Ok(0));
        assert_eq!(log.push(Some("tool_call"), "b".into()), Ok(1));
        assert_eq!(log.end(None, "done".into()), Ok(2));
        assert_eq!(data(&log.from(0).unwrap()), ["a", "b", "done"]);
        assert_eq!(data(&log.from(1).unwrap()), ["b", "done"]);
        assert_eq!(log.from(1).unwrap()[0].event, Some("tool_call"));
        // After the terminal event: nothing more, and nothing can be added.
        assert!(log.from(3).unwrap().is_empty());
        assert_eq!(log.terminal(), Some(2));
        assert_eq!(log.push(None, "late".into()), Err(Ended));
        assert_eq!(log.end(None, "again".into()), Err(Ended));
        assert_eq!(log.from(4), Err(ReplayError::Unknown));
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_and_their_positions_are_gone() {
        let mut log = RunLog::new(3 * (ENTRY_BYTES + 10));
        for i in 0..5 {
            log.push(None, format!("{i:010}")).unwrap();
        }
        assert!(log.bytes() <= 3 * (ENTRY_BYTES + 10));
        assert_eq!(
            data(&log.from(2).unwrap()),
            ["0000000002", "0000000003", "0000000004"]
        );
        assert_eq!(log.first(), 2);
        assert_eq!(log.from(1), Err(ReplayError::Gone));
        assert_eq!(log.from(0), Err(ReplayError::Gone));
        // One event larger than the bound is still kept (alone).
        log.push(None, "x".repeat(1000)).unwrap();
        assert_eq!(log.from(5).unwrap().len(), 1);
        assert_eq!(log.first(), 5);
    }

    #[test]
    fn event_ids_round_trip_and_garbage_is_refused() {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let id = event_id(&run, 42);
        assert_eq!(parse_event_id(&id), Some((run.as_str(), 42)));
        for bad in [
            "",
            "7",
            "abc-1",
            &format!("{run}-"),
            &format!("{run}-x"),
            &format!("{run}1-2"),
            "../-1",
        ] {
            assert_eq!(parse_event_id(bad), None, "{bad}");
        }
    }
}
