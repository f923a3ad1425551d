//! Reading one variable: numbers, durations, lists and API keys, each error naming its variable.

use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{ApiKey, ConfigError};

/// Parses `name=key` / `name=sha256:<hex>` entries into hashed keys.
pub fn parse_api_keys(entries: &[String], var: &'static str) -> Result<Vec<ApiKey>, ConfigError> {
    let mut keys: Vec<ApiKey> = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some((name, key)) = entry.split_once('=') else {
            return Err(ConfigError {
                var,
                reason: "each entry must be `name=key` or `name=sha256:<hex>`".into(),
            });
        };
        let (name, key) = (name.trim(), key.trim());
        if name.is_empty() || key.is_empty() {
            return Err(ConfigError {
                var,
                reason: "an entry has an empty name or key".into(),
            });
        }
        let sha256 = match key.strip_prefix("sha256:") {
            Some(hexed) => {
                let bytes = hex::decode(hexed).map_err(|_| ConfigError {
                    var,
                    reason: format!("key `{name}`: sha256 value is not hex"),
                })?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| ConfigError {
                    var,
                    reason: format!("key `{name}`: sha256 value must be 64 hex digits"),
                })?
            }
            None => Sha256::digest(key.as_bytes()).into(),
        };
        // The name owns conversations and tasks, and is part of their keys in Redis.
        if name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
        {
            return Err(ConfigError {
                var,
                reason: format!(
                    "key name `{name}` must be 1 to 64 characters of A-Z, a-z, 0-9, _ - . @"
                ),
            });
        }
        if keys.iter().any(|k| k.name == name) {
            return Err(ConfigError {
                var,
                reason: format!("key name `{name}` appears twice"),
            });
        }
        keys.push(ApiKey {
            name: name.to_owned(),
            sha256,
        });
    }
    Ok(keys)
}

pub(super) fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(super) fn parse<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Option<T>,
) -> Result<T, ConfigError> {
    match get(var) {
        Some(raw) => raw.parse().map_err(|_| ConfigError {
            var,
            reason: format!("cannot parse `{raw}`"),
        }),
        None => default.ok_or_else(|| ConfigError {
            var,
            reason: "is required".into(),
        }),
    }
}

pub(super) fn positive(var: &'static str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError {
            var,
            reason: "must be greater than 0".into(),
        });
    }
    Ok(())
}

pub(super) fn count(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: usize,
) -> Result<usize, ConfigError> {
    let v: usize = parse(get, var, Some(default))?;
    positive(var, v as u64)?;
    Ok(v)
}

pub(super) fn secs(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    let v: f64 = parse(get, var, Some(default as f64))?;
    if !v.is_finite() || v <= 0.0 || v > 1.0e7 {
        return Err(ConfigError {
            var,
            reason: "must be a positive number of seconds".into(),
        });
    }
    Ok(Duration::from_secs_f64(v))
}
