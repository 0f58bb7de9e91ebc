-- release: give up a room's lease, only if it is still ours (src/store/mod.rs).
-- KEYS: 1 l (lease); ARGV: 1 "<fence>:<hub>:<incarnation>". Returns 1 if deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
