-- acquire: take (or keep) a room's owner lease and return its state (src/store/mod.rs).
-- KEYS: 1 m (meta hash), 2 l (lease), 3 h (history list), 4 k (dedupe hash), 5 z (dedupe zset)
-- ARGV: 1 hub, 2 incarnation, 3 candidate_epoch, 4 room_ttl_ms, 5 live hubs ("0,2,5")
-- Returns {1, fence, epoch, seq, created, entry...} or {0, holder_hub}. Numbers travel as
-- decimal strings: Lua numbers are doubles, and an epoch is a full u64.
local m, l, h, k, z = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local hub, inc, candidate, ttl, live = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

-- Incarnations are decimal u64 strings (above 2^53 as doubles they would compare wrong):
-- compare by length, then lexically (no leading zeros).
local function newer(a, b)
  return #a > #b or (#a == #b and a > b)
end

local fence = nil
local lease = redis.call('GET', l)
if lease then
  local f, holder, holder_inc = string.match(lease, '^(%d+):(%d+):(%d+)$')
  if f and holder == hub and holder_inc == inc then
    fence = f
  elseif f and holder == hub and newer(holder_inc, inc) then
    -- our own newer incarnation holds it: the caller is a zombie of a restarted hub
    return {0, holder}
  elseif f and holder ~= hub and string.find(',' .. live .. ',', ',' .. holder .. ',', 1, true) then
    -- held by another hub the caller sees alive
    return {0, holder}
  end
  -- else: our own older incarnation (we restarted), a dead hub's, or unreadable: take it
end
if not fence then
  fence = string.format('%d', redis.call('HINCRBY', m, 'fence', 1))
  redis.call('SET', l, fence .. ':' .. hub .. ':' .. inc)
end

local created = '0'
if redis.call('HEXISTS', m, 'epoch') == 0 then
  redis.call('DEL', h, k, z)
  redis.call('HSET', m, 'epoch', candidate, 'seq', '0', 'bytes', '0')
  created = '1'
end
for _, key in ipairs(KEYS) do
  redis.call('PEXPIRE', key, ttl)
end

local meta = redis.call('HMGET', m, 'epoch', 'seq')
local reply = {1, fence, meta[1], meta[2], created}
local entries = redis.call('LRANGE', h, 0, -1)
for i = 1, #entries do
  reply[#reply + 1] = entries[i]
end
return reply
