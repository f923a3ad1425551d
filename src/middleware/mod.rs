//! The layers around the router, in one place. Read [`apply`] top to bottom: the first layer
//! listed is the outermost.

pub mod auth;
pub mod rate_limit;
pub mod streams;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

use crate::error::{ApiError, LoggedError, respond};
use crate::state::AppState;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps the router in every layer, outermost first:
/// request id → metrics and access log (one span per request) → admission (in-flight cap and
/// timeout → the `Host` check of open mode → client IP and per-IP rate limit → API-key auth →
/// per-key rate limit) → CORS → body limit → router.
///
/// Admission runs before CORS so that a preflight (`OPTIONS`) counts against the per-IP limit
/// too; its refusals carry the CORS headers themselves ([`cors_headers`]).
///
/// The admission steps are one layer ([`admit`]) calling into `rate_limit` and `auth`: axum
/// layers wrap every route, and each `from_fn` layer clones the whole stack inside it and boxes
/// a future on every request (what three nested ones cost: the README's performance notes).
pub fn apply(router: Router<AppState>, state: &AppState) -> Router {
    let gate = Gate {
        state: state.clone(),
        in_flight: Arc::new(Semaphore::new(state.config.max_in_flight)),
    };
    router
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(
                    X_REQUEST_ID.clone(),
                    MakeRequestUuid,
                ))
                .layer(from_fn_with_state(state.clone(), observe))
                .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
                .layer(from_fn_with_state(gate, admit))
                .option_layer(cors(state)),
        )
        .with_state(state.clone())
}

/// The CORS headers of an answer made before the CORS layer (a refusal of admission), so that
/// a page on an allowed origin can read its status and `Retry-After`.
fn cors_headers(state: &AppState, origin: Option<&HeaderValue>, res: &mut Response) {
    let origins = &state.config.cors_origins;
    let Some(origin) = origin else { return };
    let any = origins.iter().any(|o| o == "*");
    if !any && !origins.iter().any(|o| o.as_bytes() == origin.as_bytes()) {
        return;
    }
    let headers = res.headers_mut();
    let allow = if any {
        HeaderValue::from_static("*")
    } else {
        origin.clone()
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    let names = exposed_headers();
    let exposed: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
    if let Ok(exposed) = HeaderValue::from_str(&exposed.join(",")) {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed);
    }
}

/// The headers a page on an allowed origin may read: the CORS layer's list and the refusals'.
fn exposed_headers() -> [HeaderName; 5] {
    [
        X_REQUEST_ID.clone(),
        header::RETRY_AFTER,
        rate_limit::RATELIMIT_LIMIT,
        rate_limit::RATELIMIT_REMAINING,
        rate_limit::RATELIMIT_RESET,
    ]
}

/// The CORS layer, when `CORS_ORIGINS` names any origin. Without origins it would allow none,
/// and a preflight then gets the router's 405 instead of an answer without
/// `Access-Control-Allow-Origin`: to a browser, the same refusal. (Left out, it is not cloned
/// into every request: each `from_fn` layer outside it clones the stack it wraps, and the layer's
/// header lists are `Vec`s.)
fn cors(state: &AppState) -> Option<CorsLayer> {
    if state.config.cors_origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = state
        .config
        .cors_origins
        .iter()
        .filter_map(|o| o.parse().ok())
        .collect();
    let allow = if state.config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins)
    };
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            X_REQUEST_ID.clone(),
        ])
        .expose_headers(exposed_headers());
    Some(layer)
}

/// Metrics for every request, and one span per request with its id and one log line when it
/// is answered. The query string is never logged (it may hold `api_key`).
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let metrics = Arc::clone(&state.metrics);
    let route = crate::routes::route_label(
        req.extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|p| p.as_str()),
    );
    let method = crate::metrics::method_label(req.method());
    // A cheap handle (shared bytes), so that an error line can name the request even when
    // the INFO span is filtered out.
    let request_id = req.headers().get(&X_REQUEST_ID).cloned();
    let id = move || {
        request_id
            .as_ref()
            .and_then(|v| v.to_str().ok().map(str::to_owned))
            .unwrap_or_default()
    };
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %id(),
    );
    let started = Instant::now();
    async move {
        let (res, upstream) = crate::metrics::timed(next.run(req)).await;
        metrics.record_request(method, route, res.status(), started.elapsed(), upstream);
        let status = res.status().as_u16();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match res.extensions().get::<LoggedError>() {
            Some(LoggedError(error)) if status >= 500 => {
                tracing::warn!(status, ms, error = %error, request_id = %id(), "answered")
            }
            Some(LoggedError(error)) => tracing::info!(status, ms, error = %error, "answered"),
            None => tracing::info!(status, ms, "answered"),
        }
        res
    }
    .instrument(span)
    .await
}

#[derive(Clone)]
struct Gate {
    state: AppState,
    in_flight: Arc<Semaphore>,
}

/// Admission, in order. Sheds load with 503 and `Retry-After` once `MAX_IN_FLIGHT` requests are
/// being answered, instead of queueing without end (a request counts until its response head
/// is ready; the probes never count), and bounds the time until the response head
/// (`REQUEST_TIMEOUT_SECS`; streams and WebSockets answer their head at once, so only
/// non-streaming work is cut). Then, with no keys configured, the `Host` check
/// ([`auth::loopback_host`]); the per-IP rate limit ([`rate_limit::admit`]); the API key
/// ([`auth::admit`]); and, for a request with a valid key, the per-key rate limit.
async fn admit(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    // Read only when a refusal could need it (CORS configured), not on every request.
    let origin = if gate.state.config.cors_origins.is_empty() {
        None
    } else {
        req.headers().get(header::ORIGIN).cloned()
    };
    let path = req.uri().path().to_owned();
    match admit_inner(&gate, req, next, &path).await {
        Ok(res) => res,
        Err(mut refused) => {
            cors_headers(&gate.state, origin.as_ref(), &mut refused);
            refused
        }
    }
}

/// `Ok`: the route's answer; `Err`: a refusal of admission.
async fn admit_inner(
    gate: &Gate,
    mut req: Request,
    next: Next,
    path: &str,
) -> Result<Response, Response> {
    let _permit = if auth::is_probe(path) {
        None
    } else {
        match gate.in_flight.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                return Err(respond(
                    ApiError::Overloaded("the server is at its limit of requests in flight".into()),
                    path,
                ));
            }
        }
    };
    let state = &gate.state;
    if !state.keys.enabled() && !auth::loopback_host(req.headers()) {
        return Err(respond(
            ApiError::Forbidden(
                "this server has no API keys and answers only requests to a loopback host \
                 (localhost, 127.0.0.1, [::1])"
                    .into(),
            ),
            path,
        ));
    }
    let timeout = state.config.request_timeout;
    let admitted = async {
        let decision = rate_limit::admit(state, &mut req).await?;
        let keyed = match auth::admit(state, &mut req) {
            Ok(keyed) => keyed,
            Err(mut refused) => {
                rate_limit::annotate(&mut refused, decision.as_ref());
                return Err(refused);
            }
        };
        let key_decision = match req.extensions().get::<auth::Caller>() {
            Some(caller) if keyed => rate_limit::admit_key(state, &caller.owner, path).await?,
            _ => None,
        };
        let decision = rate_limit::tighter(decision, key_decision);
        let mut res = next.run(req).await;
        rate_limit::annotate(&mut res, decision.as_ref());
        Ok(res)
    };
    match tokio::time::timeout(timeout, admitted).await {
        Ok(Ok(res)) => Ok(res),
        Ok(Err(res)) => Err(res),
        Err(_) => Ok(respond(ApiError::Timeout(timeout), path)),
    }
}
