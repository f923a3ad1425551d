//! `openai`: any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp server). Request
//! bodies pass through with their unknown fields unchanged, and answers are kept as the
//! upstream's JSON text.
//!
//! Chat calls go through one pooled client ([`super::http`]) with the URL parsed and the headers
//! built once; async-openai's config builds those, and async-openai serves the `/models` probe.
//! Its chat calls are not used: a unary call parsed the URL again (with IDNA host processing) on
//! every request (its cost: the README's performance notes), and its stream spawns a reader task
//! per stream into an unbounded channel (see [`OpenAiProvider::stream`]).
//!
//! Every call has `UPSTREAM_TIMEOUT_SECS` (unary: the whole call; streams: until the response
//! starts, and then between two chunks). Errors never carry the key.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::Config as _;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_trait::async_trait;
use futures::StreamExt;
use hyper::Uri;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde_json::{Value, json};
use std::future::ready;

use rustls_platform_verifier::ConfigVerifierExt as _;

use super::http::{HttpClient, HttpError, ProxySettings, Response};
use super::{
    ChatChunk, ChatRequest, ChunkStream, Completion, LlmError, LlmProvider, guard_stream, sse,
};
use crate::config::Secret;

/// How long a successful readiness probe of the upstream is believed.
const READY_CACHE: Duration = Duration::from_secs(30);

pub struct OpenAiProvider {
    /// async-openai, for the `/models` readiness probe.
    client: Client<OpenAIConfig>,
    /// The pooled client for chat calls to `{base}/chat/completions`, with the headers
    /// async-openai would send (the key).
    http: HttpClient,
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
    pub fn new(
        base_url: &str,
        api_key: Option<&Secret>,
        proxy: &ProxySettings,
        timeout: Duration,
    ) -> Result<Self, String> {
        install_crypto_provider();
        let connect_timeout = timeout.min(Duration::from_secs(10));
        // For async-openai's `/models` probe only: one idle connection is enough.
        let probe_http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        // Set the base explicitly: some async-openai versions also read it from the environment.
        let config = OpenAIConfig::new()
            .with_api_base(base_url)
            .with_api_key(api_key.map(Secret::expose).unwrap_or("none"));
        let chat_uri = config.url("/chat/completions");
        let chat_uri: Uri = chat_uri.parse().map_err(|e| format!("{e}: `{chat_uri}`"))?;
        let mut headers = config.headers();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let chat_http = HttpClient::new(&chat_uri, &headers, proxy, connect_timeout)?;
        if let Some(via) = &chat_http.proxy {
            tracing::info!(proxy = %via, "the upstream is reached through a proxy");
        }
        Ok(Self {
            http: chat_http,
            // No retry layer: async-openai's default retries 429 and 5xx with backoff, which
            // in a gateway multiplies upstream cost and hides the upstream's answer from the
            // caller, who can retry (429 answers carry Retry-After).
            client: Client::build(probe_http.clone(), config)
                .with_http_service(ReqwestService::new(probe_http)),
            timeout,
            key: api_key.cloned(),
            ready_at: Mutex::new(None),
        })
    }

    /// Sends the chat calls through hyper-util's pooled client instead of ours
    /// (`UPSTREAM_HTTP_CLIENT=hyper`: HTTP/2 for `https` upstreams that offer it), to measure
    /// the two side by side.
    pub fn with_hyper_client(mut self) -> Result<Self, String> {
        let tls = rustls::ClientConfig::with_platform_verifier()
            .map_err(|e| format!("TLS set-up failed: {e}"))?;
        self.http
            .use_hyper(self.timeout.min(Duration::from_secs(10)), tls);
        Ok(self)
    }

    /// POSTs a chat-completions body; a non-2xx answer becomes the error it describes.
    async fn post_chat(&self, body: &ChatRequest) -> Result<Response, LlmError> {
        let body = serde_json::to_vec(body).map_err(|e| LlmError::Failed(e.to_string()))?;
        let response = self
            .http
            .post(&body)
            .await
            .map_err(|e| self.http_error(e))?;
        if !(200..300).contains(&response.status) {
            return Err(self.status_error(response).await);
        }
        Ok(response)
    }

    fn map_err(&self, err: OpenAIError) -> LlmError {
        map_error(err, self.key.as_ref(), self.timeout)
    }

    fn http_error(&self, err: HttpError) -> LlmError {
        let message = scrub(err.to_string(), self.key.as_ref());
        match err {
            HttpError::Protocol(_) => LlmError::BadResponse(message),
            _ => LlmError::Connect(message),
        }
    }

    /// A non-2xx answer to a chat call, read as async-openai reads one:
    /// OpenAI's `{"error": {"message"}}`, or the text itself (5xx bodies need not be JSON).
    /// At most [`MAX_ERROR_BODY`] bytes of it are read.
    async fn status_error(&self, response: Response) -> LlmError {
        let status = response.status;
        let retry_after = response
            .header(RETRY_AFTER.as_str())
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .body
            .read_up_to(MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let message = super::error_message(&body)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let message = scrub(message, self.key.as_ref());
        if status == 429 {
            LlmError::RateLimited {
                message,
                retry_after,
            }
        } else if matches!(status, 400 | 413 | 422) && super::says_context_too_long(&body) {
            LlmError::ContextLength(message)
        } else {
            LlmError::Status { status, message }
        }
    }
}

/// The most of an upstream error body that is read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The largest completion accepted from the upstream.
const MAX_COMPLETION_BYTES: usize = 16 << 20;

/// The key cut out of a text from the upstream, and the text cut to 500 bytes.
fn scrub(s: String, key: Option<&Secret>) -> String {
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
}

/// Maps an async-openai error to ours, with the key scrubbed and long texts cut.
fn map_error(err: OpenAIError, key: Option<&Secret>, timeout: Duration) -> LlmError {
    let scrub = |s: String| scrub(s, key);
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
        let mut body = req;
        body.extra.insert("stream".into(), Value::Bool(false));
        body.extra.remove("stream_options");
        let call = async {
            let response = self.post_chat(&body).await?;
            let bytes = response
                .body
                .read_up_to(MAX_COMPLETION_BYTES + 1)
                .await
                .map_err(|e| self.http_error(e))?;
            if bytes.len() > MAX_COMPLETION_BYTES {
                return Err(LlmError::BadResponse(format!(
                    "the completion is larger than {MAX_COMPLETION_BYTES} bytes"
                )));
            }
            let raw = String::from_utf8(bytes)
                .map_err(|_| LlmError::BadResponse("the completion is not UTF-8".into()))?;
            // Kept as the upstream's JSON text: parsed once into the few fields this server
            // needs, and forwarded as it came by `/v1/chat/completions`.
            Completion::parse(raw)
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| LlmError::Timeout(self.timeout))?
    }

    /// Streams through [`super::sse`] rather than async-openai's stream, which spawns a task per
    /// stream that reads the upstream into an unbounded channel however slowly the client reads
    /// (and costs a task's memory per open stream). Here the upstream is read only as fast as the
    /// client takes chunks, and dropping the stream drops the upstream response.
    async fn stream(&self, req: ChatRequest) -> Result<ChunkStream, LlmError> {
        let mut body = req;
        body.extra.insert("stream".into(), Value::Bool(true));
        // Usage comes in a last chunk only when asked for; callers that did not ask for it
        // themselves filter that chunk out.
        let options = body
            .extra
            .entry("stream_options")
            .or_insert_with(|| json!({}));
        if let Some(o) = options.as_object_mut() {
            o.insert("include_usage".into(), Value::Bool(true));
        }
        let response = tokio::time::timeout(self.timeout, self.post_chat(&body))
            .await
            .map_err(|_| LlmError::Timeout(self.timeout))??;
        let key = self.key.clone();
        // `[DONE]` ends the stream; the body's end after it is read so that the connection
        // goes back to the pool.
        // A streamed answer is bounded like a unary one: at most MAX_COMPLETION_BYTES of events.
        let mut read = 0usize;
        let chunks = sse::events(response.body, "[DONE]").filter_map(move |event| {
            ready(match event {
                Ok(e) if e.event == "keepalive" => None,
                Ok(e) if read + e.data.len() > MAX_COMPLETION_BYTES => {
                    read = usize::MAX / 2;
                    Some(Err(LlmError::BadResponse(format!(
                        "the streamed completion is larger than {MAX_COMPLETION_BYTES} bytes"
                    ))))
                }
                Ok(e) => {
                    read += e.data.len();
                    Some(ChatChunk::parse(e.data))
                }
                Err(e) => Some(Err(LlmError::BadResponse(scrub(
                    e.to_string(),
                    key.as_ref(),
                )))),
            })
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
