-- Reads a run: its fields, then up to `count` events from position `from`. A running run whose
-- producer's lease has lapsed is ended here first: `interrupted`, with a last error event.
-- KEYS: meta, log. ARGV: from, count, the interrupted frame's data, ttl ms, completed_at.
-- Returns false for no run, else owner, conversation_id, agent, task_id, status, created_at,
-- completed_at, tokens_used, first, next, then (seq, event name, data) per event.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if lease < now then
    local next = tonumber(redis.call('HGET', KEYS[1], 'next'))
    redis.call('XADD', KEYS[2], next .. '-1', 'e', 'error', 'd', ARGV[3])
    redis.call('HSET', KEYS[1], 'status', 'interrupted', 'next', next + 1, 'completed_at', ARGV[5],
      'producer', '')
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
end
local out = redis.call('HMGET', KEYS[1], 'owner', 'conversation_id', 'agent', 'task_id', 'status',
  'created_at', 'completed_at', 'tokens_used', 'first', 'next')
for i = 1, #out do if not out[i] then out[i] = '' end end
if tonumber(ARGV[2]) > 0 then
  local es = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
  for _, e in ipairs(es) do
    table.insert(out, string.match(e[1], '^(%d+)'))
    table.insert(out, e[2][2])
    table.insert(out, e[2][4])
  end
end
return out
