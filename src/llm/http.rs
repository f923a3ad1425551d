//! The HTTP client for upstream chat calls: hyper-util's pooled client, used directly.
//!
//! reqwest (which wraps this same client) parsed the request's URL twice more on every call, in
//! its redirect layer and when reading the response; callgrind put reqwest's own share at about
//! a sixth of a whole `POST /chat`. What reqwest gave and a gateway needs is kept here: a
//! keep-alive pool, TCP_NODELAY, a connect timeout, TLS (rustls with ring, the platform's trust
//! store) and `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` (a proxy is reached over HTTP
//! and asked to `CONNECT` to the upstream).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::ConfigVerifierExt as _;

/// Proxy settings as the usual environment variables give them (read by `config.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    pub all: Option<String>,
    pub http: Option<String>,
    pub https: Option<String>,
    pub no: Option<String>,
}

#[derive(Clone)]
enum Inner {
    Direct(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
    Tunneled(Client<HttpsConnector<Tunnel<HttpConnector>>, Full<Bytes>>),
}

/// A pooled client for one upstream (the proxy question is settled once, for its address).
#[derive(Clone)]
pub struct HttpClient {
    inner: Inner,
    /// The proxy in use, for the start-up log line (without credentials).
    pub proxy: Option<String>,
}

impl HttpClient {
    pub fn new(
        upstream: &Uri,
        proxy: &ProxySettings,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let tls = rustls::ClientConfig::with_platform_verifier()
            .map_err(|e| format!("TLS set-up failed: {e}"))?;
        let tls = || {
            HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
        };
        let mut pool = Client::builder(TokioExecutor::new());
        pool.pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new());
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
        Ok(match matcher.build().intercept(upstream) {
            None => Self {
                inner: Inner::Direct(pool.build(tls().wrap_connector(tcp))),
                proxy: None,
            },
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
                Self {
                    inner: Inner::Tunneled(pool.build(tls().wrap_connector(tunnel))),
                    proxy: Some(shown),
                }
            }
        })
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        let result = match &self.inner {
            Inner::Direct(c) => c.request(req).await,
            Inner::Tunneled(c) => c.request(req).await,
        };
        result.map_err(|e| error_chain(&e))
    }
}

/// An error with its causes, `a: b: c` (hyper's own text alone says little: "client error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads a body up to `limit` bytes; the rest, if any, is not read.
pub async fn read_body(body: &mut Incoming, limit: usize) -> Result<Vec<u8>, hyper::Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            out.extend_from_slice(&data);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}
