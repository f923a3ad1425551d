-- The room rules of a new conversation, shared by conv_check.lua and conv_commit.lua.
-- ARGV[1] prefix, ARGV[2] owner, ARGV[3] max per key, ARGV[4] max in all.
local prefix, owner = ARGV[1], ARGV[2]
local max_per_key, max_total = tonumber(ARGV[3]), tonumber(ARGV[4])
local all = prefix .. 'convs'
local owners = prefix .. 'owners'
local function conv(o, id) return prefix .. 'conv:' .. o .. ':' .. id end
local function index(o) return prefix .. 'owner:' .. o .. ':convs' end

-- Takes out (or, dry, only finds) the oldest idle conversation of o: one with no turn lease.
-- Index entries of conversations that expired are dropped as they come (that, too, makes
-- room). True when there is room to be had.
local function evict_one(o, dry)
  local idx = index(o)
  local start = 0
  while true do
    local ids = redis.call('ZRANGE', idx, start, start + 15)
    if #ids == 0 then return false end
    for _, id in ipairs(ids) do
      local key = conv(o, id)
      local alive = redis.call('EXISTS', key) == 1
      if not alive or redis.call('EXISTS', key .. ':lock') == 0 then
        if not dry then
          if alive then redis.call('DEL', key, key .. ':msgs') end
          redis.call('ZREM', idx, id)
          redis.call('ZREM', all, o .. ':' .. id)
        end
        return true
      end
    end
    start = start + #ids
  end
end

-- The keys that hold conversations, most first.
local function biggest(dry)
  local list = {}
  for _, o in ipairs(redis.call('SMEMBERS', owners)) do
    local n = redis.call('ZCARD', index(o))
    if n > 0 then
      table.insert(list, {o, n})
    elseif not dry then
      redis.call('SREM', owners, o)
    end
  end
  table.sort(list, function(a, b) return a[2] > b[2] end)
  return list
end

-- nil when a new conversation of `owner` has room (made, unless dry); else why not.
local function room(dry)
  if redis.call('ZCARD', index(owner)) >= max_per_key then
    if dry then
      if not evict_one(owner, true) then return 'QUOTA' end
    else
      while redis.call('ZCARD', index(owner)) >= max_per_key do
        if not evict_one(owner, false) then break end
      end
    end
  end
  while redis.call('ZCARD', all) >= max_total do
    local made = false
    for _, entry in ipairs(biggest(dry)) do
      if evict_one(entry[1], dry) then made = true break end
    end
    if not made then return 'FULL' end
    if dry then return nil end
  end
  return nil
end
