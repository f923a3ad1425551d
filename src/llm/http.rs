//! The HTTP client for upstream chat calls: HTTP/1.1 over pooled keep-alive connections, with the
//! I/O done in the calling task.
//!
//! Why not hyper's client: each of its connections is a task of its own, fed through a channel,
//! and an open stream held about 17 KiB in it (the channel's first block of request slots, the
//! task, an 8 KiB read buffer and an 8 KiB header buffer); at 10,000 open streams that was more
//! than the rest of the server together. Here a connection is a socket and the bytes read but not
//! yet taken: reads go through a buffer on the stack and only what arrived is kept, so a stream
//! that waits for its next chunk holds no buffer at all. It also saves a task hand-off per call
//! on the unary path. Before that, reqwest (which wraps hyper's client) parsed the URL twice more
//! on every call; callgrind put reqwest's own share at a sixth of a whole `POST /chat`.
//!
//! What a gateway needs from a client is kept: a keep-alive pool (most recently used first,
//! idle connections closed after 90 s, and a connection the upstream closed while idle is not
//! used), TCP_NODELAY, a connect timeout, TLS (rustls with ring and the platform's trust store,
//! by hyper-rustls's connector) and `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` (a proxy is
//! reached over HTTP and asked to `CONNECT` to the upstream, by hyper-util's connector).
//!
//! The response is read as RFC 9112 says: `Transfer-Encoding: chunked`, `Content-Length`, or to
//! the end of the connection; interim 1xx answers are skipped; a head may not exceed
//! [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] headers. A connection goes back to the pool only when
//! its body was read to the end and nothing followed it. A request whose pooled connection
//! refused the write (the upstream had closed it while idle, just as it was taken) is sent once
//! more on a new one. A request written in full is never sent again, whatever happens next: the
//! upstream may have read it and be running the prompt, and a second copy would run it twice.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use hyper::Uri;
use hyper::header::HeaderMap;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls_platform_verifier::ConfigVerifierExt as _;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt as _;

/// The largest response head (status line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most response headers accepted.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size or trailer line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes read from the socket at once (into a buffer on the stack).
const READ_SIZE: usize = 16 * 1024;
/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most idle connections kept.
const MAX_IDLE: usize = 1024;

/// Proxy settings as the usual environment variables give them (read by `config.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    pub all: Option<String>,
    pub http: Option<String>,
    pub https: Option<String>,
    pub no: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream closed the connection before it answered")]
    ClosedBeforeAnswer,
    #[error("the upstream closed the connection before the body ended")]
    ClosedEarly,
    #[error("the upstream's answer is not valid HTTP/1.1: {0}")]
    Protocol(String),
}

type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

#[derive(Clone)]
enum Connector {
    Direct(HttpsConnector<HttpConnector>),
    Tunneled(HttpsConnector<Tunnel<HttpConnector>>),
}

/// A client for one upstream endpoint: every call is a `POST` of a body to it, with headers set
/// once. Not `Debug`: its request head carries the upstream key.
pub struct HttpClient {
    connector: Connector,
    uri: Uri,
    /// `POST {path} HTTP/1.1`, `host` and the fixed headers, each line ending in CRLF.
    head: Vec<u8>,
    pool: Arc<Pool>,
    /// The proxy in use, for the start-up log line (without credentials).
    pub proxy: Option<String>,
}

impl HttpClient {
    /// A client that trusts the platform's certificate store.
    pub fn new(
        uri: &Uri,
        headers: &HeaderMap,
        proxy: &ProxySettings,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let tls = rustls::ClientConfig::with_platform_verifier()
            .map_err(|e| format!("TLS set-up failed: {e}"))?;
        Self::with_tls(uri, headers, proxy, connect_timeout, tls)
    }

    /// The same with a TLS configuration of one's own (the tests trust a certificate of theirs).
    pub fn with_tls(
        uri: &Uri,
        headers: &HeaderMap,
        proxy: &ProxySettings,
        connect_timeout: Duration,
        tls: rustls::ClientConfig,
    ) -> Result<Self, String> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let tls = || {
            HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
        };
        let mut matcher = Matcher::builder();
        if let Some(v) = &proxy.all {
            matcher = matcher.all(v);
        }
        if let Some(v) = &proxy.http {
            matcher = matcher.http(v);
        }
        if let Some(v) = &proxy.https {
            matcher = matcher.https(v);
        }
        if let Some(v) = &proxy.no {
            matcher = matcher.no(v);
        }
        let (connector, shown) = match matcher.build().intercept(uri) {
            None => (Connector::Direct(tls().wrap_connector(tcp)), None),
            Some(via) => {
                let mut tunnel = Tunnel::new(via.uri().clone(), tcp);
                if let Some(auth) = via.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let shown = format!(
                    "{}://{}",
                    via.uri().scheme_str().unwrap_or("http"),
                    via.uri().authority().map(|a| a.host()).unwrap_or("")
                );
                (
                    Connector::Tunneled(tls().wrap_connector(tunnel)),
                    Some(shown),
                )
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{uri}` has no host"))?;
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut head = Vec::with_capacity(256);
        for part in [
            "POST ",
            path,
            " HTTP/1.1\r\nhost: ",
            authority.as_str(),
            "\r\n",
        ] {
            head.extend_from_slice(part.as_bytes());
        }
        for (name, value) in headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        Ok(Self {
            connector,
            uri: uri.clone(),
            head,
            pool: Arc::new(Pool::default()),
            proxy: shown,
        })
    }

    /// POSTs `body` and reads the answer's head; the body is read from the [`Response`].
    pub async fn post(&self, body: &[u8]) -> Result<Response, HttpError> {
        let mut request = Vec::with_capacity(self.head.len() + 40 + body.len());
        request.extend_from_slice(&self.head);
        request.extend_from_slice(b"content-length: ");
        request.extend_from_slice(body.len().to_string().as_bytes());
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);
        let mut pooled = true;
        loop {
            let (mut conn, reused) = match pooled.then(|| self.pool.checkout()).flatten() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match exchange(&mut conn, &request).await {
                Ok(head) => {
                    return Ok(Response {
                        status: head.status,
                        head: head.bytes,
                        body: Body {
                            conn: Some(conn),
                            framing: head.framing,
                            keep_alive: head.keep_alive,
                            pool: Arc::clone(&self.pool),
                        },
                    });
                }
                // The upstream closed a pooled connection as it was taken: once more, anew.
                Err(Failure::Stale(_)) if reused => pooled = false,
                Err(Failure::Stale(e) | Failure::Other(e)) => return Err(e),
            }
        }
    }

    async fn connect(&self) -> Result<Conn, HttpError> {
        let io = match &self.connector {
            Connector::Direct(c) => c.clone().oneshot(self.uri.clone()).await,
            Connector::Tunneled(c) => c.clone().oneshot(self.uri.clone()).await,
        }
        .map_err(|e| HttpError::Connect(error_chain(&*e)))?;
        Ok(Conn {
            io: TokioIo::new(io),
            buf: BytesMut::new(),
        })
    }
}

/// An error with its causes, `a: b: c` (connectors' own texts alone say little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A connection and the bytes read from it but not yet taken.
struct Conn {
    io: Io,
    buf: BytesMut,
}

impl Conn {
    /// Reads what the socket has (at most [`READ_SIZE`]) onto `buf`; `Ok(0)` at its end. The
    /// read goes through the stack, so an idle connection keeps no read buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_SIZE];
        let mut read = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Whether an idle connection can still be used: the upstream has neither closed it nor
    /// sent anything unasked (which would be read as the next answer).
    fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let mut read = ReadBuf::uninit(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut read),
            Poll::Pending
        )
    }
}

/// Idle connections, most recently used last.
#[derive(Default)]
struct Pool {
    idle: Mutex<VecDeque<(Conn, Instant)>>,
}

impl Pool {
    /// The idle list, locked only to push or pop (a poisoned lock still holds whole entries).
    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<(Conn, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checkout(&self) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.idle().pop_back()?;
            if since.elapsed() >= IDLE_TIMEOUT {
                // Everything under it waited longer still; closed outside the lock.
                let old = std::mem::take(&mut *self.idle());
                drop(old);
                return None;
            }
            if conn.is_usable() {
                return Some(conn);
            }
        }
    }

    fn checkin(&self, conn: Conn) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut idle = self.idle();
            // The oldest go first: past the cap, past their time, or closed by the upstream
            // while they waited (checking one costs no syscall until its socket has news).
            loop {
                let full = idle.len() >= MAX_IDLE;
                let Some((oldest, since)) = idle.front_mut() else {
                    break;
                };
                if !full && now.duration_since(*since) < IDLE_TIMEOUT && oldest.is_usable() {
                    break;
                }
                closed.extend(idle.pop_front());
            }
            idle.push_back((conn, now));
        }
        // Sockets are closed outside the lock.
        drop(closed);
    }
}

/// An upstream's answer: its status and head; the body is read from `body`.
pub struct Response {
    pub status: u16,
    /// The head as it came: headers are looked up in it only when asked for (on error paths),
    /// rather than copied into a map on every call.
    head: Bytes,
    pub body: Body,
}

impl Response {
    /// The first value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        parsed.parse(&self.head).ok()?;
        let value = parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))?
            .value;
        Some(value)
    }
}

struct Head {
    status: u16,
    bytes: Bytes,
    framing: Framing,
    keep_alive: bool,
}

enum Failure {
    /// The request could not be written: the connection was closed (or reset) before the
    /// upstream could have read it. Only this may be retried, and only on a pooled connection.
    Stale(HttpError),
    Other(HttpError),
}

/// Writes the request and reads the head of the (final) answer.
async fn exchange(conn: &mut Conn, request: &[u8]) -> Result<Head, Failure> {
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
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, HttpError> {
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

enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// The body ends with the connection.
    ToEnd,
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// What one step of the chunked decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    Data(Bytes),
    NeedMore,
    End,
}

impl Chunked {
    /// Decodes what `buf` holds, as far as it goes.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, HttpError> {
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
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Pool>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), HttpError> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match state.decode(&mut buf)? {
                    Decoded::Data(b) => out.extend_from_slice(&b),
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok((out, buf.is_empty())),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn chunked_split_anywhere() {
        let whole: &[u8] =
            b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
        let expected = (b"hello 0123456789".to_vec(), true);
        assert_eq!(decode_all(&[whole]).unwrap(), expected);
        for i in 0..whole.len() {
            let (a, b) = whole.split_at(i);
            assert_eq!(decode_all(&[a, b]).unwrap(), expected, "split at {i}");
        }
        // Bare LF line ends are taken too.
        assert_eq!(
            decode_all(&[b"3\nabc\n0\n\n"]).unwrap(),
            (b"abc".to_vec(), true)
        );
    }

    #[test]
    fn chunked_refuses_nonsense() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"-1\r\n",
            b"3\r\nabcd\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(
                matches!(decode_all(&[bad]), Err(HttpError::Protocol(_))),
                "{bad:?}"
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(matches!(decode_all(&[&long]), Err(HttpError::Protocol(_))));
    }

    #[test]
    fn head_framing() {
        let head = |text: &str| parse_head(&mut BytesMut::from(text));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nRetry-After: 7\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Length(5)) && h.keep_alive);
        let r = Response {
            status: h.status,
            head: h.bytes,
            body: Body {
                conn: None,
                framing: Framing::Done,
                keep_alive: false,
                pool: Arc::default(),
            },
        };
        assert_eq!(r.header("Retry-After"), Some(&b"7"[..]));
        assert_eq!(r.header("x-missing"), None);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Chunked(_)) && h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(matches!(h.framing, Framing::ToEnd) && !h.keep_alive);
        let h = head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 204);
        assert!(matches!(h.framing, Framing::Length(0)));
        assert!(head("HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching\r\n\r\n",
            "HTTQ/1.1 200 OK\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

        /// Any body, cut into chunks of any sizes and fed in pieces split anywhere, decodes to
        /// itself; nothing is left over.
        #[test]
        fn chunked_round_trip(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..2000),
            sizes in proptest::collection::vec(1usize..300, 1..20),
            cut in 0usize..4000,
        ) {
            let mut wire = Vec::new();
            let mut rest = &body[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (a, b) = wire.split_at(cut.min(wire.len()));
            proptest::prop_assert_eq!(decode_all(&[a, b]).unwrap(), (body, true));
        }

        /// Arbitrary bytes never make the head parser or the chunked decoder panic.
        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_head(&mut BytesMut::from(&bytes[..]));
            let mut with_head = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
            with_head.extend_from_slice(&bytes);
            let _ = parse_head(&mut with_head);
            let _ = decode_all(&[&bytes]);
        }
    }

    /// Reads one request: its head, then as many bytes as it says; false if the peer closed.
    async fn read_request(socket: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
        let mut seen = Vec::new();
        let mut bytes = [0u8; 1024];
        loop {
            let n = socket.read(&mut bytes).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&bytes[..n]);
            let text = String::from_utf8_lossy(&seen);
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if seen.len() >= end + 4 + len {
                    return true;
                }
            }
        }
    }

    /// An HTTPS upstream (a certificate of the test's own for `localhost`): both framings over
    /// one kept TLS connection, as with OpenAI itself.
    #[tokio::test]
    #[expect(
        clippy::disallowed_methods,
        reason = "a test server, not the app's work"
    )]
    async fn https_upstream_over_one_kept_connection() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    for answer in [
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nsecret\r\n0\r\n\r\n",
                        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain",
                    ] {
                        if !read_request(&mut tls).await {
                            return;
                        }
                        tls.write_all(answer.as_bytes()).await.unwrap();
                        tls.flush().await.unwrap();
                    }
                    let _ = tls.read(&mut [0u8; 16]).await;
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let uri: Uri = format!("https://localhost:{port}/v1/chat").parse().unwrap();
        let c = HttpClient::with_tls(
            &uri,
            &HeaderMap::new(),
            &ProxySettings::default(),
            Duration::from_secs(2),
            tls,
        )
        .unwrap();
        assert_eq!(body_text(c.post(b"{}").await.unwrap()).await, "secret");
        assert_eq!(body_text(c.post(b"{}").await.unwrap()).await, "again");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A certificate nobody trusts is refused.
        let untrusted = HttpClient::new(
            &uri,
            &HeaderMap::new(),
            &ProxySettings::default(),
            Duration::from_secs(2),
        )
        .unwrap();
        assert!(matches!(
            untrusted.post(b"{}").await,
            Err(HttpError::Connect(_))
        ));
    }

    /// What the raw test server does with each request it reads on a connection.
    #[derive(Clone, Copy)]
    enum Step {
        Answer(&'static str),
        /// Answers, then closes the connection.
        AnswerAndClose(&'static str),
        /// Closes the connection without answering.
        Close,
    }

    /// A server that plays each connection's steps in turn, one per request read, and counts
    /// the connections it accepted.
    #[expect(
        clippy::disallowed_methods,
        reason = "a test server, not the app's work"
    )]
    async fn raw_server(connections: Vec<Vec<Step>>) -> (Uri, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/v1/chat", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            for steps in connections {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    for step in steps {
                        if !read_request(&mut socket).await {
                            return;
                        }
                        match step {
                            Step::Answer(a) => socket.write_all(a.as_bytes()).await.unwrap(),
                            Step::AnswerAndClose(a) => {
                                socket.write_all(a.as_bytes()).await.unwrap();
                                return;
                            }
                            Step::Close => return,
                        }
                    }
                    // Keep the connection open until the client lets go of it.
                    let _ = socket.read(&mut [0u8; 16]).await;
                });
            }
        });
        (uri, accepted)
    }

    fn client(uri: &Uri) -> HttpClient {
        HttpClient::new(
            uri,
            &HeaderMap::new(),
            &ProxySettings::default(),
            Duration::from_secs(2),
        )
        .unwrap()
    }

    async fn body_text(response: Response) -> String {
        String::from_utf8(response.body.read_up_to(1 << 20).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn keep_alive_connection_is_reused() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (uri, accepted) = raw_server(vec![vec![
            Step::Answer(ok),
            Step::Answer(chunked),
            Step::Answer(ok),
        ]])
        .await;
        let c = client(&uri);
        for _ in 0..3 {
            let r = c.post(b"{}").await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(body_text(r).await, "ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_read_in_full_by_a_pooled_connection_that_then_closes_is_sent_once() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        // The first connection answers once, then reads the second request whole and closes:
        // the upstream may be running that prompt, so it must not be sent again.
        let (uri, accepted) = raw_server(vec![
            vec![Step::Answer(ok), Step::Close],
            vec![Step::Answer(ok)],
        ])
        .await;
        let c = client(&uri);
        assert_eq!(body_text(c.post(b"1").await.unwrap()).await, "ok");
        assert!(matches!(
            c.post(b"2").await,
            Err(HttpError::ClosedBeforeAnswer | HttpError::Io(_))
        ));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The next request takes a new connection.
        assert_eq!(body_text(c.post(b"3").await.unwrap()).await, "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pooled_connection_that_refuses_the_write_is_replaced() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (uri, accepted) =
            raw_server(vec![vec![Step::Answer(ok)], vec![Step::Answer(ok)]]).await;
        let c = client(&uri);
        assert_eq!(body_text(c.post(b"1").await.unwrap()).await, "ok");
        // Shut the pooled connection's write side from our end: the next write fails before
        // the upstream could read a byte, so the request goes out once more on a new one.
        {
            let mut idle = c.pool.idle();
            let (conn, _) = idle.front_mut().unwrap();
            let io = conn.io.inner_mut();
            if let MaybeHttpsStream::Http(tcp) = io {
                let std = tcp.inner_mut();
                let sock = socket2::SockRef::from(&*std);
                sock.shutdown(std::net::Shutdown::Write).unwrap();
            }
        }
        assert_eq!(body_text(c.post(b"2").await.unwrap()).await, "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_closed_by_the_upstream_leave_the_pool() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..3 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            peers.push(listener.accept().await.unwrap().0);
            conns.push(Conn {
                io: TokioIo::new(MaybeHttpsStream::Http(TokioIo::new(tcp))),
                buf: BytesMut::new(),
            });
        }
        let pool = Pool::default();
        let mut conns = conns.into_iter();
        pool.checkin(conns.next().unwrap());
        pool.checkin(conns.next().unwrap());
        // The upstream closes the oldest idle connection; the next check-in notices.
        drop(peers.remove(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.checkin(conns.next().unwrap());
        assert_eq!(pool.idle.lock().unwrap().len(), 2);
        // The newest first, and both usable.
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_some());
        assert!(pool.checkout().is_none());
    }

    #[tokio::test]
    async fn a_fresh_connection_closed_before_answering_is_an_error_not_a_retry() {
        let (uri, accepted) = raw_server(vec![vec![Step::Close], vec![Step::Close]]).await;
        let c = client(&uri);
        assert!(matches!(
            c.post(b"1").await,
            Err(HttpError::ClosedBeforeAnswer | HttpError::Io(_))
        ));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn body_to_the_end_of_the_connection_and_cut_bodies() {
        let to_end = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it";
        let short = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
        let cut = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab";
        let (uri, _) = raw_server(vec![
            vec![Step::AnswerAndClose(to_end)],
            vec![Step::AnswerAndClose(short)],
            vec![Step::AnswerAndClose(cut)],
        ])
        .await;
        let c = client(&uri);
        let r = c.post(b"").await.unwrap();
        assert_eq!(body_text(r).await, "all of it");
        for _ in 0..2 {
            let r = c.post(b"").await.unwrap();
            assert!(matches!(
                r.body.read_up_to(100).await,
                Err(HttpError::ClosedEarly)
            ));
        }
    }

    #[tokio::test]
    async fn connection_refused_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        assert!(matches!(
            client(&uri).post(b"").await,
            Err(HttpError::Connect(_))
        ));
    }
}
