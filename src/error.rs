//! The one error type of the HTTP layer, [`ApiError`], and how it becomes a response.
//!
//! Two body shapes, chosen here and nowhere else: FastAPI's `{"detail": ...}` for the
//! tutorial-compatible routes, and OpenAI's `{"error": {...}}` under `/v1` ([`OpenAiError`]).
//! 5xx bodies never carry secrets; the full error is attached to the response for the access log.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::llm::LlmError;
use crate::store::StoreError;

/// One entry of a 422 body, as FastAPI writes it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Where: `body`, `query` or `path`, then the field's name or position (FastAPI's `loc`).
    #[schema(value_type = Vec<LocItem>)]
    pub loc: Vec<Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// One step of a `loc`: a name, or a position (an index, or a JSON syntax error's column).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code, reason = "only its schema is used")]
pub enum LocItem {
    Name(String),
    Position(u64),
}

impl FieldError {
    /// An error on a top-level body field.
    pub fn body(field: &str, msg: impl Into<String>, kind: &str) -> Self {
        Self {
            loc: vec![json!("body"), json!(field)],
            msg: msg.into(),
            kind: kind.to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    Validation(Vec<FieldError>),
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("{kind} not found")]
    NotFound { kind: &'static str },
    /// A model outside `MODELS`: 404 `model_not_found` on `/v1` (the tutorial routes answer
    /// a 422 at the field instead).
    #[error("the model `{0}` does not exist or is not served here")]
    ModelNotFound(String),
    /// Open mode (no keys) and a `Host` that is not a loopback name.
    #[error("{0}")]
    Forbidden(String),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// A per-key quota is full (conversations, tasks, streams).
    #[error("{message}")]
    Quota {
        message: String,
        retry_after: Duration,
    },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("rate limit exceeded, retry in {}s", retry_after_secs(*.retry_after))]
    RateLimited { retry_after: Duration },
    #[error("{0}")]
    Upstream(#[from] LlmError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Overloaded(String),
    /// The conversation belongs to another agent: 409.
    #[error("{0}")]
    Conflict(String),
    #[error("the request took longer than {0:?}")]
    Timeout(Duration),
    /// A run's position whose events were dropped (`RUN_LOG_MAX_BYTES`): 410.
    #[error("{0}")]
    Gone(String),
    /// A run's event id that is not one of this run's: 400.
    #[error("{0}")]
    BadRequest(String),
    /// `previous_response_id` names no stored response of the caller's: 404.
    #[error(
        "no stored response `{0}` of this key (unknown, expired, deleted, or made with store: false)"
    )]
    PreviousResponseNotFound(String),
    #[error("internal error")]
    Internal(String),
}

impl From<crate::runs::FollowError> for ApiError {
    fn from(e: crate::runs::FollowError) -> Self {
        use crate::runs::{FollowError, ReplayError};
        match e {
            FollowError::NotFound => Self::NotFound { kind: "run" },
            FollowError::Replay(ReplayError::Gone) => Self::Gone(
                "the run's events after this position are no longer held (RUN_LOG_MAX_BYTES)"
                    .into(),
            ),
            FollowError::Replay(ReplayError::Unknown) => {
                Self::BadRequest("this run has sent no event with that id".into())
            }
            FollowError::Store(e) => Self::Store(e),
        }
    }
}

/// Whole seconds, at least 1, as `Retry-After` wants them.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// The text of the error that was answered, kept in the response's extensions so that the
/// access log can print it once (responses themselves have no side effects).
#[derive(Debug, Clone)]
pub struct LoggedError(pub String);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } | Self::ModelNotFound(_) | Self::PreviousResponseNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Quota { .. } | Self::Store(StoreError::Quota(_)) => StatusCode::TOO_MANY_REQUESTS,
            Self::Store(StoreError::Busy(_)) | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Store(StoreError::Deleted(_)) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream(e) => match e {
                LlmError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                LlmError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                LlmError::ContextLength(_) => StatusCode::UNPROCESSABLE_ENTITY,
                LlmError::Status { .. }
                | LlmError::Connect(_)
                | LlmError::BadResponse(_)
                | LlmError::Incomplete
                | LlmError::Failed(_) => StatusCode::BAD_GATEWAY,
            },
            Self::Store(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Gone(_) => StatusCode::GONE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable snake_case code that clients and logs can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation_error",
            Self::Unauthorized => "unauthorized",
            Self::NotFound { .. } => "not_found",
            Self::ModelNotFound(_) => "model_not_found",
            Self::PreviousResponseNotFound(_) => "previous_response_not_found",
            Self::Forbidden(_) => "forbidden",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTimeout(_) => "body_timeout",
            Self::Quota { .. } | Self::Store(StoreError::Quota(_)) => "quota_exceeded",
            Self::Store(StoreError::Busy(_)) => "conversation_busy",
            Self::Conflict(_) => "agent_mismatch",
            Self::Store(StoreError::Deleted(_)) => "conversation_deleted",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::Upstream(e) => match e {
                LlmError::Timeout(_) => "upstream_timeout",
                LlmError::RateLimited { .. } => "upstream_rate_limited",
                LlmError::ContextLength(_) => "context_length_exceeded",
                LlmError::Status { .. }
                | LlmError::Connect(_)
                | LlmError::BadResponse(_)
                | LlmError::Incomplete
                | LlmError::Failed(_) => "upstream_error",
            },
            Self::Store(_) => "store_unavailable",
            Self::Overloaded(_) => "overloaded",
            Self::Timeout(_) => "request_timeout",
            Self::Gone(_) => "events_gone",
            Self::BadRequest(_) => "bad_event_id",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The human text of the error (what `detail` or `error.message` says).
    pub fn message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".into(),
            Self::Validation(fields) => fields
                .iter()
                .map(|f| format!("{}: {}", loc_text(&f.loc), f.msg))
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after } | Self::Quota { retry_after, .. } => {
                Some(retry_after_secs(*retry_after))
            }
            Self::Store(StoreError::Quota(_) | StoreError::Busy(_)) => Some(1),
            Self::Upstream(LlmError::RateLimited { retry_after, .. }) => {
                Some(retry_after.map(retry_after_secs).unwrap_or(1))
            }
            Self::Overloaded(_) | Self::Store(StoreError::Full(_)) => Some(1),
            _ => None,
        }
    }

    /// The `{"detail": ...}` body of the tutorial-compatible routes.
    pub fn detail_body(&self) -> Value {
        match self {
            Self::Validation(fields) => json!({ "detail": fields }),
            other => json!({ "detail": other.message() }),
        }
    }

    /// The response in OpenAI's shape, for `/v1/*`. Validation is 400 there, as OpenAI answers.
    pub fn into_openai_response(self) -> Response {
        let status = match (&self, self.status()) {
            (_, StatusCode::UNPROCESSABLE_ENTITY) => StatusCode::BAD_REQUEST,
            // The upstream refused the request itself (unknown model, bad tool schema): that is
            // the caller's to fix, so OpenAI clients get it as their own 400.
            (
                Self::Upstream(LlmError::Status {
                    status: 400 | 404 | 422,
                    ..
                }),
                _,
            ) => StatusCode::BAD_REQUEST,
            (_, s) => s,
        };
        let kind = match status.as_u16() {
            400 | 403 | 404 | 408 | 409 | 413 | 415 | 422 => "invalid_request_error",
            401 => "authentication_error",
            429 => "rate_limit_error",
            _ => "api_error",
        };
        let param = match &self {
            Self::Validation(fields) => {
                fields.first().and_then(|f| f.loc.get(1)).map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            }
            Self::ModelNotFound(_) => Some("model".to_owned()),
            Self::PreviousResponseNotFound(_) => Some("previous_response_id".to_owned()),
            Self::Upstream(LlmError::ContextLength(_)) => Some("messages".to_owned()),
            _ => None,
        };
        let body = json!({"error": {
            "message": self.message(),
            "type": kind,
            "param": param,
            "code": self.code(),
        }});
        self.finish(status, body)
    }

    fn finish(self, status: StatusCode, body: Value) -> Response {
        let mut res = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, Self::Unauthorized) {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"agent-api\""),
            );
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let text = match &self {
                Self::Internal(detail) => format!("internal error: {detail}"),
                other => other.to_string(),
            };
            res.extensions_mut().insert(LoggedError(text));
        }
        res
    }
}

fn loc_text(loc: &[Value]) -> String {
    loc.iter()
        .skip(1)
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.detail_body();
        let status = self.status();
        self.finish(status, body)
    }
}

/// [`ApiError`] answered in OpenAI's shape; the error type of the `/v1` handlers.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.0.into_openai_response()
    }
}

/// Answers an error raised outside a handler (a layer) in the shape of the path's API family.
pub fn respond(err: ApiError, path: &str) -> Response {
    if path.starts_with("/v1/") {
        err.into_openai_response()
    } else {
        err.into_response()
    }
}

impl From<crate::agent::AgentError> for ApiError {
    fn from(e: crate::agent::AgentError) -> Self {
        use crate::agent::AgentError;
        match e {
            AgentError::NotFound(kind) => Self::NotFound { kind },
            AgentError::Llm(e) => Self::Upstream(e),
            AgentError::Store(e) => Self::Store(e),
            AgentError::Busy(msg) => Self::Overloaded(msg),
            AgentError::OtherAgent(msg) => Self::Conflict(msg),
            AgentError::Invalid { field, msg } => Self::Validation(vec![FieldError {
                loc: vec![json!("body"), json!(field)],
                msg,
                kind: "value_error".into(),
            }]),
            AgentError::Loop(msg) => Self::Internal(msg),
            AgentError::Gone => Self::Internal("the client is gone".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::Validation(vec![]), 422, "validation_error"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::NotFound { kind: "task" }, 404, "not_found"),
            (
                ApiError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                ApiError::RateLimited {
                    retry_after: Duration::from_millis(10),
                },
                429,
                "rate_limited",
            ),
            (
                ApiError::Upstream(LlmError::Timeout(Duration::from_secs(1))),
                504,
                "upstream_timeout",
            ),
            (
                ApiError::Upstream(LlmError::Incomplete),
                502,
                "upstream_error",
            ),
            (
                ApiError::Store(StoreError::Unavailable("x".into())),
                503,
                "store_unavailable",
            ),
            (ApiError::Internal("secret".into()), 500, "internal_error"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.code(), code);
        }
    }

    #[test]
    fn internal_detail_is_hidden_and_retry_after_rounds_up() {
        let e = ApiError::Internal("db password=hunter2".into());
        assert_eq!(e.detail_body(), json!({"detail": "internal error"}));
        let res = ApiError::RateLimited {
            retry_after: Duration::from_millis(1200),
        }
        .into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn openai_shape() {
        let res = ApiError::Validation(vec![FieldError::body("temperature", "too hot", "x")])
            .into_openai_response();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
}
