//! Extractors that turn bad input into [`ApiError`]s FastAPI-style (422 with the failing field's
//! path) instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// A JSON body. Its `Content-Type` must be JSON (`application/json` or `…+json`, any
/// parameters) or absent (read as JSON): anything else is 415, so that a web page cannot
/// post a `text/plain` "simple request" past CORS. The body must arrive within
/// `BODY_TIMEOUT_SECS` (else 408), so that slow-body clients cannot hold admission slots.
pub struct AppJson<T>(pub T);

/// Whether a `Content-Type` value names JSON.
pub fn is_json_content_type(value: &[u8]) -> bool {
    // What nearly every client sends, without the parse below.
    if value == b"application/json" {
        return true;
    }
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application") && (subtype == "json" || subtype.ends_with("+json"))
}

impl<T: DeserializeOwned> FromRequest<AppState> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // `DefaultBodyLimit` (set by `middleware::apply`) enforces it; this is for the message.
        let limit = state.config.max_body_bytes;
        if let Some(ct) = req.headers().get(axum::http::header::CONTENT_TYPE)
            && !is_json_content_type(ct.as_bytes())
        {
            return Err(ApiError::UnsupportedMediaType);
        }
        let timeout = state.config.body_timeout;
        let mut read = std::pin::pin!(Bytes::from_request(req, state));
        // A body that came with its headers is read at once: no timer for it (a timer per
        // request is not free; the README's performance notes say what it cost).
        let bytes = match futures::poll!(read.as_mut()) {
            std::task::Poll::Ready(bytes) => bytes,
            std::task::Poll::Pending => tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| ApiError::BodyTimeout(timeout))?,
        };
        let bytes = bytes.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::Validation(vec![FieldError {
                    loc: vec![json!("body")],
                    msg: rejection.body_text(),
                    kind: "body_read_error".into(),
                }])
            }
        })?;
        parse_json(&bytes).map(AppJson)
    }
}

/// Parses JSON into `T`, naming the failing field as FastAPI does.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de)
        .map_err(|e| ApiError::Validation(vec![field_error("body", e)]))
}

/// Parses `key=value` pairs (already decoded) into `T`.
pub fn parse_pairs<T: DeserializeOwned>(
    pairs: serde_json::Map<String, Value>,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(pairs))
        .map_err(|e| ApiError::Validation(vec![field_error("query", e)]))
}

fn field_error(root: &str, e: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let mut loc = vec![json!(root)];
    if path != "." {
        loc.extend(path.split('.').map(|seg| match seg.parse::<u64>() {
            Ok(n) => json!(n),
            Err(_) => json!(seg.trim_start_matches('[').trim_end_matches(']')),
        }));
    }
    let text = inner.to_string();
    let (msg, kind) = if inner.is_syntax() || inner.is_eof() {
        // FastAPI reports the position of a JSON syntax error as the second `loc` entry.
        loc = vec![json!(root), json!(inner.column())];
        ("JSON decode error".to_owned(), "json_invalid")
    } else if let Some(field) = text
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        loc.push(json!(field));
        ("Field required".to_owned(), "missing")
    } else if text.starts_with("invalid type") {
        (cut_position(&text), "type_error")
    } else {
        (cut_position(&text), "value_error")
    };
    FieldError {
        loc,
        msg,
        kind: kind.to_owned(),
    }
}

/// serde_json appends " at line 1 column 20"; the location is already in `loc`.
fn cut_position(text: &str) -> String {
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text.to_owned(),
    }
}

/// A query string parsed like [`AppJson`]: all values arrive as strings, so numeric fields of
/// `T` should accept strings (see `routes::chat::ChatQuery`).
pub struct AppQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let map = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        parse_pairs(map).map(AppQuery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[expect(dead_code, reason = "fields are only parsed")]
    struct Body {
        message: String,
        temperature: Option<f64>,
    }

    fn err(body: &str) -> FieldError {
        match parse_json::<Body>(body.as_bytes()) {
            Err(ApiError::Validation(mut f)) => f.remove(0),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json_content_type(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "json",
            "",
        ] {
            assert!(!is_json_content_type(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn names_the_field() {
        let e = err(r#"{"message": "hi", "temperature": "hot"}"#);
        assert_eq!(e.loc, vec![json!("body"), json!("temperature")]);
        assert_eq!(e.kind, "type_error");
        let e = err(r#"{"temperature": 1}"#);
        assert_eq!(e.loc, vec![json!("body"), json!("message")]);
        assert_eq!(e.kind, "missing");
        let e = err(r#"{"message": "#);
        assert_eq!(e.kind, "json_invalid");
    }
}
