-- A compare-and-set of a task's status. KEYS: task; ARGV: to, has_result, result,
-- completed_at ('' if not final), ttl, tool calls (JSON text, '' for none), run id ('' for
-- none), from...
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local t = cjson.decode(raw)
local ok = false
for i = 8, #ARGV do if t.status == ARGV[i] then ok = true end end
if not ok then return false end
t.status = ARGV[1]
if ARGV[2] == '1' then t.result = ARGV[3] end
if ARGV[6] ~= '' then t.tool_calls = ARGV[6] end
if ARGV[7] ~= '' then t.run_id = ARGV[7] end
local out
if ARGV[4] ~= '' then
  t.completed_at = ARGV[4]
  out = cjson.encode(t)
  redis.call('SET', KEYS[1], out, 'PX', ARGV[5])
else
  out = cjson.encode(t)
  redis.call('SET', KEYS[1], out, 'KEEPTTL')
end
return out
