//! API-key authentication: deny by default.
//!
//! Every path needs a key except [`PUBLIC_PATHS`] (and the docs' own assets). Keys arrive as
//! `X-API-Key`, `Authorization: Bearer`, or, on `GET /chat/stream` and `/ws/*` only (browsers
//! cannot set headers there), `?api_key=`, which is then cut out of the URI so that no log or
//! trace can show it. Keys are held as SHA-256 hashes and compared in constant time.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKey;
use crate::error::{ApiError, respond};
use crate::state::AppState;

/// The paths anyone may call. Everything else, including routes added later, needs a key.
pub const PUBLIC_PATHS: &[&str] = &[
    "/",
    "/health",
    "/ready",
    "/metrics",
    "/docs",
    "/openapi.json",
];

/// The owner name of requests when no keys are configured (a loopback-only server).
pub const ANONYMOUS: &str = "anonymous";

pub fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path) || path.starts_with("/docs/")
}

/// The probes: never refused by `MAX_IN_FLIGHT`, so that a server full of slow clients still
/// answers them.
pub fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics")
}

/// Whether the request's `Host` is a loopback name or address (`localhost`, `127.0.0.1`,
/// `[::1]`, any port). With no keys configured every other `Host` is refused, so that a web
/// page the user visits cannot reach the open server through DNS rebinding. A request with no
/// `Host` at all (HTTP/1.0) is no browser's.
pub fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((addr, _)) => addr,
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The configured keys, as hashes.
pub struct KeyRing {
    keys: Vec<ApiKey>,
}

impl KeyRing {
    pub fn new(keys: &[ApiKey]) -> Self {
        Self {
            keys: keys.to_vec(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The name of the key, if `presented` is one. Every configured key is compared, in
    /// constant time, so that timing tells nothing about which one matched or how closely.
    pub fn verify(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.sha256.ct_eq(&digest)) {
                found = Some(key.name.as_str());
            }
        }
        found
    }
}

/// Who is calling: the name of their key (or [`ANONYMOUS`]). Put into the request by the auth
/// layer; every route that reads or writes owned data takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub owner: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Absent only if a route were mounted outside the auth layer: refuse rather than guess.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// Where a query-string key is accepted: what a browser's `EventSource` or `WebSocket` opens.
fn query_key_allowed(method: &Method, path: &str) -> bool {
    let event_source = path == "/chat/stream"
        || (path.ends_with("/events")
            && (path.starts_with("/runs/") || path.starts_with("/task/")));
    (method == Method::GET && event_source) || path.starts_with("/ws/")
}

fn header_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Removes `api_key` from the query; returns its value and the cleaned URI.
fn take_query_key(uri: &Uri) -> Option<(String, Uri)> {
    let query = uri.query()?;
    let mut key = None;
    let mut kept = form_urlencoded::Serializer::new(String::new());
    let mut any_kept = false;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "api_key" {
            key = Some(value.into_owned());
        } else {
            kept.append_pair(&name, &value);
            any_kept = true;
        }
    }
    let key = key?;
    let path_and_query = if any_kept {
        format!("{}?{}", uri.path(), kept.finish())
    } else {
        uri.path().to_owned()
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Some((key, Uri::from_parts(parts).ok()?))
}

/// The auth layer.
/// Cuts any `?api_key=` out of the URI, then finds the caller (kept in the request as
/// [`Caller`]); `Ok(true)` when the caller presented a valid key on a route that needs one
/// (the per-key limit applies), `Err` is the 401 to answer. A CORS preflight (`OPTIONS`)
/// carries no key by design: it is let through without one, to be answered by the CORS layer.
#[allow(
    clippy::result_large_err,
    reason = "the refusal is the answer itself, returned once per request"
)]
pub fn admit(state: &AppState, req: &mut Request) -> Result<bool, Response> {
    // The query key is always cut out, even where it is not accepted, so that it is never logged.
    let query_key = match take_query_key(req.uri()) {
        Some((key, clean)) => {
            *req.uri_mut() = clean;
            query_key_allowed(req.method(), req.uri().path()).then_some(key)
        }
        None => None,
    };
    if !state.keys.enabled() {
        req.extensions_mut().insert(Caller {
            owner: ANONYMOUS.to_owned(),
        });
        return Ok(false);
    }
    if is_public(req.uri().path()) || req.method() == Method::OPTIONS {
        return Ok(false);
    }
    let owner = match header_key(req.headers()) {
        Some(k) => state.keys.verify(k),
        None => query_key.as_deref().and_then(|k| state.keys.verify(k)),
    }
    .map(str::to_owned);
    match owner {
        Some(owner) => {
            req.extensions_mut().insert(Caller { owner });
            Ok(true)
        }
        None => {
            state.metrics.auth_rejected.inc();
            Err(respond(ApiError::Unauthorized, req.uri().path()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_api_keys;

    #[test]
    fn verifies_plain_and_hashed_keys() {
        let keys = parse_api_keys(&["a=k1".into(), "b=k2".into()], "API_KEYS").unwrap();
        let ring = KeyRing::new(&keys);
        assert_eq!(ring.verify("k1"), Some("a"));
        assert_eq!(ring.verify("k2"), Some("b"));
        assert_eq!(ring.verify("K1"), None);
        assert_eq!(ring.verify(""), None);
    }

    #[test]
    fn query_key_is_removed() {
        let uri: Uri = "/chat/stream?message=hi&api_key=s%2Bcret&x=1"
            .parse()
            .unwrap();
        let (key, clean) = take_query_key(&uri).unwrap();
        assert_eq!(key, "s+cret");
        assert_eq!(clean.to_string(), "/chat/stream?message=hi&x=1");
        assert!(take_query_key(&"/x?y=1".parse().unwrap()).is_none());
    }

    #[test]
    fn loopback_hosts() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            loopback_host(&m)
        };
        for ok in [
            "localhost",
            "LOCALHOST:8000",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8000",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "10.0.0.1:8000",
            "[2001:db8::1]:80",
            "[::1",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn bearer_and_header() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(header_key(&h), Some("abc"));
        h.insert("x-api-key", "def".parse().unwrap());
        assert_eq!(header_key(&h), Some("def"));
    }
}
