//! Prometheus metrics (prometheus-client: one registry per `AppState`, no globals), the layer
//! that records every request, and [`MeteredProvider`], which times the upstream so that the
//! server's own overhead (total time minus time waiting on the upstream) can be measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::llm::{ChatRequest, ChunkStream, Completion, LlmError, LlmProvider, Usage};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

/// Labels are static strings (the route table's own paths, from `routes::route_label`), so
/// recording allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `complete` (a whole answer) or `stream_start` (until the stream's first byte).
    pub call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// A tool call's labels: the model-visible name (one of the configured tools, or `unknown`)
/// and its outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolNameLabels {
    pub tool: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~100 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 22))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub overhead: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<KindLabels, Counter>,
    pub open_streams: Gauge,
    pub open_websockets: Gauge,
    /// Runs held by this process (live, and in memory the ended ones within RUN_TTL_SECS).
    pub runs_held: Gauge,
    /// Their bytes (logs and records), against RUN_LOGS_MAX_MIB.
    pub run_bytes_held: Gauge,
    pub tasks: Family<StateLabels, Gauge>,
    pub tasks_finished: Family<StateLabels, Counter>,
    pub tokens: Family<KindLabels, Counter>,
    pub rate_limited: Counter,
    pub auth_rejected: Counter,
    pub tool_calls: Family<ToolLabels, Counter>,
    pub tool_call_duration: Family<ToolNameLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agent_api");
        let m = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            overhead: Family::new_with_constructor(latency_histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            upstream_errors: Family::default(),
            open_streams: Gauge::default(),
            open_websockets: Gauge::default(),
            runs_held: Gauge::default(),
            run_bytes_held: Gauge::default(),
            tasks: Family::default(),
            tasks_finished: Family::default(),
            tokens: Family::default(),
            rate_limited: Counter::default(),
            auth_rejected: Counter::default(),
            tool_calls: Family::default(),
            tool_call_duration: Family::new_with_constructor(latency_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time until the response head, by route",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        registry.register_with_unit(
            "gateway_overhead",
            "The server's own time per request: total time until the response head minus the time spent waiting on the upstream and on an agent's tool calls",
            Unit::Seconds,
            m.overhead.clone(),
        );
        registry.register_with_unit(
            "upstream_duration",
            "Time waiting on the upstream model: a whole answer, or until a stream starts",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream calls that failed, by kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "open_streams",
            "Server-Sent Event streams open now",
            m.open_streams.clone(),
        );
        registry.register(
            "open_websockets",
            "WebSockets open now",
            m.open_websockets.clone(),
        );
        registry.register(
            "runs_held",
            "Runs held by this process: live ones, and (memory store) ended ones within RUN_TTL_SECS",
            m.runs_held.clone(),
        );
        registry.register(
            "run_bytes_held",
            "Bytes of the runs held by this process (their logs and records), bounded by RUN_LOGS_MAX_MIB",
            m.run_bytes_held.clone(),
        );
        registry.register("tasks", "Tasks not yet finished, by state", m.tasks.clone());
        registry.register(
            "tasks_finished",
            "Tasks finished, by final state",
            m.tasks_finished.clone(),
        );
        registry.register(
            "tokens",
            "Tokens used, by kind (prompt, completion)",
            m.tokens.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests and WebSocket messages refused by the rate limiter",
            m.rate_limited.clone(),
        );
        registry.register(
            "auth_rejected",
            "Requests refused for a missing or unknown API key",
            m.auth_rejected.clone(),
        );
        registry.register(
            "tool_calls",
            "Tool calls of agent turns, by tool and outcome",
            m.tool_calls.clone(),
        );
        registry.register_with_unit(
            "tool_call_duration",
            "Time of one tool call, by tool",
            Unit::Seconds,
            m.tool_call_duration.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts and times one tool call.
    pub fn record_tool_call(&self, tool: &str, outcome: &'static str, took: Duration) {
        let tool = tool.to_owned();
        self.tool_call_duration
            .get_or_create(&ToolNameLabels { tool: tool.clone() })
            .observe(took.as_secs_f64());
        self.tool_calls
            .get_or_create(&ToolLabels { tool, outcome })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn count_tokens(&self, usage: Usage) {
        self.tokens
            .get_or_create(&KindLabels { kind: "prompt" })
            .inc_by(usage.prompt_tokens);
        self.tokens
            .get_or_create(&KindLabels { kind: "completion" })
            .inc_by(usage.completion_tokens);
    }
}

/// A gauge held up while a value lives (an open stream or socket).
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: &Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

tokio::task_local! {
    /// Nanoseconds this request spent waiting on the upstream; set by [`track`].
    static UPSTREAM_NANOS: Arc<AtomicU64>;
}

/// Adds to the time the current request waited on something outside this server (the
/// upstream, or an agent's tool calls), so that its overhead excludes it.
pub fn add_upstream_time(d: Duration) {
    let _ = UPSTREAM_NANOS.try_with(|n| n.fetch_add(d.as_nanos() as u64, Ordering::Relaxed));
}

/// Runs `fut` (a request) and says how long it waited on the upstream meanwhile.
pub async fn timed<F: std::future::Future>(fut: F) -> (F::Output, Duration) {
    let upstream = Arc::new(AtomicU64::new(0));
    let out = UPSTREAM_NANOS.scope(Arc::clone(&upstream), fut).await;
    (out, Duration::from_nanos(upstream.load(Ordering::Relaxed)))
}

impl Metrics {
    /// Counts and times one request, and its overhead over the upstream when it called one.
    pub fn record_request(
        &self,
        method: &'static str,
        route: &'static str,
        status: axum::http::StatusCode,
        total: Duration,
        upstream: Duration,
    ) {
        let labels = RouteLabels { method, route };
        self.request_duration
            .get_or_create(&labels)
            .observe(total.as_secs_f64());
        if upstream > Duration::ZERO {
            self.overhead
                .get_or_create(&labels)
                .observe(total.saturating_sub(upstream).as_secs_f64());
        }
        self.requests
            .get_or_create(&RequestLabels {
                method: labels.method,
                route: labels.route,
                status: status.as_u16(),
            })
            .inc();
    }
}

/// Wraps a provider to time its calls and count its tokens and errors.
pub struct MeteredProvider {
    inner: Arc<dyn LlmProvider>,
    metrics: Arc<Metrics>,
}

impl MeteredProvider {
    pub fn new(inner: Arc<dyn LlmProvider>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn failed(&self, e: &LlmError) {
        record_error(&self.metrics, e);
    }
}

fn record_error(metrics: &Metrics, e: &LlmError) {
    {
        let kind = match e {
            LlmError::Timeout(_) => "timeout",
            LlmError::Status { .. } => "status",
            LlmError::ContextLength(_) => "context_length",
            LlmError::RateLimited { .. } => "rate_limited",
            LlmError::Connect(_) => "connect",
            LlmError::BadResponse(_) => "bad_response",
            LlmError::Incomplete => "incomplete",
            LlmError::Failed(_) => "failed",
        };
        metrics
            .upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }
}

#[async_trait]
impl LlmProvider for MeteredProvider {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn complete(&self, req: ChatRequest) -> Result<Completion, LlmError> {
        let started = Instant::now();
        let res = self.inner.complete(req).await;
        let took = started.elapsed();
        add_upstream_time(took);
        self.metrics
            .upstream_duration
            .get_or_create(&CallLabels { call: "complete" })
            .observe(took.as_secs_f64());
        match &res {
            Ok(c) => {
                if let Some(u) = c.usage {
                    self.metrics.count_tokens(u);
                }
            }
            Err(e) => self.failed(e),
        }
        res
    }

    async fn stream(&self, req: ChatRequest) -> Result<ChunkStream, LlmError> {
        let started = Instant::now();
        let res = self.inner.stream(req).await;
        let took = started.elapsed();
        add_upstream_time(took);
        self.metrics
            .upstream_duration
            .get_or_create(&CallLabels {
                call: "stream_start",
            })
            .observe(took.as_secs_f64());
        let stream = match res {
            Ok(s) => s,
            Err(e) => {
                self.failed(&e);
                return Err(e);
            }
        };
        let metrics = Arc::clone(&self.metrics);
        Ok(Box::pin(stream.inspect(move |item| match item {
            Ok(chunk) => {
                if let Some(u) = chunk.usage {
                    metrics.count_tokens(u);
                }
            }
            Err(e) => record_error(&metrics, e),
        })))
    }

    async fn ready(&self) -> Result<(), LlmError> {
        self.inner.ready().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        let labels = RouteLabels {
            method: "POST",
            route: "/chat",
        };
        m.requests
            .get_or_create(&RequestLabels {
                method: "POST",
                route: "/chat",
                status: 200,
            })
            .inc();
        m.overhead.get_or_create(&labels).observe(0.001);
        m.request_duration.get_or_create(&labels).observe(0.001);
        let text = m.encode();
        assert!(
            text.contains(
                r#"agent_api_http_requests_total{method="POST",route="/chat",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("agent_api_gateway_overhead_seconds_count"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
