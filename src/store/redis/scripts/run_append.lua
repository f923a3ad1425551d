-- Appends a batch of a run's events, fenced by its producer's token, and renews the producer's
-- lease and the keys' TTL. KEYS: meta (hash), log (stream, entry ids `<seq>-1`).
-- ARGV: token, create ('1': make the run if it is not there), ttl ms, lease ms, first held seq,
-- end status ('' while running), completed_at, tokens_used, owner, conversation_id, agent,
-- task_id, created_at, then (seq, event name, data) per event.
-- Returns 1, or 0 when this producer may not write (another token, or the run has ended).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local producer = redis.call('HGET', KEYS[1], 'producer')
if not producer then
  if ARGV[2] ~= '1' then return 0 end
  redis.call('HSET', KEYS[1], 'owner', ARGV[9], 'conversation_id', ARGV[10], 'agent', ARGV[11],
    'task_id', ARGV[12], 'created_at', ARGV[13], 'status', 'running', 'producer', ARGV[1],
    'next', '0', 'first', '0', 'tokens_used', '0', 'completed_at', '')
elseif producer ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
local next = tonumber(redis.call('HGET', KEYS[1], 'next'))
for i = 14, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq >= next then
    redis.call('XADD', KEYS[2], ARGV[i] .. '-1', 'e', ARGV[i + 1], 'd', ARGV[i + 2])
    next = seq + 1
  end
end
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[5] .. '-0')
redis.call('HSET', KEYS[1], 'next', next, 'first', ARGV[5], 'lease_until', now + tonumber(ARGV[4]))
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[6], 'completed_at', ARGV[7], 'tokens_used', ARGV[8],
    'producer', '')
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
