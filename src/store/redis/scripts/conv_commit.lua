-- A turn's commit. KEYS: meta, msgs, lock, owner index; ARGV (after room.lua's four): token,
-- now, ttl, max messages, id, existed, messages... A new conversation takes its room here, never
-- before. One that existed when the turn began and is gone now was deleted during the turn: the
-- DELETE wins, and nothing is written.
local token, now, ttl, max = ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local id, existed = ARGV[9], ARGV[10]
if redis.call('GET', KEYS[3]) ~= token then return redis.error_reply('LEASE_LOST') end
if redis.call('HEXISTS', KEYS[1], 'created_at') == 0 then
  if existed == '1' then return redis.error_reply('DELETED') end
  room(false)
  redis.call('HSET', KEYS[1], 'owner', owner, 'created_at', now)
  redis.call('ZADD', KEYS[4], now, id)
  redis.call('SADD', owners, owner)
end
redis.call('HSET', KEYS[1], 'updated_at', now)
for i = 11, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
local len = redis.call('LLEN', KEYS[2])
if len > max then
  local excess = len - max
  if excess % 2 == 1 then excess = excess + 1 end
  local first = redis.call('LINDEX', KEYS[2], 0)
  if string.find(first, '"role":"system"', 1, true) then
    local rest = redis.call('LRANGE', KEYS[2], excess + 1, -1)
    redis.call('DEL', KEYS[2])
    redis.call('RPUSH', KEYS[2], first)
    for _, m in ipairs(rest) do redis.call('RPUSH', KEYS[2], m) end
  else
    redis.call('LTRIM', KEYS[2], excess, -1)
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[4], ttl)
redis.call('ZADD', all, now, owner .. ':' .. id)
return 1
