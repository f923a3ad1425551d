//! HTTP/1.1 on one connection: writing a request, reading the head of its answer, and the
//! body's framing (RFC 9112: chunked, Content-Length, or to the end of the connection).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use tokio::io::AsyncWriteExt;

use super::pool::{Conn, Pool};
use super::{HttpError, MAX_CHUNK_LINE, MAX_HEAD_BYTES, MAX_HEADERS};

pub(super) struct Head {
    pub(super) status: u16,
    pub(super) bytes: Bytes,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
}

pub(super) enum Failure {
    /// The request could not be written: the connection was closed (or reset) before the
    /// upstream could have read it. Only this may be retried, and only on a pooled connection.
    Stale(HttpError),
    Other(HttpError),
}

/// Writes the request and reads the head of the (final) answer.
pub(super) async fn exchange(conn: &mut Conn, request: &[u8]) -> Result<Head, Failure> {
    let written = async {
        conn.io.write_all(request).await?;
        conn.io.flush().await
    };
    written.await.map_err(|e| Failure::Stale(e.into()))?;
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            answered = true;
            if let Some(head) = parse_head(&mut conn.buf).map_err(Failure::Other)? {
                return Ok(head);
            }
            if conn.buf.len() > MAX_HEAD_BYTES {
                return Err(Failure::Other(HttpError::Protocol(format!(
                    "the response head is larger than {MAX_HEAD_BYTES} bytes"
                ))));
            }
        }
        match conn.fill().await {
            Ok(0) if answered => return Err(Failure::Other(HttpError::ClosedEarly)),
            Ok(0) => return Err(Failure::Other(HttpError::ClosedBeforeAnswer)),
            Ok(_) => {}
            // Written in full: whatever breaks now, the request is not sent again.
            Err(e) => return Err(Failure::Other(e.into())),
        }
    }
}

/// Parses a complete head off the front of `buf`: `None` until one is there. Interim (1xx)
/// answers are taken off and skipped.
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, HttpError> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        let len = match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HttpError::Protocol(e.to_string())),
        };
        let status = parsed.code.unwrap_or(0);
        if status == 101 {
            return Err(HttpError::Protocol("an unasked-for protocol switch".into()));
        }
        if (100..200).contains(&status) {
            buf.advance(len);
            continue;
        }
        let mut keep_alive = parsed.version == Some(1);
        let mut chunked = None;
        let mut length: Option<u64> = None;
        for h in parsed.headers.iter() {
            let value = h.value;
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only the last coding says how the body ends.
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(value)
                    .ok()
                    .map(str::trim)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| HttpError::Protocol("a bad Content-Length".into()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::Protocol("two different Content-Lengths".into()));
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            }
        }
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            match (chunked, length) {
                (Some(true), None) => Framing::Chunked(Chunked::Size),
                // Both, or a coding that is not chunked last: read to the end, and do not
                // reuse a connection whose framing was in doubt.
                (Some(true), Some(_)) => {
                    keep_alive = false;
                    Framing::Chunked(Chunked::Size)
                }
                (Some(false), _) | (None, None) => {
                    keep_alive = false;
                    Framing::ToEnd
                }
                (None, Some(n)) => Framing::Length(n),
            }
        };
        return Ok(Some(Head {
            status,
            bytes: buf.split_to(len).freeze(),
            framing,
            keep_alive,
        }));
    }
}

pub(super) enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// The body ends with the connection.
    ToEnd,
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// What one step of the chunked decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    Data(Bytes),
    NeedMore,
    End,
}

impl Chunked {
    /// Decodes what `buf` holds, as far as it goes.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, HttpError> {
        loop {
            match *self {
                Chunked::Size | Chunked::Trailers => {
                    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(HttpError::Protocol("a chunk line is too long".into()));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if end > MAX_CHUNK_LINE {
                        return Err(HttpError::Protocol("a chunk line is too long".into()));
                    }
                    let line = buf.split_to(end + 1);
                    let line = line[..end].strip_suffix(b"\r").unwrap_or(&line[..end]);
                    if *self == Chunked::Trailers {
                        if line.is_empty() {
                            return Ok(Decoded::End);
                        }
                        continue;
                    }
                    // The size, then perhaps `;extensions`, which mean nothing here.
                    let size = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(size.trim_ascii())
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                        .ok_or_else(|| HttpError::Protocol("a bad chunk size".into()))?;
                    *self = if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = left.min(buf.len() as u64);
                    *self = if n == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - n)
                    };
                    return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
                }
                Chunked::DataEnd => match buf.first() {
                    None => return Ok(Decoded::NeedMore),
                    Some(b'\n') => {
                        buf.advance(1);
                        *self = Chunked::Size;
                    }
                    Some(b'\r') if buf.len() == 1 => return Ok(Decoded::NeedMore),
                    Some(b'\r') if buf[1] == b'\n' => {
                        buf.advance(2);
                        *self = Chunked::Size;
                    }
                    Some(_) => {
                        return Err(HttpError::Protocol(
                            "a chunk is longer than its size".into(),
                        ));
                    }
                },
            }
        }
    }
}

/// A response body, read as its caller takes it (no task, no buffer beyond what arrived).
/// Dropped before its end, it closes the connection: that is how an upstream call is cancelled.
pub struct Body {
    pub(super) conn: Option<Conn>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) pool: Arc<Pool>,
    /// The body of an answer through hyper's client (`UPSTREAM_HTTP_CLIENT=hyper`) instead.
    pub(super) hyper: Option<hyper::body::Incoming>,
}

impl Body {
    /// The next piece of the body; `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, HttpError> {
        poll_fn(|cx| self.poll_piece(cx)).await
    }

    /// The whole body, or its first `limit` bytes and more if it is longer (not read further).
    pub async fn read_up_to(mut self, limit: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        if let Framing::Length(n) = self.framing {
            out.reserve(n.min(limit as u64) as usize);
        }
        while let Some(piece) = self.next().await? {
            out.extend_from_slice(&piece);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, HttpError>> {
        if let Some(body) = self.hyper.as_mut() {
            return super::hyper_backend::poll_data(body, cx).map(Option::transpose);
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            let buf = &mut conn.buf;
            let piece = match &mut self.framing {
                Framing::Done => None,
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    continue;
                }
                Framing::Length(left) if !buf.is_empty() => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    Some(buf.split_to(n as usize).freeze())
                }
                Framing::ToEnd if !buf.is_empty() => Some(buf.split().freeze()),
                Framing::Chunked(state) => match state.decode(buf)? {
                    Decoded::Data(bytes) => Some(bytes),
                    Decoded::End => {
                        self.framing = Framing::Done;
                        continue;
                    }
                    Decoded::NeedMore => {
                        ready!(self.poll_more(cx))?;
                        continue;
                    }
                },
                Framing::Length(_) | Framing::ToEnd => {
                    ready!(self.poll_more(cx))?;
                    continue;
                }
            };
            if buf.is_empty() {
                // Let go of the allocation once the pieces handed out are dropped.
                *buf = BytesMut::new();
            }
            match piece {
                Some(bytes) => return Poll::Ready(Ok(Some(bytes))),
                None => {
                    self.finish();
                    return Poll::Ready(Ok(None));
                }
            }
        }
    }

    /// Reads more from the socket; its end is the body's end only for [`Framing::ToEnd`].
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match ready!(conn.poll_fill(cx)) {
            Ok(0) if matches!(self.framing, Framing::ToEnd) => {
                self.framing = Framing::Done;
                self.keep_alive = false;
                Poll::Ready(Ok(()))
            }
            Ok(0) => {
                self.conn = None;
                Poll::Ready(Err(HttpError::ClosedEarly))
            }
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => {
                self.conn = None;
                Poll::Ready(Err(e.into()))
            }
        }
    }

    /// The body was read to its end: the connection goes back to the pool if it can be reused.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            self.pool.checkin(conn);
        }
    }
}

impl Stream for Body {
    type Item = Result<Bytes, HttpError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match ready!(self.poll_piece(cx)) {
            Ok(Some(bytes)) => Poll::Ready(Some(Ok(bytes))),
            Ok(None) => Poll::Ready(None),
            Err(e) => {
                self.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}
