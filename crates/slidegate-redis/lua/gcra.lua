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
-- KEYS[1]  a hash: l = level in units, t = time of that level in microseconds,
--          n and w = the limit and window the level drains at (hashes written
--          by earlier versions have no n/w: they drain at the check's own)
-- ARGV[1]  window in microseconds (>= 1000)
-- ARGV[2]  limit (>= 1)
-- ARGV[3]  cost (0..limit); 0 is a peek, judged as cost 1, consuming nothing
--
-- Reply: { allowed (1|0), remaining, reset_after_us, retry_after_us }, all >= 0
--
-- Example (limit 10, window 10 s, so one unit drains per second): a burst of
--   10 at t = 0 fills the bucket. At t = 2.5 s the level is 7.5: a check of
--   cost 3 is denied with retry_after 0.5 s (7.5 + 3 > 10); a check of cost 2
--   is admitted, leaving level 9.5 and remaining 0.
--
-- A changed limit or window (an admin lowered it, a tenant's override went):
-- the time since the hash was written drains at the rate it was written
-- with, and from this check on at the new one; the check persists the level
-- with the new rate, even when it is denied or a peek. A bucket holding more
-- than a lowered limit is denied like a full one (remaining 0) until it has
-- drained to limit - cost at the new rate; a raised limit admits at once.
-- So the hash always expires exactly when the bucket it holds is empty at
-- the rate it holds, and an expired hash never forgets a level that a
-- later check would still count. (Draining the whole gap at the new rate
-- instead would need the hash to outlive its own rate, for a change the
-- script cannot foresee.)
--
-- The clock going back drains nothing rather than admit on borrowed time.
--
-- Giving units back (release, for a request of several checks that another
-- check refused: check_all.lua, release.lua): a check's token is the instant
-- its units were added. The bucket has drained since, and what drained is
-- counted as the check's own first: at `now` it still holds
-- ours = cost - (now - token) * n / w of them (n, w: the rate the hash drains
-- at). If that is more than 0, the level is drained to now and ours taken
-- off it (never below 0), stored at that instant with the rate unchanged.
-- Within one instant (one script) that is exactly `cost`; never more than
-- the check still holds, so a release never admits on units that already left.
--
-- This file is the single-check script whole, and the algorithm's one
-- definition: the table `gcra` (reserve, release) above the line
-- "-- Single check." is also part of check_all.lua's and release.lua's
-- scripts, which lib.rs assembles from it; below that line is this script's
-- own call of it.

local gcra = { keys = 1 }

do
  -- Decides a check of `cost` units at `now` (Redis TIME, microseconds)
  -- against keys = { hash }, and adds the units if admitted. Returns the
  -- reply above and the token release needs: `now`.
  function gcra.reserve(keys, window, limit, cost, now)
    local hash = keys[1]
    local state = redis.call('HMGET', hash, 'l', 't', 'n', 'w')
    local level = tonumber(state[1]) or 0
    local at = tonumber(state[2]) or now
    local drain_limit = tonumber(state[3]) or limit
    local drain_window = tonumber(state[4]) or window
    local elapsed = now - at
    if elapsed < 0 then
      elapsed = 0
    end
    level = level - elapsed * drain_limit / drain_window
    if level < 0 then level = 0 end
    -- A hash holding another rate is rewritten at this check's rate, whatever the decision.
    local rate_changed = state[1] and (drain_limit ~= limit or drain_window ~= window)

    -- Writes the level at now at this check's rate; the hash expires when it is empty.
    local function store()
      redis.call('HSET', hash, 'l', level, 't', now, 'n', limit, 'w', window)
      redis.call('PEXPIRE', hash, math.ceil(math.ceil(level * window / limit) / 1000))
    end

    local need = cost
    if need == 0 then need = 1 end

    if level + need > limit then
      local retry_after = math.ceil((level + need - limit) * window / limit)
      if retry_after < 1 then retry_after = 1 end
      local remaining = math.floor(limit - level)
      if remaining < 0 then remaining = 0 end
      if rate_changed then store() end
      return { 0, remaining, math.ceil(level * window / limit), retry_after }, now
    end

    if cost > 0 or rate_changed then
      level = level + cost
      store()
    end
    return { 1, math.floor(limit - level), math.ceil(level * window / limit), 0 }, now
  end

  -- Gives back, at `now`, `cost` units that reserve added at `token` (see
  -- "Giving units back" above). A hash without a rate (written by an
  -- earlier version) drains at the check's own, as in reserve.
  function gcra.release(keys, window, limit, cost, token, now)
    local hash = keys[1]
    local state = redis.call('HMGET', hash, 'l', 't', 'n', 'w')
    if not state[1] then
      -- An empty bucket (the hash expired): nothing left to give back.
      return
    end
    local stored_at = tonumber(state[2]) or now
    local drain_limit = tonumber(state[3]) or limit
    local drain_window = tonumber(state[4]) or window
    local rate = drain_limit / drain_window
    local since = now - token
    if since < 0 then
      since = 0
    end
    local ours = cost - since * rate
    if ours <= 0 then
      return
    end
    local at = math.max(now, stored_at)
    local level = tonumber(state[1]) - (at - stored_at) * rate - ours
    if level < 0 then level = 0 end
    redis.call('HSET', hash, 'l', level, 't', at)
    redis.call('PEXPIRE', hash, math.ceil(math.ceil(level * drain_window / drain_limit) / 1000))
  end
end

-- Single check.
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
local reply = gcra.reserve(KEYS, window, limit, cost, now)
return reply
