-- publish: sequence one message of a room under the caller's lease (src/store/mod.rs).
-- KEYS: 1 m (meta hash), 2 l (lease), 3 h (history list), 4 k (dedupe hash), 5 z (dedupe zset)
-- ARGV: 1 hub, 2 incarnation, 3 fence, 4 expected_epoch ("" = none), 5 acked_seq,
--       6 candidate_epoch, 7 sender, 8 key ("" = none), 9 ts_micros, 10 blob,
--       11 history_messages, 12 history_bytes, 13 dedupe_keys, 14 dedupe_micros, 15 room_ttl_ms
-- Returns {"OK", seq, epoch} | {"DUP", seq, epoch} | {"RESET", seq, epoch, fence}
--       | {"FENCED", holder_hub or "-1"}; numbers as decimal strings.
local m, l, h, k, z = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local hub, inc, fence = ARGV[1], ARGV[2], ARGV[3]
local expected, acked, candidate = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local sender, key, ts, blob = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local max_messages, max_bytes = tonumber(ARGV[11]), tonumber(ARGV[12])
local max_keys, key_micros, ttl = tonumber(ARGV[13]), tonumber(ARGV[14]), ARGV[15]

-- 1. Fencing: only the lease holder (this fence, hub and incarnation) sequences.
local lease = redis.call('GET', l)
local meta = redis.call('HMGET', m, 'epoch', 'seq', 'bytes')
local epoch = meta[1]
if lease ~= fence .. ':' .. hub .. ':' .. inc then
  if (not lease) and (not epoch) then
    -- Redis lost the room entirely (restarted empty, flushed): the caller was its owner, so it
    -- takes a fresh lease and starts a new epoch below.
    fence = string.format('%d', redis.call('HINCRBY', m, 'fence', 1))
    redis.call('SET', l, fence .. ':' .. hub .. ':' .. inc)
  else
    local holder = lease and string.match(lease, '^%d+:(%d+):%d+$')
    return {'FENCED', holder or '-1'}
  end
end

-- 2. Lost state: no epoch, another epoch than the caller's, or acknowledged seqs rolled back
-- (e.g. appendfsync everysec after a crash). Never reuse a seq under the same epoch.
local seq = tonumber(meta[2] or '0')
local bytes = tonumber(meta[3] or '0')
local reset = false
if (not epoch) or (expected ~= '' and epoch ~= expected) or seq < acked then
  redis.call('DEL', h, k, z)
  redis.call('HSET', m, 'epoch', candidate, 'seq', '0', 'bytes', '0')
  epoch = candidate
  seq = 0
  bytes = 0
  reset = true
end

-- 3. Dedupe: forget keys older than the window, then answer a known key with its first seq.
local member = sender .. '\0' .. key
if max_keys > 0 then
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. string.format('%d', ts - key_micros))
  for i = 1, #old do
    redis.call('HDEL', k, old[i])
  end
  if #old > 0 then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. string.format('%d', ts - key_micros))
  end
  if key ~= '' then
    local first = redis.call('HGET', k, member)
    if first then
      return {'DUP', first, epoch}
    end
  end
end

-- 4. Sequence, append, trim history by count and bytes (always keeping the newest).
seq = string.format('%d', seq + 1)
local entry = seq .. '\n' .. blob
local len = redis.call('RPUSH', h, entry)
bytes = bytes + #entry
local fresh = len == 1 -- the history list was just created: it has no TTL yet
while len > 1 and (len > max_messages or bytes > max_bytes) do
  local dropped = redis.call('LPOP', h)
  if not dropped then
    break
  end
  bytes = bytes - #dropped
  len = len - 1
end
redis.call('HSET', m, 'seq', seq, 'bytes', string.format('%d', bytes))

-- 5. Remember the key (bounded by count: the oldest go first).
if key ~= '' and max_keys > 0 then
  redis.call('HSET', k, member, seq)
  redis.call('ZADD', z, string.format('%d', ts), member)
  local count = redis.call('ZCARD', z)
  fresh = fresh or count == 1 -- the dedupe keys were just created
  local extra = count - max_keys
  if extra > 0 then
    local popped = redis.call('ZPOPMIN', z, extra)
    for i = 1, #popped, 2 do
      redis.call('HDEL', k, popped[i])
    end
  end
end

-- 6. Expiry: every room key lives room_ttl_ms past its last use. Refreshed when a key was just
-- created or the meta hash has less than half its TTL left (one PTTL per publish, not five
-- PEXPIREs: the room's keys are written together, so they expire together within ttl/2).
local left = redis.call('PTTL', m)
if fresh or reset or left < tonumber(ttl) / 2 then
  for _, name in ipairs(KEYS) do
    redis.call('PEXPIRE', name, ttl)
  end
end
if reset then
  return {'RESET', seq, epoch, fence}
end
return {'OK', seq, epoch}
