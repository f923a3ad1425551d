//! Configuration: the only module that reads the environment.
//!
//! Everything is parsed once, at start, into typed values; a bad value stops the start with a
//! message naming the variable. Secrets are wrapped in [`Secret`] so that `Debug` prints `***`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

pub use crate::llm::http::ProxySettings;

/// A value that must never reach a log line or an error body.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Echo,
}

/// `UPSTREAM_HTTP_CLIENT`: the project's own HTTP/1.1 client (the default) or hyper-util's
/// pooled client (HTTP/2 over ALPN for `https`), for measuring the two side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamHttpClient {
    Own,
    Hyper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis(String),
}

/// One configured API key: its name (the owner of what it creates) and the SHA-256 of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}=***)", self.name)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

/// The server's configuration. Variables, with their defaults:
///
/// | variable | default |
/// | --- | --- |
/// | `HOST` / `PORT` | `127.0.0.1` / `8000` |
/// | `LLM_PROVIDER` | `openai` if `OPENAI_API_KEY` or `OPENAI_BASE_URL` is set, else `echo` |
/// | `OPENAI_API_KEY` / `OPENAI_BASE_URL` | unset / `https://api.openai.com/v1` |
/// | `CHAT_MODEL` / `TASK_MODEL` | `gpt-4o-mini` / `gpt-4o` |
/// | `MODELS` | the chat and task models (comma-separated; the models a request may name, and what `/v1/models` lists; `*` for any) |
/// | `MAX_OUTPUT_TOKENS` / `PASSTHROUGH_FIELDS` / `MAX_HISTORY_TOKENS` | `4000` / unset / `100000` |
/// | `UPSTREAM_TIMEOUT_SECS` | `60` |
/// | `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` (or lower case) | unset (upstream reached directly) |
/// | `API_KEYS` / `API_KEYS_FILE` | unset |
/// | `ALLOW_NO_AUTH` | `false` |
/// | `RATE_LIMIT_PER_MINUTE` / `RATE_LIMIT_BURST` | `60` / `10` |
/// | `RATE_LIMIT_PER_KEY_PER_MINUTE` | unset (no per-key limit) |
/// | `TRUSTED_PROXIES` | unset |
/// | `STORE` / `STORE_PREFIX` / `TASK_LEASE_SECS` | `memory` / `agent-api:` / `15` |
/// | `MAX_BODY_BYTES` | `1048576` |
/// | `MAX_IN_FLIGHT` / `BODY_TIMEOUT_SECS` | `1024` / `10` |
/// | `REQUEST_TIMEOUT_SECS` | `120` (non-streaming requests) |
/// | `SHUTDOWN_GRACE_SECS` | `30` |
/// | `MAX_CONVERSATIONS` / `MAX_MESSAGES_PER_CONVERSATION` / `CONVERSATION_TTL_SECS` | `10000` / `200` / `86400` |
/// | `TURN_WAIT_SECS` / `TURN_TIMEOUT_SECS` / `STREAM_WRITE_TIMEOUT_SECS` | `30` (then 409) / `600` (then 504) / `30` |
/// | `MAX_CONVERSATIONS_PER_KEY` / `MAX_TASKS_PER_KEY` / `MAX_STREAMS_PER_KEY` / `MAX_STORE_MIB` | `1000` / `100` / `64` / `512` |
/// | `TASK_CONCURRENCY` / `TASK_QUEUE_SIZE` / `TASK_TIMEOUT_SECS` / `TASK_TTL_SECS` / `MAX_TASKS` | `4` / `100` / `300` / `3600` / `10000` |
/// | `SSE_KEEPALIVE_SECS` | `15` |
/// | `WS_PING_SECS` / `WS_IDLE_TIMEOUT_SECS` / `WS_MAX_MESSAGE_BYTES` / `WS_MAX_FRAMES_PER_MINUTE` | `20` / `300` / `65536` / `600` |
/// | `CORS_ORIGINS` | unset (no cross-origin access) |
/// | `AGENTS_FILE` / `TOOL_RESULT_MAX_BYTES` | `agents.toml` (if present) / `65536` |
/// | `RUN_TTL_SECS` / `RUN_LOG_MAX_BYTES` / `RUN_LOGS_MAX_MIB` | `600` / `1048576` / `256` |
/// | `RESPONSE_TTL_SECS` / `MAX_RESPONSES_PER_KEY` | `86400` / `1000` |
/// | `ECHO_DELAY_MS` | `15` (pause between the echo provider's chunks) |
/// | `RUST_LOG` / `LOG_FORMAT` | `info` / `pretty` |
#[derive(Debug, Clone)]
pub struct Config {
    /// `AGENTS_FILE`: the operator's agents, HTTP tools and MCP servers (empty without one).
    pub agents: std::sync::Arc<AgentsFile>,
    /// `TOOL_RESULT_MAX_BYTES`: a tool result is cut to this many bytes.
    pub tool_result_max_bytes: usize,
    /// `RUN_TTL_SECS`: how long a run's log is kept after it ends.
    pub run_ttl: Duration,
    /// `RUN_LOG_MAX_BYTES`: one run's log; past it the oldest events are dropped.
    pub run_log_max_bytes: usize,
    /// `RUN_LOGS_MAX_MIB`, in bytes: every log this process holds; past it the oldest ended
    /// runs are dropped before their TTL.
    pub run_logs_max_bytes: usize,
    /// `RESPONSE_TTL_SECS`: a stored `/v1/responses` response is kept this long after it ends.
    pub response_ttl: Duration,
    /// `MAX_RESPONSES_PER_KEY`: stored responses of one key; past it its oldest go first.
    pub max_responses_per_key: usize,
    pub addr: SocketAddr,
    pub provider: ProviderKind,
    pub openai_api_key: Option<Secret>,
    pub openai_base_url: String,
    pub chat_model: String,
    pub task_model: String,
    /// `MODELS`: the models a request may name (and `/v1/models` lists).
    pub models: Vec<String>,
    /// `MODELS` contains `*`: a request may name any model.
    pub any_model: bool,
    /// `MAX_OUTPUT_TOKENS`: the most output tokens a request may ask for.
    pub max_output_tokens: u32,
    /// `PASSTHROUGH_FIELDS`: top-level `/v1` fields forwarded besides OpenAI's own.
    pub passthrough_fields: Vec<String>,
    /// `MAX_HISTORY_TOKENS`: the estimated tokens of history sent upstream.
    pub max_history_tokens: usize,
    pub upstream_timeout: Duration,
    pub upstream_http_client: UpstreamHttpClient,
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY` (or lower case), for upstream calls.
    pub upstream_proxy: ProxySettings,
    pub api_keys: Vec<ApiKey>,
    pub allow_no_auth: bool,
    pub rate_limit_per_minute: u32,
    pub rate_limit_burst: u32,
    pub rate_limit_per_key_per_minute: Option<u32>,
    pub trusted_proxies: Vec<IpNet>,
    pub store: StoreKind,
    pub store_prefix: String,
    pub task_lease: Duration,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    /// `BODY_TIMEOUT_SECS`: a request body must arrive in full within this long (else 408).
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_conversations: usize,
    /// `TURN_WAIT_SECS`: how long a turn waits for a busy conversation (then 409).
    pub turn_wait: Duration,
    /// `TURN_TIMEOUT_SECS`: a whole turn, every model call in it (then 504).
    pub turn_timeout: Duration,
    /// `STREAM_WRITE_TIMEOUT_SECS`: a client that takes no bytes for this long is disconnected,
    /// and a streamed turn whose client takes no frame for this long is cancelled.
    pub stream_write_timeout: Duration,
    pub max_conversations_per_key: usize,
    pub max_tasks_per_key: usize,
    pub max_streams_per_key: usize,
    /// `MAX_STORE_MIB`, in bytes: the memory store's bound on what it holds.
    pub max_store_bytes: usize,
    pub max_messages_per_conversation: usize,
    pub conversation_ttl: Duration,
    pub task_concurrency: usize,
    pub task_queue_size: usize,
    pub task_timeout: Duration,
    pub task_ttl: Duration,
    pub max_tasks: usize,
    pub sse_keepalive: Duration,
    pub ws_ping: Duration,
    pub ws_idle_timeout: Duration,
    pub ws_max_message_bytes: usize,
    /// `WS_MAX_FRAMES_PER_MINUTE`: frames that do not call the model, per socket.
    pub ws_max_frames_per_minute: u32,
    pub cors_origins: Vec<String>,
    pub echo_delay: Duration,
    pub log_format: LogFormat,
    pub log_filter: String,
}

impl Config {
    /// Reads the process environment (after an optional `.env`, which `main` loads).
    #[expect(
        clippy::disallowed_methods,
        reason = "config.rs is the one place that reads the environment"
    )]
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        let file_keys = match vars.get("API_KEYS_FILE").filter(|p| !p.is_empty()) {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| ConfigError {
                var: "API_KEYS_FILE",
                reason: format!("cannot read {path}: {e}"),
            })?),
            None => None,
        };
        let mut cfg = Self::from_lookup(|k| vars.get(k).cloned(), file_keys.as_deref())?;
        let named = vars.get("AGENTS_FILE").filter(|p| !p.trim().is_empty());
        let path = named.map_or("agents.toml", |p| p.trim());
        let text = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            // The default file is optional; a named one must be there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && named.is_none() => None,
            Err(e) => {
                return Err(ConfigError {
                    var: "AGENTS_FILE",
                    reason: format!("cannot read {path}: {e}"),
                });
            }
        };
        if let Some(text) = text {
            cfg.agents =
                std::sync::Arc::new(cfg.parse_agents(&text, path, &|k| vars.get(k).cloned())?);
        }
        Ok(cfg)
    }

    /// Parses an agents file against this configuration (its models and output limit).
    pub fn parse_agents(
        &self,
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AgentsFile, ConfigError> {
        let allowed = |m: &str| self.model_allowed(m);
        let limits = agents::Limits {
            model_allowed: &allowed,
            max_output_tokens: self.max_output_tokens,
        };
        agents::parse(text, file, env, &limits).map_err(|reason| ConfigError {
            var: "AGENTS_FILE",
            reason,
        })
    }

    /// Parses from any lookup function; `api_keys_file` is the content of `API_KEYS_FILE`.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        api_keys_file: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let host: IpAddr = parse(&get, "HOST", "127.0.0.1".parse().ok())?;
        let port: u16 = parse(&get, "PORT", Some(8000))?;
        let openai_api_key = get("OPENAI_API_KEY").map(Secret::new);
        let base_url_set = get("OPENAI_BASE_URL");
        let provider = match get("LLM_PROVIDER").as_deref() {
            Some("openai") => ProviderKind::OpenAi,
            Some("echo") => ProviderKind::Echo,
            Some(other) => {
                return Err(ConfigError {
                    var: "LLM_PROVIDER",
                    reason: format!("expected `openai` or `echo`, got `{other}`"),
                });
            }
            None if openai_api_key.is_some() || base_url_set.is_some() => ProviderKind::OpenAi,
            None => ProviderKind::Echo,
        };
        let openai_base_url = base_url_set
            .unwrap_or_else(|| "https://api.openai.com/v1".into())
            .trim_end_matches('/')
            .to_owned();
        if !(openai_base_url.starts_with("http://") || openai_base_url.starts_with("https://")) {
            return Err(ConfigError {
                var: "OPENAI_BASE_URL",
                reason: "must start with http:// or https://".into(),
            });
        }
        if let Err(e) = openai_base_url.parse::<hyper::Uri>() {
            return Err(ConfigError {
                var: "OPENAI_BASE_URL",
                reason: format!("not a URL: {e}"),
            });
        }
        let chat_model = get("CHAT_MODEL").unwrap_or_else(|| "gpt-4o-mini".into());
        let task_model = get("TASK_MODEL").unwrap_or_else(|| "gpt-4o".into());
        let mut models = match get("MODELS") {
            Some(list) => split_list(&list),
            None => vec![chat_model.clone(), task_model.clone()],
        };
        let any_model = models.iter().any(|m| m == "*");
        if any_model {
            models.retain(|m| m != "*");
            for m in [&chat_model, &task_model] {
                if !models.contains(m) {
                    models.push(m.clone());
                }
            }
        }
        models.dedup();
        if !any_model {
            for (var, m) in [("CHAT_MODEL", &chat_model), ("TASK_MODEL", &task_model)] {
                if !models.contains(m) {
                    return Err(ConfigError {
                        var: "MODELS",
                        reason: format!("does not list {var}={m} (add it, or `*` for any model)"),
                    });
                }
            }
        }
        let max_output_tokens: u32 = parse(&get, "MAX_OUTPUT_TOKENS", Some(4000))?;
        positive("MAX_OUTPUT_TOKENS", max_output_tokens.into())?;

        let mut api_keys = match get("API_KEYS") {
            Some(list) => parse_api_keys(&split_list(&list), "API_KEYS")?,
            None => Vec::new(),
        };
        if let Some(text) = api_keys_file {
            let lines: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect();
            api_keys.extend(parse_api_keys(&lines, "API_KEYS_FILE")?);
        }
        let allow_no_auth: bool = parse(&get, "ALLOW_NO_AUTH", Some(false))?;
        if api_keys.is_empty() && !host.is_loopback() && !allow_no_auth {
            return Err(ConfigError {
                var: "API_KEYS",
                reason: format!(
                    "no API keys are configured and HOST={host} is not a loopback address; \
                     set API_KEYS (or API_KEYS_FILE), listen on 127.0.0.1, or set ALLOW_NO_AUTH=true \
                     to serve without authentication"
                ),
            });
        }

        let trusted_proxies = match get("TRUSTED_PROXIES") {
            Some(list) => split_list(&list)
                .iter()
                .map(|s| {
                    s.parse::<IpNet>()
                        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| ConfigError {
                            var: "TRUSTED_PROXIES",
                            reason: format!("`{s}` is not a CIDR or an IP address"),
                        })
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let store = match get("STORE").as_deref() {
            None | Some("memory") => StoreKind::Memory,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                StoreKind::Redis(url.to_owned())
            }
            Some(_) => {
                return Err(ConfigError {
                    var: "STORE",
                    reason: "expected `memory` or a redis://host:port/db URL".into(),
                });
            }
        };
        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError {
                    var: "LOG_FORMAT",
                    reason: format!("expected `pretty` or `json`, got `{other}`"),
                });
            }
        };
        let per_minute: u32 = parse(&get, "RATE_LIMIT_PER_MINUTE", Some(60))?;
        let burst: u32 = parse(&get, "RATE_LIMIT_BURST", Some(10))?;
        positive("RATE_LIMIT_PER_MINUTE", per_minute as u64)?;
        positive("RATE_LIMIT_BURST", burst as u64)?;
        let per_key: Option<u32> = parse(&get, "RATE_LIMIT_PER_KEY_PER_MINUTE", None)
            .map(Some)
            .or_else(|e| {
                if get("RATE_LIMIT_PER_KEY_PER_MINUTE").is_none() {
                    Ok(None)
                } else {
                    Err(e)
                }
            })?;

        let cfg = Config {
            agents: Default::default(),
            tool_result_max_bytes: count(&get, "TOOL_RESULT_MAX_BYTES", 65_536)?,
            run_ttl: secs(&get, "RUN_TTL_SECS", 600)?,
            run_log_max_bytes: count(&get, "RUN_LOG_MAX_BYTES", 1 << 20)?,
            run_logs_max_bytes: count(&get, "RUN_LOGS_MAX_MIB", 256)?.saturating_mul(1 << 20),
            response_ttl: secs(&get, "RESPONSE_TTL_SECS", 86_400)?,
            max_responses_per_key: count(&get, "MAX_RESPONSES_PER_KEY", 1000)?,
            addr: SocketAddr::new(host, port),
            provider,
            openai_api_key,
            openai_base_url,
            chat_model,
            task_model,
            models,
            any_model,
            max_output_tokens,
            passthrough_fields: get("PASSTHROUGH_FIELDS")
                .map(|l| split_list(&l))
                .unwrap_or_default(),
            max_history_tokens: count(&get, "MAX_HISTORY_TOKENS", 100_000)?,
            upstream_timeout: secs(&get, "UPSTREAM_TIMEOUT_SECS", 60)?,
            upstream_http_client: match get("UPSTREAM_HTTP_CLIENT").as_deref() {
                None | Some("own") => UpstreamHttpClient::Own,
                Some("hyper") => UpstreamHttpClient::Hyper,
                Some(_) => {
                    return Err(ConfigError {
                        var: "UPSTREAM_HTTP_CLIENT",
                        reason: "must be `own` or `hyper`".into(),
                    });
                }
            },
            upstream_proxy: ProxySettings {
                all: get("ALL_PROXY").or_else(|| get("all_proxy")),
                http: get("HTTP_PROXY").or_else(|| get("http_proxy")),
                https: get("HTTPS_PROXY").or_else(|| get("https_proxy")),
                no: get("NO_PROXY").or_else(|| get("no_proxy")),
            },
            api_keys,
            allow_no_auth,
            rate_limit_per_minute: per_minute,
            rate_limit_burst: burst,
            rate_limit_per_key_per_minute: per_key,
            trusted_proxies,
            store,
            store_prefix: get("STORE_PREFIX").unwrap_or_else(|| "agent-api:".into()),
            task_lease: secs(&get, "TASK_LEASE_SECS", 15)?,
            max_body_bytes: count(&get, "MAX_BODY_BYTES", 1024 * 1024)?,
            max_in_flight: count(&get, "MAX_IN_FLIGHT", 1024)?,
            body_timeout: secs(&get, "BODY_TIMEOUT_SECS", 10)?,
            request_timeout: secs(&get, "REQUEST_TIMEOUT_SECS", 120)?,
            shutdown_grace: secs(&get, "SHUTDOWN_GRACE_SECS", 30)?,
            max_conversations: count(&get, "MAX_CONVERSATIONS", 10_000)?,
            turn_wait: secs(&get, "TURN_WAIT_SECS", 30)?,
            turn_timeout: secs(&get, "TURN_TIMEOUT_SECS", 600)?,
            stream_write_timeout: secs(&get, "STREAM_WRITE_TIMEOUT_SECS", 30)?,
            max_conversations_per_key: count(&get, "MAX_CONVERSATIONS_PER_KEY", 1000)?,
            max_tasks_per_key: count(&get, "MAX_TASKS_PER_KEY", 100)?,
            max_streams_per_key: count(&get, "MAX_STREAMS_PER_KEY", 64)?,
            max_store_bytes: count(&get, "MAX_STORE_MIB", 512)?.saturating_mul(1024 * 1024),
            max_messages_per_conversation: count(&get, "MAX_MESSAGES_PER_CONVERSATION", 200)?,
            conversation_ttl: secs(&get, "CONVERSATION_TTL_SECS", 86_400)?,
            task_concurrency: count(&get, "TASK_CONCURRENCY", 4)?,
            task_queue_size: count(&get, "TASK_QUEUE_SIZE", 100)?,
            task_timeout: secs(&get, "TASK_TIMEOUT_SECS", 300)?,
            task_ttl: secs(&get, "TASK_TTL_SECS", 3600)?,
            max_tasks: count(&get, "MAX_TASKS", 10_000)?,
            sse_keepalive: secs(&get, "SSE_KEEPALIVE_SECS", 15)?,
            ws_ping: secs(&get, "WS_PING_SECS", 20)?,
            ws_idle_timeout: secs(&get, "WS_IDLE_TIMEOUT_SECS", 300)?,
            ws_max_message_bytes: count(&get, "WS_MAX_MESSAGE_BYTES", 64 * 1024)?,
            ws_max_frames_per_minute: count(&get, "WS_MAX_FRAMES_PER_MINUTE", 600)? as u32,
            cors_origins: get("CORS_ORIGINS")
                .map(|l| split_list(&l))
                .unwrap_or_default(),
            echo_delay: Duration::from_millis(parse(&get, "ECHO_DELAY_MS", Some(15))?),
            log_format,
            log_filter: get("RUST_LOG").unwrap_or_else(|| "info".into()),
        };
        if cfg.max_messages_per_conversation < 3 {
            return Err(ConfigError {
                var: "MAX_MESSAGES_PER_CONVERSATION",
                reason: "must be at least 3 (system prompt, question, answer)".into(),
            });
        }
        Ok(cfg)
    }

    /// A configuration for tests: echo provider, no keys, generous limits, short timeouts.
    pub fn for_tests() -> Self {
        let mut cfg = Self::from_lookup(|_| None, None).unwrap_or_else(|e| panic!("{e}"));
        cfg.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.upstream_timeout = Duration::from_secs(5);
        cfg.rate_limit_per_minute = 1_000_000;
        cfg.rate_limit_burst = 1_000_000;
        cfg.shutdown_grace = Duration::from_secs(5);
        cfg.echo_delay = Duration::from_millis(1);
        cfg
    }

    /// Whether a request may name `model`.
    pub fn model_allowed(&self, model: &str) -> bool {
        self.any_model || self.models.iter().any(|m| m == model)
    }

    /// True when requests must carry a key.
    pub fn auth_enabled(&self) -> bool {
        !self.api_keys.is_empty()
    }
}

pub mod agents;
mod parse;
#[cfg(test)]
mod tests;

pub use agents::AgentsFile;
pub use parse::parse_api_keys;
use parse::{count, parse, positive, secs, split_list};
