//! Rate limiting: GCRA token buckets (governor) per client IP and, optionally, per API key.
//!
//! The client IP is the socket peer, or, when the peer is a trusted proxy, the rightmost
//! `X-Forwarded-For` entry that is not itself a trusted proxy ([`client_ip`]). IPv6 clients are
//! limited per /64, since one host can own a whole /64. Memory stays bounded: idle buckets are
//! dropped by the janitor, and at once when more than [`MAX_TRACKED`] clients are tracked.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};
use ipnet::IpNet;

use std::sync::Arc;

use super::auth;
use crate::config::Config;
use crate::error::{ApiError, respond};
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::redis::RedisRateLimiter;

/// Beyond this many tracked clients, idle buckets are dropped on the spot.
pub const MAX_TRACKED: usize = 100_000;

/// Paths never limited: the public paths ([`auth::is_public`]: liveness, scrapes and the static
/// pages, which cost nothing to serve and call nothing), except `/ready`, which checks the
/// store and the upstream and so is limited like any request.
pub fn unlimited(path: &str) -> bool {
    path != "/ready" && auth::is_public(path)
}

type Keyed<K> = Gcra<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// The client's address as the limiter sees it; put into request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

pub struct RateLimiter {
    per_ip: Keyed<IpAddr>,
    per_key: Option<Keyed<String>>,
    /// With Redis: one budget across every replica, kept there instead of in `per_ip`/`per_key`.
    shared: Option<Arc<RedisRateLimiter>>,
    per_minute: u32,
    per_key_per_minute: Option<u32>,
    burst: u32,
    trusted: Vec<IpNet>,
}

/// What the limiter decided, with the numbers for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again (allowed) or until the next request fits (refused).
    pub reset: Duration,
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

impl RateLimiter {
    /// Keeps the buckets in Redis, shared by every replica.
    pub fn shared(config: &Config, redis: Arc<RedisRateLimiter>) -> Self {
        Self {
            shared: Some(redis),
            ..Self::new(config)
        }
    }

    pub fn new(config: &Config) -> Self {
        let q = quota(config.rate_limit_per_minute, config.rate_limit_burst);
        Self {
            per_ip: Gcra::dashmap(q).with_middleware(),
            per_key: config
                .rate_limit_per_key_per_minute
                .map(|pm| Gcra::dashmap(quota(pm, config.rate_limit_burst)).with_middleware()),
            shared: None,
            per_minute: config.rate_limit_per_minute,
            per_key_per_minute: config.rate_limit_per_key_per_minute,
            burst: config.rate_limit_burst,
            trusted: config.trusted_proxies.clone(),
        }
    }

    /// Takes one token for this client, and then, when per-key limits are on and the client
    /// was let through, one for `key`. Returns the tighter of the two decisions.
    pub async fn check(&self, ip: IpAddr, key: Option<&str>) -> Result<Decision, StoreError> {
        let ip_decision = self.check_ip(ip).await?;
        match key {
            Some(key) if ip_decision.allowed => {
                let key_decision = self.check_key(key).await?;
                Ok(tighter(Some(ip_decision), key_decision).unwrap_or(ip_decision))
            }
            _ => Ok(ip_decision),
        }
    }

    /// Takes one token from the client's bucket.
    pub async fn check_ip(&self, ip: IpAddr) -> Result<Decision, StoreError> {
        if let Some(shared) = &self.shared {
            let bucket = format!("ip:{}", bucket_of(ip));
            return take_shared(shared, &bucket, self.per_minute, self.burst).await;
        }
        if self.per_ip.len() > MAX_TRACKED {
            self.per_ip.retain_recent();
        }
        Ok(decide(&self.per_ip, &bucket_of(ip), self.burst))
    }

    /// Takes one token from the key's bucket; `None` when per-key limits are off. Keys are
    /// configured names, so the per-key buckets are as many as the keys.
    pub async fn check_key(&self, key: &str) -> Result<Option<Decision>, StoreError> {
        let Some(per_minute) = self.per_key_per_minute else {
            return Ok(None);
        };
        if let Some(shared) = &self.shared {
            let bucket = format!("key:{key}");
            return take_shared(shared, &bucket, per_minute, self.burst)
                .await
                .map(Some);
        }
        Ok(self
            .per_key
            .as_ref()
            .map(|limiter| decide(limiter, &key.to_owned(), self.burst)))
    }

    /// Drops buckets that are full again (idle clients).
    pub fn sweep(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        if let Some(k) = &self.per_key {
            k.retain_recent();
        }
    }

    /// How many clients are tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.per_ip.len()
    }

    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted)
    }
}

async fn take_shared(
    shared: &RedisRateLimiter,
    bucket: &str,
    per_minute: u32,
    burst: u32,
) -> Result<Decision, StoreError> {
    let emission = Duration::from_secs(60) / per_minute.max(1);
    let (allowed, remaining, reset) = shared.take(bucket, emission, burst).await?;
    Ok(Decision {
        allowed,
        limit: burst,
        remaining,
        reset,
    })
}

fn decide<K: std::hash::Hash + Eq + Clone>(limiter: &Keyed<K>, key: &K, burst: u32) -> Decision {
    match limiter.check_key(key) {
        Ok(snapshot) => {
            let remaining = snapshot.remaining_burst_capacity();
            let per_token = snapshot.quota().replenish_interval();
            Decision {
                allowed: true,
                limit: burst,
                remaining,
                reset: per_token * burst.saturating_sub(remaining),
            }
        }
        Err(not_until) => Decision {
            allowed: false,
            limit: burst,
            remaining: 0,
            reset: not_until.wait_time_from(DefaultClock::default().now()),
        },
    }
}

/// IPv4 addresses stand alone; IPv6 addresses are limited per /64.
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The socket peer, or, when the peer is a trusted proxy, the client named by
/// `X-Forwarded-For`, walked from the right: trusted proxies are skipped and the first entry
/// that is not one is the client. An entry with a port counts as its address; an entry that is
/// no address at all (`unknown`, garbage) ends the walk at the trusted proxy that passed it on,
/// so that nothing further left is believed and garbage cannot open new buckets. Headers from
/// anyone else are ignored.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("garbage"))
        .collect();
    let mut passed_on = peer;
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = hop_address(entry.trim()) else {
            return passed_on;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        passed_on = ip;
    }
    passed_on
}

/// One `X-Forwarded-For` entry's address: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or
/// `[2001:db8::1]:443`.
fn hop_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']')?;
        let port_ok = tail.is_empty() || tail.strip_prefix(':').is_some_and(valid_port);
        return port_ok.then(|| addr.parse().ok()).flatten();
    }
    let (addr, port) = entry.rsplit_once(':')?;
    valid_port(port)
        .then(|| addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4))
        .flatten()
}

fn valid_port(port: &str) -> bool {
    port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
}

pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// (Constant names: a `&str` name is parsed and checked again on every insert.)
fn set_headers(headers: &mut HeaderMap, d: &Decision) {
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(d.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
    let reset = d.reset.as_secs_f64().ceil() as u64;
    headers.insert(RATELIMIT_RESET, HeaderValue::from(reset));
}

/// Finds the client IP (kept in the request as [`ClientIp`]) and takes a token from its
/// bucket. `Ok(None)`: a path that is never limited; `Err`: the 429 to answer.
pub async fn admit(state: &AppState, req: &mut Request) -> Result<Option<Decision>, Response> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let ip = state.limiter.client_ip(peer, req.headers());
    req.extensions_mut().insert(ClientIp(ip));
    let path = req.uri().path();
    if unlimited(path) {
        return Ok(None);
    }
    let decision = match state.limiter.check_ip(ip).await {
        Ok(d) => d,
        Err(e) => return Err(respond(ApiError::Store(e), path)),
    };
    refuse_unless_allowed(state, decision, path).map(Some)
}

/// Takes a token from the caller's key's bucket (a request that carries a valid key, on a
/// route that needs one), after auth. `Ok(None)`: per-key limits are off.
pub async fn admit_key(
    state: &AppState,
    key: &str,
    path: &str,
) -> Result<Option<Decision>, Response> {
    match state.limiter.check_key(key).await {
        Ok(Some(d)) => refuse_unless_allowed(state, d, path).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(respond(ApiError::Store(e), path)),
    }
}

#[allow(
    clippy::result_large_err,
    reason = "the refusal is the answer itself, returned once per request"
)]
fn refuse_unless_allowed(
    state: &AppState,
    decision: Decision,
    path: &str,
) -> Result<Decision, Response> {
    if decision.allowed {
        return Ok(decision);
    }
    state.metrics.rate_limited.inc();
    let mut res = respond(
        ApiError::RateLimited {
            retry_after: decision.reset,
        },
        path,
    );
    set_headers(res.headers_mut(), &decision);
    Err(res)
}

/// Of the per-IP and the per-key decision, the one that refuses, else the one with fewer
/// requests left.
pub fn tighter(ip: Option<Decision>, key: Option<Decision>) -> Option<Decision> {
    match (ip, key) {
        (Some(i), Some(k)) if !k.allowed || k.remaining <= i.remaining => Some(k),
        (i, k) => i.or(k),
    }
}

/// The `RateLimit-*` headers of an admitted request's answer.
pub fn annotate(res: &mut Response, decision: Option<&Decision>) {
    if let Some(d) = decision {
        set_headers(res.headers_mut(), d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_minute: u32, burst: u32) -> RateLimiter {
        let mut c = Config::for_tests();
        c.rate_limit_per_minute = per_minute;
        c.rate_limit_burst = burst;
        RateLimiter::new(&c)
    }

    #[tokio::test]
    async fn burst_then_refuse_with_wait() {
        let l = limiter(60, 3);
        let ip = IpAddr::from([10, 0, 0, 1]);
        let mut d = Vec::new();
        for _ in 0..4 {
            d.push(l.check(ip, None).await.unwrap());
        }
        assert!(d[..3].iter().all(|d| d.allowed));
        assert_eq!(d[2].remaining, 0);
        assert!(!d[3].allowed);
        assert!(d[3].reset <= Duration::from_secs(1) && d[3].reset > Duration::ZERO);
        // another client has its own bucket
        assert!(
            l.check(IpAddr::from([10, 0, 0, 2]), None)
                .await
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2, 10.0.0.9".parse().unwrap(),
        );
        let outsider = IpAddr::from([8, 8, 8, 8]);
        assert_eq!(client_ip(outsider, &h, &trusted), outsider);
        let proxy = IpAddr::from([10, 1, 1, 1]);
        assert_eq!(client_ip(proxy, &h, &trusted), IpAddr::from([2, 2, 2, 2]));
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn forwarded_for_with_ports_and_garbage() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy = IpAddr::from([10, 1, 1, 1]);
        let walk = |xff: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", xff.parse().unwrap());
            client_ip(proxy, &h, &trusted)
        };
        // A port is part of the entry, not a reason to skip it.
        assert_eq!(walk("9.9.9.9, 1.2.3.4:5678"), IpAddr::from([1, 2, 3, 4]));
        assert_eq!(
            walk("9.9.9.9, [2001:db8::1]:443"),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            walk("2001:db8::7"),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        // Garbage ends the walk at the trusted hop that passed it on: the spoofed entry to its
        // left is never believed.
        assert_eq!(walk("6.6.6.6, unknown"), proxy);
        assert_eq!(
            walk("6.6.6.6, garbage, 10.0.0.9"),
            IpAddr::from([10, 0, 0, 9])
        );
        assert_eq!(walk("6.6.6.6, 1.2.3.4:99999"), proxy);
        // Several header lines read as one list, right to left.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "7.7.7.7".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.5".parse().unwrap());
        assert_eq!(client_ip(proxy, &h, &trusted), IpAddr::from([7, 7, 7, 7]));
    }

    #[test]
    fn ipv6_is_limited_per_64() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(bucket_of(a), bucket_of(b));
    }
}
