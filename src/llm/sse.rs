//! A reader of Server-Sent Events from an upstream's response body.
//!
//! It pulls the body only as fast as its caller takes events: no task of its own and no channel,
//! so a slow client slows the upstream read (TCP backpressure) instead of growing a buffer, and
//! dropping the stream drops the upstream response at once. One event may not exceed
//! [`MAX_EVENT_BYTES`]; a bigger one ends the stream with an error.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// The largest event accepted (its `data:` lines together, or one line while it is unfinished).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// One dispatched event: its `event:` name (empty when none was given) and its data lines
/// joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("the upstream stream broke: {0}")]
    Body(String),
    #[error("an event of the upstream stream is larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    #[error("an event of the upstream stream is not UTF-8")]
    NotUtf8,
}

/// The parser, fed bytes as they come. Separate from the I/O so that it is tested alone.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: BytesMut,
    /// How much of `buf` is known to hold no line end: a line fed one byte at a time is scanned
    /// once in all, not once per byte.
    scanned: usize,
    event: String,
    data: String,
    has_data: bool,
    /// The last byte consumed was a `\r`: a `\n` right after it belongs to the same line end.
    after_cr: bool,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event in what was fed, if any.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            // A `\r` that ended the last piece: a `\n` may still come to complete it.
            if self.after_cr && !self.buf.is_empty() {
                if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
                self.after_cr = false;
            }
            let found = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r');
            let Some(end) = found.map(|i| self.scanned + i) else {
                self.scanned = self.buf.len();
                if self.buf.len() + self.data.len() > MAX_EVENT_BYTES {
                    return Err(SseError::TooLarge);
                }
                if self.buf.is_empty() {
                    // A stream waiting for its next event holds no buffer.
                    self.buf = BytesMut::new();
                }
                return Ok(None);
            };
            self.after_cr = self.buf[end] == b'\r';
            self.scanned = 0;
            let line = self.buf.split_to(end + 1);
            let line = std::str::from_utf8(&line[..end]).map_err(|_| SseError::NotUtf8)?;
            if line.is_empty() {
                if self.has_data {
                    self.has_data = false;
                    return Ok(Some(SseEvent {
                        event: std::mem::take(&mut self.event),
                        data: std::mem::take(&mut self.data),
                    }));
                }
                self.event.clear();
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "data" => {
                    if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                        return Err(SseError::TooLarge);
                    }
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                }
                "event" => {
                    self.event.clear();
                    self.event.push_str(value);
                }
                // Comments (`:`), `id`, `retry` and unknown fields mean nothing to a client
                // that does not reconnect.
                _ => {}
            }
        }
    }
}

/// How long the rest of a body is read after its `done` event (see [`events`]).
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_millis(20);

/// Events read from `body`, ending when it ends (an unfinished last event is dropped, as the SSE
/// specification says), after the first error, or at an event whose data is `done` (OpenAI's
/// `[DONE]`), which is not yielded. After `done` the body is read to its end for at most
/// [`DRAIN_TIME`], what comes is dropped: an upstream ends its body right after `[DONE]`, and a
/// body read to its end lets the HTTP client reuse the connection.
pub fn events<S, E>(
    body: S,
    done: &'static str,
) -> impl Stream<Item = Result<SseEvent, SseError>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    futures::stream::unfold(
        Some((body, SseParser::default())),
        move |state| async move {
            let (mut body, mut parser) = state?;
            loop {
                match parser.next_event() {
                    Ok(Some(event)) if event.data == done => {
                        let rest = async { while let Some(Ok(_)) = body.next().await {} };
                        let _ = tokio::time::timeout(DRAIN_TIME, rest).await;
                        return None;
                    }
                    Ok(Some(event)) => return Some((Ok(event), Some((body, parser)))),
                    Ok(None) => {}
                    Err(e) => return Some((Err(e), None)),
                }
                match body.next().await {
                    Some(Ok(bytes)) => parser.feed(&bytes),
                    Some(Err(e)) => return Some((Err(SseError::Body(e.to_string())), None)),
                    None => return None,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for piece in input {
            p.feed(piece);
            while let Some(e) = p.next_event()? {
                out.push(e);
            }
        }
        Ok(out)
    }

    #[test]
    fn a_line_fed_byte_by_byte_is_scanned_once_and_crlf_may_split() {
        let mut p = SseParser::default();
        for (i, b) in b"data: ".iter().chain(&[b'x'; 10_000]).enumerate() {
            p.feed(&[*b]);
            assert_eq!(p.next_event(), Ok(None));
            // Only the new byte was looked at: what was scanned is remembered.
            assert_eq!(p.scanned, i + 1);
        }
        p.feed(b"\r");
        assert_eq!(p.next_event(), Ok(None));
        p.feed(b"\n");
        assert_eq!(
            p.next_event(),
            Ok(None),
            "the \\n completes the \\r: not an empty line"
        );
        p.feed(b"data: y\r\n\r\n");
        let e = p.next_event().unwrap().unwrap();
        assert_eq!(e.data, format!("{}\ny", "x".repeat(10_000)));
    }

    fn data(d: &str) -> SseEvent {
        SseEvent {
            event: String::new(),
            data: d.into(),
        }
    }

    #[test]
    fn events_split_anywhere_and_any_line_end() {
        let whole: &[u8] = b": comment\r\ndata: {\"a\":1}\r\n\r\nevent: error\rdata: x\rdata:y\r\rdata: [DONE]\n\n";
        let expected = vec![
            data("{\"a\":1}"),
            SseEvent {
                event: "error".into(),
                data: "x\ny".into(),
            },
            data("[DONE]"),
        ];
        assert_eq!(all(&[whole]).unwrap(), expected);
        // Every split point, including between the \r and \n of one line end.
        for i in 0..whole.len() {
            let (a, b) = whole.split_at(i);
            assert_eq!(all(&[a, b]).unwrap(), expected, "split at {i}");
        }
    }

    #[test]
    fn no_data_no_event_and_unfinished_event_waits() {
        assert_eq!(all(&[b"event: x\n\n: ping\n\n"]).unwrap(), vec![]);
        assert_eq!(all(&[b"data: half"]).unwrap(), vec![]);
    }

    #[test]
    fn oversized_event_is_refused() {
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert_eq!(all(&[b"data: ", &big]), Err(SseError::TooLarge));
        let line = vec![b'a'; MAX_EVENT_BYTES / 2 + 1];
        let mut many = Vec::new();
        for _ in 0..2 {
            many.extend_from_slice(b"data: ");
            many.extend_from_slice(&line);
            many.push(b'\n');
        }
        assert_eq!(all(&[&many]), Err(SseError::TooLarge));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(all(&[b"data: \xff\n\n"]), Err(SseError::NotUtf8));
    }

    #[tokio::test]
    async fn stream_ends_on_body_error() {
        let body =
            futures::stream::iter(vec![Ok(Bytes::from_static(b"data: 1\n\n")), Err("reset")]);
        let got: Vec<_> = events(body, "[DONE]").collect().await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Ok(data("1")));
        assert_eq!(got[1], Err(SseError::Body("reset".into())));
    }

    #[tokio::test]
    async fn done_ends_the_events_and_the_rest_of_the_body_is_read() {
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&taken);
        let pieces: Vec<Result<Bytes, &str>> = vec![
            Ok(Bytes::from_static(b"data: 1\n\ndata: [DONE]\n\n")),
            Ok(Bytes::from_static(b"data: after\n\n")),
            Ok(Bytes::from_static(b"more")),
        ];
        let body = futures::stream::iter(pieces).inspect(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let got: Vec<_> = events(body, "[DONE]").collect().await;
        assert_eq!(got, vec![Ok(data("1"))]);
        assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
