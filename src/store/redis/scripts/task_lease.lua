-- Renews this replica's lease on a queue entry, only while the entry is still its own: an entry
-- taken over by another replica (after this one stopped renewing in time) is never taken back.
-- KEYS: the stream; ARGV: group, consumer, entry id, idle (ms) to set: 0 to renew, the lease to
-- hand the entry back (any replica's XAUTOCLAIM takes it at once). 1 when it was ours.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
local entry = pending[1]
if not entry or entry[2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
return 1
