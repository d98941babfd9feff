-- gcra.lua: generic cell rate algorithm: `limit` units per `window`, bursts of up to `limit`.
--
-- Whose clock: Redis's own `TIME`, read inside the script.
--
-- Kept in its continuous-state (leaky bucket) form, which admits exactly what
-- GCRA's virtual scheduling admits: the bucket holds `level` units, drains at
-- limit/window units per microsecond, and a check is admitted iff
-- level + cost <= limit. Storing the level (a small number) instead of an
-- absolute theoretical arrival time keeps the arithmetic exact for whole units:
-- `limit` checks at one instant always fit, never `limit + 1`.
--
-- GCRA is exact for its own definition (a rate with a burst), not for a
-- trailing window: after a full burst it admits one more unit every
-- window/limit, so a trailing window can see up to 2*limit - 1 units.
--
-- KEYS[1]  a hash: l = level in units, t = time of that level in microseconds
-- ARGV[1]  window in microseconds (>= 1000)
-- ARGV[2]  limit (>= 1)
-- ARGV[3]  cost (0..limit); 0 is a peek, judged as cost 1, consuming nothing
--
-- Reply: { allowed (1|0), remaining, reset_after_us, retry_after_us }
--
-- Example (limit 10, window 10 s, so one unit drains per second): a burst of
--   10 at t = 0 fills the bucket. At t = 2.5 s the level is 7.5: a check of
--   cost 3 is denied with retry_after 0.5 s (7.5 + 3 > 10); a check of cost 2
--   is admitted, leaving level 9.5 and remaining 0.
--
-- The hash expires when the bucket would be empty.
if #KEYS ~= 1 or #ARGV ~= 3 then
  return redis.error_reply('ERR gcra: expected 1 key and 3 arguments')
end
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
if not window or window < 1000 or not limit or limit < 1 or not cost or cost < 0 or cost > limit then
  return redis.error_reply('ERR gcra: invalid window, limit or cost')
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local state = redis.call('HMGET', KEYS[1], 'l', 't')
local level = tonumber(state[1]) or 0
local at = tonumber(state[2]) or now
local elapsed = now - at
if elapsed < 0 then
  -- The clock went back: drain nothing rather than admit on borrowed time.
  elapsed = 0
end
if elapsed > window then elapsed = window end
level = level - elapsed * limit / window
if level < 0 then level = 0 end

local need = cost
if need == 0 then need = 1 end

if level + need > limit then
  local retry_after = math.ceil((level + need - limit) * window / limit)
  if retry_after < 1 then retry_after = 1 end
  return { 0, math.floor(limit - level), math.ceil(level * window / limit), retry_after }
end

if cost > 0 then
  level = level + cost
  local reset_after = math.ceil(level * window / limit)
  redis.call('HSET', KEYS[1], 'l', level, 't', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(reset_after / 1000))
end
return { 1, math.floor(limit - level), math.ceil(level * window / limit), 0 }
