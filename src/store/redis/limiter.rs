//! Rate-limit buckets in Redis, shared by every replica: GCRA inside one script.

use std::time::Duration;

use redis::Script;

use super::{Redis, unavailable};
use crate::store::StoreError;

/// GCRA in one script. KEYS: bucket; ARGV: emission interval (ms), burst.
/// Returns {allowed, remaining, reset_ms}: reset is the wait for the next token when refused,
/// and the time until the bucket is full when allowed. Time is Redis's own, so replicas agree.
static GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = emission * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tolerance then
  return {0, 0, tat - tolerance - now}
end
local new_tat = tat + emission
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now + emission))
local remaining = math.floor((now + tolerance - new_tat) / emission) + 1
if remaining < 0 then remaining = 0 end
return {1, remaining, new_tat - now}";

/// Rate-limit buckets shared by every replica.
pub struct RedisRateLimiter {
    redis: Redis,
}

impl RedisRateLimiter {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Takes one token from `bucket`: (allowed, remaining, reset).
    pub async fn take(
        &self,
        bucket: &str,
        emission: Duration,
        burst: u32,
    ) -> Result<(bool, u32, Duration), StoreError> {
        let r = &self.redis;
        let mut c = r.conn.clone();
        let (allowed, remaining, reset): (i64, i64, i64) = Script::new(GCRA)
            .key(r.key(&["rl", bucket]))
            .arg(emission.as_millis().max(1) as u64)
            .arg(burst)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok((
            allowed == 1,
            remaining.max(0) as u32,
            Duration::from_millis(reset.max(0) as u64),
        ))
    }
}
