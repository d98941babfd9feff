-- sliding_log.lua: exact sliding-window limiter, one sorted-set member per admitted unit.
--
-- Whose clock: Redis's own `TIME`, read inside the script, is the only clock.
-- Every replica therefore judges a key against the same instant, and the
-- check-and-admit below runs atomically because Redis runs one script at a time.
--
-- KEYS[1]  the log: a sorted set, score = admission time in microseconds,
--          one member per admitted unit ("<time>:<seq>").
-- KEYS[2]  the sequence counter that keeps members unique when two admissions
--          share a microsecond. Both keys share one hash tag, so one slot.
-- ARGV[1]  window in microseconds (>= 1000)
-- ARGV[2]  limit, units admitted per trailing window (>= 1)
-- ARGV[3]  cost of this check (0..limit); 0 is a peek: it is judged as a
--          cost of 1 and consumes nothing
--
-- Reply: { allowed (1|0), remaining, reset_after_us, retry_after_us }
--   remaining       units still admissible now, after this check
--   reset_after_us  time until every admitted unit has left the window
--   retry_after_us  time until a check of this cost would be admitted; 0 if allowed
--
-- Semantics: a unit admitted at time t counts at time `now` while
-- now - t < window. A check is admitted iff counted + cost <= limit.
--
-- Example (limit 3, window 10 s, three earlier admissions at t=0, 2 s, 5 s):
--   at now = 9 s, cost 1 -> {0, 0, 6000000, 1000000}: denied until the unit
--   admitted at 0 leaves the window at 10 s; the log is full until 15 s.
--
-- Every write ends with PEXPIRE of both keys to the newest unit's end of
-- window, so an idle key leaves Redis by itself.
if #KEYS ~= 2 or #ARGV ~= 3 then
  return redis.error_reply('ERR sliding_log: expected 2 keys and 3 arguments')
end
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
if not window or window < 1000 or not limit or limit < 1 or not cost or cost < 0 or cost > limit then
  return redis.error_reply('ERR sliding_log: invalid window, limit or cost')
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local counted = redis.call('ZCARD', KEYS[1])
local need = cost
if need == 0 then need = 1 end

if counted + need > limit then
  -- Denied: wait until enough of the oldest units leave the window. The unit at
  -- index `counted - (limit - need) - 1` (oldest first) is the last one that must go.
  local index = counted - (limit - need) - 1
  local oldest = redis.call('ZRANGE', KEYS[1], index, index, 'WITHSCORES')
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local retry_after = tonumber(oldest[2]) + window - now
  local reset_after = tonumber(newest[2]) + window - now
  return { 0, limit - counted, reset_after, retry_after }
end

if cost > 0 then
  local last = redis.call('INCRBY', KEYS[2], cost)
  -- ZADD in batches: unpack() of a huge table overflows Lua's C stack.
  local batch = {}
  for seq = last - cost + 1, last do
    batch[#batch + 1] = now
    batch[#batch + 1] = string.format('%d:%d', now, seq)
    if #batch >= 1000 then
      redis.call('ZADD', KEYS[1], unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then
    redis.call('ZADD', KEYS[1], unpack(batch))
  end
  counted = counted + cost
  local ttl_ms = math.ceil(window / 1000)
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
end

local reset_after = 0
if counted > 0 then
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  reset_after = tonumber(newest[2]) + window - now
end
return { 1, limit - counted, reset_after, 0 }
