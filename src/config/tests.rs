use sha2::{Digest, Sha256};

use super::*;

fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| map.get(k).cloned(), None)
}

#[test]
fn defaults_match_the_contract() {
    let c = cfg(&[]).unwrap();
    assert_eq!(c.addr, "127.0.0.1:8000".parse().unwrap());
    assert_eq!(c.provider, ProviderKind::Echo);
    assert_eq!(c.chat_model, "gpt-4o-mini");
    assert_eq!(c.task_model, "gpt-4o");
    assert_eq!(c.upstream_timeout, Duration::from_secs(60));
    assert_eq!((c.rate_limit_per_minute, c.rate_limit_burst), (60, 10));
    assert_eq!(c.store, StoreKind::Memory);
    assert_eq!(c.store_prefix, "agent-api:");
    assert_eq!(c.max_body_bytes, 1024 * 1024);
}

#[test]
fn provider_follows_openai_settings() {
    let c = cfg(&[("OPENAI_API_KEY", "sk-x")]).unwrap();
    assert_eq!(c.provider, ProviderKind::OpenAi);
    assert_eq!(format!("{:?}", c.openai_api_key), "Some(***)");
    let c = cfg(&[("OPENAI_BASE_URL", "http://localhost:11434/v1/")]).unwrap();
    assert_eq!(c.provider, ProviderKind::OpenAi);
    assert_eq!(c.openai_base_url, "http://localhost:11434/v1");
}

#[test]
fn bad_values_name_the_variable() {
    for (var, val) in [
        ("PORT", "eighty"),
        ("UPSTREAM_TIMEOUT_SECS", "-1"),
        ("LLM_PROVIDER", "claude"),
        ("RATE_LIMIT_BURST", "0"),
        ("TRUSTED_PROXIES", "10.0.0.0/99"),
        ("API_KEYS", "novalue"),
        ("STORE", "sqlite://x"),
        ("LOG_FORMAT", "xml"),
        ("OPENAI_BASE_URL", "ftp://example.com"),
        ("OPENAI_BASE_URL", "http://exa mple.com/v1"),
    ] {
        let err = cfg(&[(var, val)]).unwrap_err();
        assert_eq!(err.var, var, "{err}");
    }
}

#[test]
fn proxy_variables_upper_or_lower_case() {
    let c = cfg(&[
        ("https_proxy", "http://proxy:3128"),
        ("NO_PROXY", "localhost,10.0.0.0/8"),
    ])
    .unwrap();
    assert_eq!(c.upstream_proxy.https.as_deref(), Some("http://proxy:3128"));
    assert_eq!(c.upstream_proxy.no.as_deref(), Some("localhost,10.0.0.0/8"));
    assert_eq!(c.upstream_proxy.http, None);
    assert_eq!(cfg(&[]).unwrap().upstream_proxy, ProxySettings::default());
}

#[test]
fn refuses_open_non_loopback() {
    let err = cfg(&[("HOST", "0.0.0.0")]).unwrap_err();
    assert_eq!(err.var, "API_KEYS");
    assert!(cfg(&[("HOST", "0.0.0.0"), ("ALLOW_NO_AUTH", "true")]).is_ok());
    assert!(cfg(&[("HOST", "0.0.0.0"), ("API_KEYS", "a=b")]).is_ok());
}

#[test]
fn api_keys_are_hashed() {
    let digest = hex::encode(Sha256::digest(b"k2"));
    let c = cfg(&[("API_KEYS", &format!("one=k1, two=sha256:{digest}"))]).unwrap();
    assert_eq!(c.api_keys.len(), 2);
    assert_eq!(
        c.api_keys[0].sha256,
        <[u8; 32]>::from(Sha256::digest(b"k1"))
    );
    assert_eq!(
        c.api_keys[1].sha256,
        <[u8; 32]>::from(Sha256::digest(b"k2"))
    );
    assert!(!format!("{:?}", c.api_keys).contains("k1"));
}
