//! [`AppState`]: everything a handler may need, built once by [`AppState::build`] (main) or by
//! [`AppStateBuilder`] (tests, which swap the provider or stores).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::agent::TaskRunner;
use crate::agent::runner::RunnerLimits;
use crate::config::{Config, ProviderKind, StoreKind, UpstreamHttpClient};
use crate::llm::{EchoProvider, LlmProvider, OpenAiProvider};
use crate::metrics::{MeteredProvider, Metrics};
use crate::middleware::auth::KeyRing;
use crate::middleware::rate_limit::RateLimiter;
use crate::middleware::streams::{StreamPermit, StreamQuota};
use crate::routes::ws::SocketRegistry;
use crate::runs::{RunSettings, Runs};
use crate::store::redis::{RedisRateLimiter, RedisRuns, RedisSettings, RedisStores, RedisStreams};
use crate::store::{
    ConversationStore, MemoryQueue, ResponseStore, StoreError, StoreLimits, TaskQueue, TaskStore,
    memory,
};

/// Cloned into every request and every layer: one `Arc`, so a clone is one atomic increment
/// rather than one per field (measured: the README's performance notes).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    /// Parsed once at start; read by handlers and layers.
    pub config: Arc<Config>,
    /// The agents (the file's and the built-in default) and the tools they call.
    pub agents: Arc<crate::agent::Agents>,
    /// The model. One instance (one pooled HTTP client) for the whole process; the task runner
    /// holds a clone.
    pub llm: Arc<dyn LlmProvider>,
    /// Conversations; the domain serializes turns through it.
    pub conversations: Arc<dyn ConversationStore>,
    /// Task records; the runner writes them, handlers read them.
    pub tasks: Arc<dyn TaskStore>,
    /// Runs tasks and every other background job; `main` waits for it on shutdown.
    pub runner: TaskRunner,
    /// Every streamed turn's and task's run, with its event log.
    pub runs: Runs,
    /// Stored `/v1/responses` responses.
    pub responses: Arc<dyn ResponseStore>,
    /// The configured API keys, as hashes; used by the auth layer.
    pub keys: Arc<KeyRing>,
    /// Per-client and per-key token buckets; used by the rate-limit layer and by `/ws`.
    pub limiter: Arc<RateLimiter>,
    /// Open streams per key (`MAX_STREAMS_PER_KEY`); the SSE routes and `/ws` take a permit.
    pub streams: StreamQuota,
    /// Open WebSockets by owner and client id; `/ws` registers and replaces through it.
    pub sockets: Arc<SocketRegistry>,
    /// Cancelled when shutdown begins: WebSockets close with 1001 on it. `serve` cancels it.
    pub closing: CancellationToken,
    /// Prometheus metrics; the metrics layer, the provider wrapper, the runner and the
    /// streaming routes write to it, `/metrics` reads it.
    pub metrics: Arc<Metrics>,
    /// For `/health`'s uptime.
    pub started: Instant,
    /// `/ready`'s last result.
    pub ready: crate::routes::health::ReadyCache,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("STORE: {0}")]
    Store(#[from] StoreError),
    #[error("OPENAI_BASE_URL: {0}")]
    Provider(String),
}

/// The stores for `STORE`: memory (one process) or Redis (shared by replicas).
struct Stores {
    conversations: Arc<dyn ConversationStore>,
    tasks: Arc<dyn TaskStore>,
    limiter: Option<Arc<RedisRateLimiter>>,
    streams: Option<Arc<RedisStreams>>,
    queue: Arc<dyn TaskQueue>,
    runs: Option<Arc<RedisRuns>>,
    responses: Arc<dyn ResponseStore>,
}

impl Stores {
    fn for_config(config: &Config) -> Result<Self, StoreError> {
        match &config.store {
            StoreKind::Memory => {
                let (conversations, tasks, responses) = memory::all_stores(
                    &StoreLimits::from_config(config),
                    config.max_responses_per_key,
                );
                Ok(Self {
                    conversations: Arc::new(conversations),
                    tasks: Arc::new(tasks),
                    limiter: None,
                    streams: None,
                    queue: Arc::new(MemoryQueue::new(config.task_lease)),
                    runs: None,
                    responses: Arc::new(responses),
                })
            }
            StoreKind::Redis(url) => {
                let redis = RedisStores::connect(
                    RedisSettings {
                        url: url.clone(),
                        prefix: config.store_prefix.clone(),
                        limits: StoreLimits::from_config(config),
                    },
                    config.task_lease,
                    config.run_ttl,
                    config.max_responses_per_key,
                )?;
                Ok(Self {
                    conversations: redis.conversations,
                    tasks: redis.tasks,
                    limiter: Some(redis.limiter),
                    streams: Some(redis.streams),
                    queue: redis.queue,
                    runs: Some(redis.runs),
                    responses: redis.responses,
                })
            }
        }
    }
}

impl AppState {
    /// A stream's place under `MAX_STREAMS_PER_KEY`, taken before the model is called. Only
    /// callers with a key are counted: with no keys configured (loopback only) there is no key
    /// to share among.
    pub async fn open_stream(
        &self,
        owner: &str,
    ) -> Result<Option<StreamPermit>, crate::error::ApiError> {
        if !self.keys.enabled() {
            return Ok(None);
        }
        self.streams.acquire(owner).await.map(Some)
    }

    /// The production state for `config`.
    pub fn build(config: Config) -> Result<Self, BuildError> {
        AppStateBuilder::new(config).build()
    }
}

pub struct AppStateBuilder {
    config: Config,
    llm: Option<Arc<dyn LlmProvider>>,
}

impl AppStateBuilder {
    pub fn new(config: Config) -> Self {
        Self { config, llm: None }
    }

    /// Replaces the provider that the config would choose.
    pub fn with_provider(mut self, llm: Arc<dyn LlmProvider>) -> Self {
        self.llm = Some(llm);
        self
    }

    pub fn build(self) -> Result<AppState, BuildError> {
        let config = self.config;
        let metrics = Arc::new(Metrics::new());
        let llm = match self.llm {
            Some(llm) => llm,
            None => provider_for(&config)?,
        };
        let llm: Arc<dyn LlmProvider> = Arc::new(MeteredProvider::new(llm, Arc::clone(&metrics)));
        let stores = Stores::for_config(&config)?;
        let agents = Arc::new(crate::agent::Agents::new(&config, Arc::clone(&metrics)));
        let runs = Runs::new(
            RunSettings::from_config(&config),
            stores.runs.clone(),
            CancellationToken::new(),
        );
        let runner = TaskRunner::new(
            Arc::clone(&llm),
            Arc::clone(&agents),
            Arc::clone(&stores.tasks),
            Arc::clone(&metrics),
            RunnerLimits {
                concurrency: config.task_concurrency,
                queue_size: config.task_queue_size,
                timeout: config.task_timeout,
            },
            Arc::clone(&stores.queue),
            runs.clone(),
        );
        let limiter = match &stores.limiter {
            Some(shared) => RateLimiter::shared(&config, Arc::clone(shared)),
            None => RateLimiter::new(&config),
        };
        let (conversations, tasks, responses) =
            (stores.conversations, stores.tasks, stores.responses);
        let streams = StreamQuota::new(config.max_streams_per_key, stores.streams.clone());
        let state = AppState(Arc::new(Shared {
            keys: Arc::new(KeyRing::new(&config.api_keys)),
            limiter: Arc::new(limiter),
            config: Arc::new(config),
            agents,
            llm,
            conversations,
            tasks,
            runner,
            runs,
            responses,
            streams,
            sockets: Arc::new(SocketRegistry::default()),
            closing: CancellationToken::new(),
            metrics,
            started: Instant::now(),
            ready: Default::default(),
        }));
        state.agents.start(&state.runner);
        state.start_janitor();
        state.runner.start_workers();
        Ok(state)
    }
}

fn provider_for(config: &Config) -> Result<Arc<dyn LlmProvider>, BuildError> {
    Ok(match config.provider {
        ProviderKind::OpenAi => {
            let provider = OpenAiProvider::new(
                &config.openai_base_url,
                config.openai_api_key.as_ref(),
                &config.upstream_proxy,
                config.upstream_timeout,
            )
            .map_err(BuildError::Provider)?;
            let provider = match config.upstream_http_client {
                UpstreamHttpClient::Own => provider,
                UpstreamHttpClient::Hyper => {
                    provider.with_hyper_client().map_err(BuildError::Provider)?
                }
            };
            Arc::new(provider)
        }
        ProviderKind::Echo => Arc::new(EchoProvider::new(
            config.echo_delay,
            config.upstream_timeout,
        )),
    })
}

impl AppState {
    /// Expires idle conversations, finished tasks and idle rate-limit buckets, periodically.
    fn start_janitor(&self) {
        let state = self.clone();
        let every = Duration::from_secs(30)
            .min(state.config.conversation_ttl / 2)
            .min(state.config.task_ttl / 2)
            .min(state.config.run_ttl / 2)
            .max(Duration::from_millis(100));
        self.runner.spawn_until_shutdown(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                state.conversations.sweep().await;
                state.tasks.sweep().await;
                state.runs.sweep();
                state.responses.sweep().await;
                state.limiter.sweep();
            }
        });
        // With Redis: the leases of this replica's open streams (MAX_STREAMS_PER_KEY).
        let state = self.clone();
        self.runner.spawn_until_shutdown(async move {
            let every = crate::store::redis::streams::STREAM_LEASE / 3;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                state.streams.renew().await;
            }
        });
    }
}
