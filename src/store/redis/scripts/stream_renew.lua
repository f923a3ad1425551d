-- Renews the leases of a replica's open streams of one key. KEYS: the key's set; ARGV: lease
-- (ms), ids... Only members still there are renewed (XX): a lapsed one stays gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 1
