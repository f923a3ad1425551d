//! The client against raw test servers: framing, keep-alive, what is and is not resent.

use super::wire::{Chunked, Decoded, Framing, parse_head};
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        headers: None,
        body: Body {
            conn: None,
            framing: Framing::Done,
            keep_alive: false,
            pool: Arc::default(),
            hyper: None,
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
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
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
    let (uri, accepted) = raw_server(vec![vec![Step::Answer(ok)], vec![Step::Answer(ok)]]).await;
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
