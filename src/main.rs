//! The `agent-api` binary: read the config, set up logging, serve until SIGTERM or SIGINT.

use agent_api::config::{Config, LogFormat};
use agent_api::state::AppState;

/// mimalloc, chosen by measurement (glibc malloc's share of a request: the README's
/// performance notes).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A missing .env is normal; a broken one is reported once logging is up.
    let dotenv = dotenvy::dotenv();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent-api: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Held until exit: dropping it flushes the log lines still queued.
    let _log_guard = init_tracing(&config);
    if let Err(e) = dotenv
        && !e.not_found()
    {
        tracing::warn!(error = %e, "could not read .env");
    }
    let addr = config.addr;
    let state = match AppState::build(config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return std::process::ExitCode::from(2);
        }
    };
    log_start(&state);
    match agent_api::raise_open_file_limit() {
        Ok(limit) => tracing::info!(limit, "open-file limit (an upstream stream holds two)"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let listener = match agent_api::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            return std::process::ExitCode::from(1);
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!("listening on http://{bound}");
    match agent_api::serve(listener, state, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            std::process::ExitCode::from(1)
        }
    }
}

/// Log lines are written by a background thread (tracing-appender), so that a slow stdout (a
/// full pipe) never blocks a runtime thread; the queue is not lossy: when full, logging waits.
/// Its slots are allocated and written up front: tracing-appender's default of 128,000 lines
/// cost 5 MiB of resident memory at rest (idle RSS 12.7 MiB instead of about 8).
const LOG_QUEUE_LINES: usize = 4096;

fn init_tracing(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(std::io::stdout());
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
    guard
}

fn log_start(state: &AppState) {
    let c = &state.config;
    match state.llm.name() {
        "echo" => tracing::warn!(
            "LLM_PROVIDER=echo: answers are the built-in offline echo, not a model. \
             Set OPENAI_API_KEY or OPENAI_BASE_URL to use a real one."
        ),
        name => {
            tracing::info!(provider = name, base_url = %c.openai_base_url, model = %c.chat_model, "model provider")
        }
    }
    if !c.auth_enabled() {
        tracing::warn!("no API_KEYS configured: the server is open to anyone who can reach it");
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
