-- Deletes a stored response of ARGV[1] (owner). KEYS[1] resp:{id}, KEYS[2] owner:{owner}:resps;
-- ARGV[2] the id. Returns 1 when deleted.
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
