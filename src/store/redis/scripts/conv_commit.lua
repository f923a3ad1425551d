-- A turn's commit. KEYS: meta, msgs, lock, owner index; ARGV (after room.lua's four): token,
-- now, ttl, max messages, id, existed, agent, messages... A new conversation takes its room here
-- (and records its agent), never
-- before. One that existed when the turn began and is gone now was deleted during the turn: the
-- DELETE wins, and nothing is written.
local token, now, ttl, max = ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local id, existed, agent = ARGV[9], ARGV[10], ARGV[11]
if redis.call('GET', KEYS[3]) ~= token then return redis.error_reply('LEASE_LOST') end
if redis.call('HEXISTS', KEYS[1], 'created_at') == 0 then
  if existed == '1' then return redis.error_reply('DELETED') end
  room(false)
  redis.call('HSET', KEYS[1], 'owner', owner, 'created_at', now, 'agent', agent)
  redis.call('ZADD', KEYS[4], now, id)
  redis.call('SADD', owners, owner)
end
redis.call('HSET', KEYS[1], 'updated_at', now)
for i = 12, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
local len = redis.call('LLEN', KEYS[2])
if len > max then
  -- As the memory store's trim: whole turns, the cut moved on to the next user message (or back
  -- to the last one), so that a tool call is never separated from its result.
  local excess = len - max
  if excess % 2 == 1 then excess = excess + 1 end
  local all = redis.call('LRANGE', KEYS[2], 0, -1)
  local function is_user(m) return string.find(m, '"role":"user"', 1, true) == 2 end
  local keep = 0
  if string.find(all[1], '"role":"system"', 1, true) then keep = 1 end
  local e = math.min(keep + excess, #all)
  local cut = nil
  for i = e + 1, #all do if is_user(all[i]) then cut = i - 1 break end end
  if not cut then
    cut = keep
    for i = e, keep + 1, -1 do if is_user(all[i]) then cut = i - 1 break end end
  end
  if cut > keep then
    redis.call('DEL', KEYS[2])
    if keep == 1 then redis.call('RPUSH', KEYS[2], all[1]) end
    for i = cut + 1, #all do redis.call('RPUSH', KEYS[2], all[i]) end
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[4], ttl)
redis.call('ZADD', all, now, owner .. ':' .. id)
return 1
