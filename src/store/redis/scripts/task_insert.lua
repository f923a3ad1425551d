-- A new task, within its key's quota and the store's bound, exactly across replicas.
-- KEYS: task, owner index, all tasks; ARGV: json, id, created (ms), max per key, max in all,
-- prefix, index ttl (ms). A key at its quota drops its oldest finished task (index entries of
-- expired tasks go first); with none finished: QUOTA. A full store drops expired entries only;
-- with none: FULL.
local json, id, created = ARGV[1], ARGV[2], ARGV[3]
local max_per_key, max_total = tonumber(ARGV[4]), tonumber(ARGV[5])
local prefix, index_ttl = ARGV[6], ARGV[7]
local mine, all = KEYS[2], KEYS[3]
local final = {completed = true, failed = true, cancelled = true}

-- Drops the oldest entry of idx whose task expired (or, finished_too, finished); looks at no
-- more than `most` entries. True when one went.
local function drop_one(idx, finished_too, most)
  local start = 0
  while start < most do
    local ids = redis.call('ZRANGE', idx, start, start + 15)
    if #ids == 0 then return false end
    for _, tid in ipairs(ids) do
      local key = prefix .. 'task:' .. tid
      local raw = redis.call('GET', key)
      local gone = not raw
      if not gone and finished_too then
        local ok, t = pcall(cjson.decode, raw)
        gone = ok and final[t.status] == true
      end
      if gone then
        redis.call('DEL', key)
        redis.call('ZREM', mine, tid)
        redis.call('ZREM', all, tid)
        return true
      end
    end
    start = start + #ids
  end
  return false
end

while redis.call('ZCARD', mine) >= max_per_key do
  if not drop_one(mine, true, max_per_key + 16) then return redis.error_reply('QUOTA') end
end
while redis.call('ZCARD', all) >= max_total do
  if not drop_one(all, false, 256) then return redis.error_reply('FULL') end
end
-- Every task key expires, from the start: one that never finishes (its replica gone, Redis
-- failing at the end) is not kept forever. Finishing sets the finished task's own TTL.
redis.call('SET', KEYS[1], json, 'PX', index_ttl)
redis.call('ZADD', mine, created, id)
redis.call('PEXPIRE', mine, index_ttl)
redis.call('ZADD', all, created, id)
return 1
