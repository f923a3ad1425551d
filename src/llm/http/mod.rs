//! The HTTP client for upstream chat calls: HTTP/1.1 over pooled keep-alive connections, with the
//! I/O done in the calling task.
//!
//! Why our own and not hyper-util's pooled client: decided by measurement (issue 19; the table
//! and the command are in the README's performance section, `bash bench/run.sh --clients`). In
//! one run on the same machine, against the same mock, hyper-util's client (HTTP/1.1 with an
//! 8 KiB read buffer, its smallest sensible one) gave `/chat` c64 a ratio of 0.28 to this
//! client's 0.37 and held 38.2 KiB per open stream to this client's 21.0 (10,000 streams): far
//! outside the 5% and 5 KiB that would have made us switch. The cause is structural: each of its
//! connections is a task of its own fed through a channel, with read and header buffers per
//! connection, where here a connection is a socket and the bytes read but not yet taken (reads
//! go through a buffer on the stack, so a stream waiting for its next chunk holds none), and a
//! unary call needs no task hand-off. Over HTTPS its HTTP/2 wins on streams (scenario 3: 0.976
//! against 0.953) and multiplexes them onto one connection, but it opens no second connection
//! when the upstream's per-connection stream limit is reached: with the common limit of 200,
//! 9,800 of 10,000 held streams waited and timed out. So it stays available as
//! `UPSTREAM_HTTP_CLIENT=hyper` (`hyper_backend.rs`), for upstreams that allow many streams per
//! connection, and this client is the default.
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

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::Uri;
use hyper::header::HeaderMap;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls_platform_verifier::ConfigVerifierExt as _;
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
    /// `UPSTREAM_HTTP_CLIENT=hyper`: the calls go through hyper-util's client instead.
    hyper: Option<hyper_backend::HyperBackend>,
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
            hyper: None,
        })
    }

    /// The same calls through hyper-util's pooled client (HTTP/2 over ALPN for `https`), to
    /// measure the two side by side. No proxy support.
    pub fn use_hyper(&mut self, connect_timeout: Duration, tls: rustls::ClientConfig) {
        let mut headers = HeaderMap::new();
        // The fixed headers, from the request head built once (after its request line).
        let text = String::from_utf8_lossy(&self.head).into_owned();
        for line in text.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(": ")
                && !name.eq_ignore_ascii_case("host")
                && let (Ok(n), Ok(v)) = (
                    hyper::header::HeaderName::from_bytes(name.as_bytes()),
                    hyper::header::HeaderValue::from_str(value),
                )
            {
                headers.insert(n, v);
            }
        }
        self.hyper = Some(hyper_backend::HyperBackend::new(
            &self.uri,
            &headers,
            connect_timeout,
            tls,
        ));
    }

    /// POSTs `body` and reads the answer's head; the body is read from the [`Response`].
    pub async fn post(&self, body: &[u8]) -> Result<Response, HttpError> {
        if let Some(h) = &self.hyper {
            let (status, headers, incoming) = h.post(body).await?;
            return Ok(Response {
                status,
                head: Bytes::new(),
                headers: Some(headers),
                body: Body {
                    conn: None,
                    framing: Framing::Done,
                    keep_alive: false,
                    pool: Arc::clone(&self.pool),
                    hyper: Some(incoming),
                },
            });
        }
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
                        headers: None,
                        body: Body {
                            conn: Some(conn),
                            framing: head.framing,
                            keep_alive: head.keep_alive,
                            pool: Arc::clone(&self.pool),
                            hyper: None,
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

/// An upstream's answer: its status and head; the body is read from `body`.
pub struct Response {
    pub status: u16,
    /// The head as it came: headers are looked up in it only when asked for (on error paths),
    /// rather than copied into a map on every call.
    head: Bytes,
    /// The headers, when the answer came through hyper's client.
    headers: Option<HeaderMap>,
    pub body: Body,
}

impl Response {
    /// The first value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        if let Some(h) = &self.headers {
            return h.get(name).map(|v| v.as_bytes());
        }
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

mod hyper_backend;
mod pool;
mod wire;

use pool::{Conn, Pool};
pub use wire::Body;
use wire::{Failure, Framing, exchange};
#[cfg(test)]
mod tests;
