//! The same calls on hyper-util's pooled client (`UPSTREAM_HTTP_CLIENT=hyper`), so that the two
//! can be measured side by side in one bench run: HTTP/1.1 with its buffers tuned down, and
//! HTTP/2 when an `https` upstream offers it over ALPN (one connection carries every stream).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper::body::{Body as _, Incoming};
use hyper::header::HeaderMap;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{HttpError, error_chain};

pub(super) struct HyperBackend {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
}

impl HyperBackend {
    pub(super) fn new(
        uri: &Uri,
        headers: &HeaderMap,
        connect_timeout: Duration,
        tls: rustls::ClientConfig,
    ) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            // The smallest read buffer hyper allows that still holds a typical chunk: its
            // default grows to ~400 KiB per connection under a fast stream.
            .http1_read_buf_exact_size(8 * 1024)
            .http2_adaptive_window(true)
            .build(connector);
        Self {
            client,
            uri: uri.clone(),
            headers: headers.clone(),
        }
    }

    pub(super) async fn post(&self, body: &[u8]) -> Result<(u16, HeaderMap, Incoming), HttpError> {
        let mut req = hyper::Request::post(self.uri.clone())
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| HttpError::Protocol(e.to_string()))?;
        *req.headers_mut() = self.headers.clone();
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| HttpError::Connect(error_chain(&e)))?;
        let status = res.status().as_u16();
        let (parts, body) = res.into_parts();
        Ok((status, parts.headers, body))
    }
}

/// The next data of a hyper body (trailers skipped); `None` at its end.
pub(super) fn poll_data(
    body: &mut Incoming,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Bytes, HttpError>>> {
    loop {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Poll::Ready(Some(Ok(data)));
                }
            }
            Poll::Ready(Some(Err(e))) => {
                return Poll::Ready(Some(Err(HttpError::Connect(error_chain(&e)))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        }
    }
}
