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
pub mod routes;
pub mod state;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

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

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests and streams
/// finish within `SHUTDOWN_GRACE_SECS` (WebSockets are closed with 1001 at once), and waits
/// for background tasks to end.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = state.closing.clone();
    let grace = state.config.shutdown_grace;
    let listener = listener.tap_io(|tcp| {
        // Without it, small writes over a reused connection can stall ~40 ms (Nagle + delayed ACK).
        let _ = tcp.set_nodelay(true);
    });
    let signal = {
        let closing = closing.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing what is in flight");
            closing.cancel();
        }
    };
    let server = axum::serve(
        listener,
        app(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal);
    let deadline = async {
        closing.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        res = server => res?,
        _ = deadline => tracing::warn!("grace period over; closing the connections still open"),
    }
    state.runner.shutdown(grace).await;
    Ok(())
}
