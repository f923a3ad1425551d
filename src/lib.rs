//! agent-api: LLM agents behind a fast, safe HTTP API.
//!
//! - [`config`]: the environment, parsed once.
//! - [`state`]: `AppState`, what every handler may use.
//! - [`routes`]: every path and its handler; [`middleware`]: the layers around them.
//! - [`agent`]: the domain (a chat turn, background tasks), free of HTTP.
//! - [`llm`]: the model providers (`openai`, `echo`); [`store`]: conversations and tasks.
//! - [`error`]: the one error type and its HTTP mapping; [`extract`]: FastAPI-style body parsing.
//! - [`metrics`]: Prometheus metrics and the request/upstream timing layer.
//! - [`openapi`]: the OpenAPI document and the offline `/docs`.

pub mod agent;
pub mod config;
pub mod error;
pub mod extract;
pub mod llm;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod responses;
pub mod routes;
pub mod runs;
pub mod state;
pub mod store;
pub mod tools;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::{Listener, ListenerExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use config::Config;
pub use state::AppState;

/// The whole application: every route inside every layer. Tests serve exactly this.
pub fn app(state: AppState) -> Router {
    middleware::apply(routes::router(), &state)
}

/// Binds with a listen backlog large enough for hundreds of simultaneous connects (tokio's
/// default of 128 drops SYNs under a burst).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Raises this process's soft limit on open files to its hard limit, and returns the limit.
/// Each stream open through the openai provider holds two descriptors (the client's socket and
/// the upstream's), and many systems start a process at a soft limit of 1,024 under a far
/// higher hard one: about 500 streams. Go's runtime does the same at start-up.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Serves until `shutdown` resolves; then the whole shutdown takes at most
/// `SHUTDOWN_GRACE_SECS`: stop accepting and stop taking queued tasks at once; let requests,
/// streams and running tasks finish; near the end of the grace, stop what still runs (streams
/// end with an `event: error` saying the server is shutting down, a task alone ends `failed`,
/// a queued one is handed back to the other replicas) and give it the rest of the grace to
/// say so. WebSockets with no reply in progress are closed with 1001 at once.
///
/// Connections are served by hyper's HTTP/1 connection directly rather than through
/// `axum::serve`, whose auto-detecting HTTP/1-or-2 connection (the server speaks HTTP/1 only)
/// first peeks at the bytes and then reads through a rewinding wrapper, and whose per-connection
/// task is larger (see the README's performance notes).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = state.closing.clone();
    let grace = state.config.shutdown_grace;
    let write_timeout = state.config.stream_write_timeout;
    let app = app(state.clone());
    let mut listener = listener.tap_io(|tcp| {
        // Without it, small writes over a reused connection can stall ~40 ms (Nagle + delayed ACK).
        let _ = tcp.set_nodelay(true);
    });
    // Every connection task holds a receiver: the sender sees them all gone when they end.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        #[allow(
            clippy::disallowed_methods,
            reason = "connection tasks are awaited below through `open_tx`, not the TaskRunner"
        )]
        tokio::spawn(serve_connection(
            io,
            peer,
            app.clone(),
            closing.clone(),
            write_timeout,
            open_rx.clone(),
        ));
    }
    let deadline = tokio::time::Instant::now() + grace;
    // What still runs is stopped this long before the end, so that its last words are sent
    // within the grace.
    let stop_at = deadline - (grace / 10).min(std::time::Duration::from_secs(2));
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "shutting down: no new connections or tasks; finishing what is in flight"
    );
    closing.cancel();
    state.runner.drain();
    drop(listener);
    drop(open_rx);
    // Upgraded connections (WebSockets) have left hyper's hands: they are counted apart.
    let connections_closed = || async {
        open_tx.closed().await;
        state.sockets.all_closed().await;
    };
    let finished = async {
        connections_closed().await;
        state.runner.idle().await;
        // Runs that go on without their client (`on_disconnect: continue`) get the grace too.
        state.runs.idle().await;
    };
    if tokio::time::timeout_at(stop_at, finished).await.is_err() {
        tracing::warn!("grace period over; stopping the streams and tasks still running");
    }
    // The MCP servers before the runner (whose stop would only drop their supervisors): each
    // child is closed and waited for, and killed with its process group if it lingers.
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let mcp = state.agents.toolbox.stop();
    let _ = tokio::time::timeout(left.max(std::time::Duration::from_secs(1)), mcp).await;
    state.runner.stop();
    let ended = async {
        connections_closed().await;
        state.runner.wait().await;
    };
    if tokio::time::timeout_at(deadline, ended).await.is_err() {
        tracing::warn!("shutdown grace over; closing what is still open");
    }
    // With Redis: the runs' last events (their ends) written for the other replicas.
    state.runs.flushed(std::time::Duration::from_secs(2)).await;
    Ok(())
}

/// One connection: HTTP/1.1 with keep-alive and upgrades (WebSocket), the peer's address as
/// `ConnectInfo`, hyper's 30 s limit on reading a request's headers (slow-header clients are
/// cut off), a limit on writing (a client that takes no bytes for `STREAM_WRITE_TIMEOUT_SECS`
/// is disconnected: an SSE stream or a WebSocket it stopped reading is let go, and with it the
/// turn), and a graceful close (after the response in flight) once the server is closing.
async fn serve_connection(
    io: TcpStream,
    peer: SocketAddr,
    app: Router,
    closing: CancellationToken,
    write_timeout: std::time::Duration,
    _open: tokio::sync::watch::Receiver<()>,
) {
    let service = app.map_request(move |mut req: axum::extract::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let mut io = tokio_io_timeout::TimeoutStream::new(io);
    io.set_write_timeout(Some(write_timeout));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    let conn = builder
        .serve_connection(
            TokioIo::new(Box::pin(io)),
            TowerToHyperService::new(service),
        )
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::trace!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use rlimit::Resource;

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = Resource::NOFILE.get().unwrap();
        // One below the hard limit (harmless to the other tests in this process), then raised.
        if hard != rlimit::INFINITY && hard > 1024 {
            Resource::NOFILE.set(hard - 1, hard).unwrap();
            assert_eq!(Resource::NOFILE.get().unwrap().0, hard - 1);
        }
        let limit = super::raise_open_file_limit().unwrap();
        assert_eq!(Resource::NOFILE.get().unwrap().0, limit);
        if hard != rlimit::INFINITY {
            assert_eq!(limit, hard);
        }
    }
}
