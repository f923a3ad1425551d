-- Writes a stored response. KEYS[1] resp:{id} (hash: owner, data), KEYS[2] owner:{owner}:resps
-- (sorted set of ids by creation). ARGV: owner, data (JSON), ttl ms, replace_only (1/0), id,
-- now ms, max per key, key prefix. Returns 1 when written; 0 when another key holds the id or,
-- replace_only, nothing holds it (deleted or expired while it ran).
local cur = redis.call('HGET', KEYS[1], 'owner')
if cur and cur ~= ARGV[1] then return 0 end
if not cur then
  if ARGV[4] == '1' then return 0 end
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
  local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[7])
  if over > 0 then
    -- The key's own oldest go first.
    local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
    for _, id in ipairs(old) do
      redis.call('DEL', ARGV[8] .. 'resp:' .. id)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  end
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
