//! Bench only: terminates TLS (ALPN `h2` and `http/1.1`) for `localhost` with a self-signed
//! certificate, and forwards every request to a plain-HTTP upstream (the bench mock) over pooled
//! HTTP/1.1 connections, streaming the answer back as it comes.
//!
//! `tls-front LISTEN_PORT UPSTREAM_URL CERT_OUT`: writes the certificate (PEM) to CERT_OUT, for
//! the client's `SSL_CERT_FILE`, and prints `tls-front listening on https://localhost:PORT`.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Upstream = Client<HttpConnector, Incoming>;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (port, upstream, cert_out) = (&args[1], args[2].clone(), &args[3]);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(cert_out, cert.cert.pem()).expect("write the certificate");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
        )
        .expect("tls config");
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("bind");
    println!(
        "tls-front listening on https://localhost:{}",
        listener.local_addr().expect("addr").port()
    );
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(http);
    let upstream: Arc<str> = upstream.trim_end_matches('/').into();
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let (acceptor, client, upstream) = (acceptor.clone(), client.clone(), upstream.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = service_fn(move |req: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move { forward(client, &upstream, req).await }
            });
            let mut server = auto::Builder::new(TokioExecutor::new());
            // Streams per HTTP/2 connection: FRONT_MAX_STREAMS (default hyper's 200; real
            // upstreams cap it too, commonly at 100 to 250).
            let max = std::env::var("FRONT_MAX_STREAMS").ok().and_then(|v| v.parse().ok());
            server.http2().max_concurrent_streams(max.or(Some(200)));
            let _ = server.serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

async fn forward(
    client: Upstream,
    upstream: &str,
    req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>>, String> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    parts.uri = format!("{upstream}{path}").parse().map_err(|e| format!("{e}"))?;
    parts.version = hyper::Version::HTTP_11;
    parts.headers.remove(hyper::header::HOST);
    let res = client
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| e.to_string())?;
    Ok(res.map(|b| b.boxed()))
}
