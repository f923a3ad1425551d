//! `openai`: any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp server) through
//! async-openai's `byot` calls, so that request fields pass through unchanged.
//!
//! One pooled HTTP client serves every call; every call has `UPSTREAM_TIMEOUT_SECS` (for streams:
//! until the response starts, and then between two chunks). Errors never carry the key.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Value, json};

use super::{ChatChunk, ChatRequest, ChunkStream, Completion, LlmError, LlmProvider, guard_stream};
use crate::config::Secret;

/// How long a successful readiness probe of the upstream is believed.
const READY_CACHE: Duration = Duration::from_secs(30);

pub struct OpenAiProvider {
    client: Client<OpenAIConfig>,
    timeout: Duration,
    /// The upstream key, kept only to scrub it from upstream error messages.
    key: Option<Secret>,
    /// When the upstream last answered `/models`; a std mutex, held for a copy only.
    ready_at: Mutex<Option<Instant>>,
}

/// reqwest is built without a default TLS crypto provider; ring is ours. Call before building
/// any reqwest client; a second call finds it installed, which is fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl OpenAiProvider {
    pub fn new(base_url: &str, api_key: Option<&Secret>, timeout: Duration) -> Self {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        // Set the base explicitly: some async-openai versions also read it from the environment.
        let config = OpenAIConfig::new()
            .with_api_base(base_url)
            .with_api_key(api_key.map(Secret::expose).unwrap_or("none"));
        Self {
            // No retry layer: async-openai's default retries 429 and 5xx with backoff, which
            // in a gateway multiplies upstream cost and hides the upstream's answer from the
            // caller, who can retry (429 answers carry Retry-After).
            client: Client::build(http.clone(), config)
                .with_http_service(ReqwestService::new(http)),
            timeout,
            key: api_key.cloned(),
            ready_at: Mutex::new(None),
        }
    }

    fn map_err(&self, err: OpenAIError) -> LlmError {
        map_error(err, self.key.as_ref(), self.timeout)
    }
}

/// Maps an async-openai error to ours, with the key scrubbed and long texts cut.
fn map_error(err: OpenAIError, key: Option<&Secret>, timeout: Duration) -> LlmError {
    let scrub = |s: String| -> String {
        let mut s = match key {
            Some(k) if !k.expose().is_empty() => s.replace(k.expose(), "***"),
            _ => s,
        };
        if s.len() > 500 {
            let mut end = 500;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
        s
    };
    match err {
        OpenAIError::ApiError(resp) => {
            let status = resp.status_code.as_u16();
            let message = scrub(resp.api_error.message);
            if status == 429 {
                LlmError::RateLimited {
                    message,
                    retry_after: None,
                }
            } else {
                LlmError::Status { status, message }
            }
        }
        OpenAIError::Reqwest(e) if e.is_timeout() => LlmError::Timeout(timeout),
        OpenAIError::Reqwest(e) => LlmError::Connect(scrub(e.without_url().to_string())),
        OpenAIError::JSONDeserialize(e, _) => LlmError::BadResponse(scrub(e.to_string())),
        OpenAIError::StreamError(e) => LlmError::BadResponse(scrub(e.to_string())),
        other => LlmError::Failed(scrub(other.to_string())),
    }
}

#[async_trait]
impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn complete(&self, req: ChatRequest) -> Result<Completion, LlmError> {
        let mut body = req.body;
        body.insert("stream".into(), Value::Bool(false));
        body.remove("stream_options");
        let chat = self.client.chat();
        let call = chat.create_byot::<_, Value>(Value::Object(body));
        let raw = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| LlmError::Timeout(self.timeout))?
            .map_err(|e| self.map_err(e))?;
        Completion::from_raw(raw)
    }

    async fn stream(&self, req: ChatRequest) -> Result<ChunkStream, LlmError> {
        let mut body = req.body;
        body.insert("stream".into(), Value::Bool(true));
        // Usage comes in a last chunk only when asked for; callers that did not ask for it
        // themselves filter that chunk out.
        let options = body.entry("stream_options").or_insert_with(|| json!({}));
        if let Some(o) = options.as_object_mut() {
            o.insert("include_usage".into(), Value::Bool(true));
        }
        let chat = self.client.chat();
        let call = chat.create_stream_byot::<_, Value>(Value::Object(body));
        let upstream = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| LlmError::Timeout(self.timeout))?
            .map_err(|e| self.map_err(e))?;
        let (key, timeout) = (self.key.clone(), self.timeout);
        let chunks = upstream.map(move |item| match item {
            Ok(raw) if raw.get("error").is_some() => Err(LlmError::Failed(
                raw["error"]["message"]
                    .as_str()
                    .unwrap_or("error in stream")
                    .to_owned(),
            )),
            Ok(raw) => Ok(ChatChunk::from_raw(raw)),
            Err(e) => Err(map_error(e, key.as_ref(), timeout)),
        });
        Ok(guard_stream(Box::pin(chunks), self.timeout))
    }

    async fn ready(&self) -> Result<(), LlmError> {
        let fresh = self
            .ready_at
            .lock()
            .map(|t| t.is_some_and(|t| t.elapsed() < READY_CACHE))
            .unwrap_or(false);
        if fresh {
            return Ok(());
        }
        let models = self.client.models();
        let call = models.list_byot::<Value>();
        tokio::time::timeout(self.timeout.min(Duration::from_secs(5)), call)
            .await
            .map_err(|_| LlmError::Timeout(self.timeout))?
            .map_err(|e| self.map_err(e))?;
        if let Ok(mut t) = self.ready_at.lock() {
            *t = Some(Instant::now());
        }
        Ok(())
    }
}
