-- heartbeat.lua: a replica says it is alive and learns how many replicas share this Redis.
--
-- Whose clock: Redis's own `TIME`, so replicas' clocks never decide who is live.
--
-- KEYS[1]  a sorted set of replicas: member = replica id, score = the time of
--          its last heartbeat in microseconds. One key with a hash tag
--          (`<prefix>{replicas}`), so it lives in one slot on a cluster.
-- ARGV[1]  this replica's id
-- ARGV[2]  stale_after in microseconds (>= 1000): a replica not heard from
--          for this long no longer counts
--
-- Reply: the number of live replicas, this one included (>= 1).
--
-- Example (stale_after 3 s): replicas a and b beat at t = 0, a again at
--   t = 2.5 s; c beats at t = 4 s -> b is removed (last seen 4 s ago), the
--   reply is 2 (a and c).
--
-- The key expires stale_after after the last heartbeat of any replica, so a
-- stopped fleet leaves nothing behind.
if #KEYS ~= 1 or #ARGV ~= 2 then
  return redis.error_reply('ERR heartbeat: expected 1 key and 2 arguments')
end
local replica = ARGV[1]
local stale_after = tonumber(ARGV[2])
if replica == '' or not stale_after or stale_after < 1000 then
  return redis.error_reply('ERR heartbeat: invalid replica id or stale_after')
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

redis.call('ZADD', KEYS[1], now, replica)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - stale_after))
redis.call('PEXPIRE', KEYS[1], math.ceil(stale_after / 1000))
return redis.call('ZCARD', KEYS[1])
