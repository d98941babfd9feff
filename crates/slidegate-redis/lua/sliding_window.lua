-- sliding_window.lua: the two-counter approximation of a sliding window (O(1) per key).
--
-- Whose clock: Redis's own `TIME`, read inside the script, so every replica
-- uses the same instant and the same fixed-window boundaries.
--
-- Time is cut into fixed windows of `window` microseconds aligned to the Unix
-- epoch. The count in the trailing window is estimated as
--     previous * (window - elapsed) / window + current
-- i.e. the previous window's count is assumed to be spread evenly over it.
-- A check is admitted iff estimate + cost <= limit. With even traffic the
-- estimate is close to exact; a burst packed at the end of one window and
-- traffic that continues through the next can let up to ~2x the limit through
-- a trailing window (see docs/algorithms.md).
--
-- KEYS[1]  a hash: w = index of the current fixed window, c = its count,
--          p = the previous window's count
-- ARGV[1]  window in microseconds (>= 1000)
-- ARGV[2]  limit (>= 1)
-- ARGV[3]  cost (0..limit); 0 is a peek, judged as cost 1, consuming nothing
--
-- Reply: { allowed (1|0), remaining, reset_after_us, retry_after_us }
--
-- Example (limit 10, window 60 s): p = 8, c = 3, 15 s into the current window:
--   estimate = 8 * 45/60 + 3 = 9, so a check of cost 1 is admitted (c = 4) and
--   remaining = floor(10 - 10) = 0.
--
-- A key whose counts exceed a lowered limit is denied like a full one
-- (remaining 0) until the estimate has fallen to limit - cost: later in this
-- window as the previous count fades, or in the next one; a raised limit
-- admits at once.
--
-- The hash expires at the end of the window after the current one, when its
-- counts no longer weigh on any estimate. If the clock went back behind the
-- stored window, the script stays in that window (see below) and every
-- duration in the reply, and the expiry, is measured on Redis's clock: they
-- include the gap (`lead`), so the hash never expires while its counts would
-- still weigh.
--
-- Giving units back (release, for a request of several checks that another
-- check refused: check_all.lua, release.lua): a check's token is the index of
-- the fixed window it was counted in. Release takes its units off `c` while
-- that window is current, off `p` in the window after (where they became the
-- previous count); later they no longer weigh, and there is nothing to give
-- back. It only lowers counts, so the hash keeps the expiry it has.
--
-- This file is the single-check script whole, and the algorithm's one
-- definition: the table `sliding_window` (reserve, release) above the line
-- "-- Single check." is also part of check_all.lua's and release.lua's
-- scripts, which lib.rs assembles from it; below that line is this script's
-- own call of it.

local sliding_window = { keys = 1 }

do
  -- Decides a check of `cost` units at `now` (Redis TIME, microseconds)
  -- against keys = { hash }, and counts the units if admitted. Returns the
  -- reply above and the token release needs: the index of the fixed window
  -- judged.
  function sliding_window.reserve(keys, window, limit, cost, now)
    local hash = keys[1]
    local index = math.floor(now / window)
    if index * window > now then
      -- A double quotient can round up across a boundary; integer maths cannot.
      index = index - 1
    end
    local elapsed = now - index * window
    local state = redis.call('HMGET', hash, 'w', 'c', 'p')
    local stored = tonumber(state[1])
    local current = 0
    local previous = 0
    -- How far the window judged is ahead of Redis's clock; 0 unless the clock went back.
    local lead = 0
    if stored == index then
      current = tonumber(state[2]) or 0
      previous = tonumber(state[3]) or 0
    elseif stored == index - 1 then
      previous = tonumber(state[2]) or 0
    elseif stored and stored > index then
      -- The clock went back (e.g. failover to a server behind in time): stay in the
      -- stored window and weigh the previous count fully, which never admits more.
      lead = stored * window - now
      index = stored
      elapsed = 0
      current = tonumber(state[2]) or 0
      previous = tonumber(state[3]) or 0
    end

    local weight = (window - elapsed) / window

    -- Until the counts no longer weigh: the end of the next window while this one
    -- has a count, of this window while only the previous one has.
    local function reset_after()
      if current > 0 then
        return 2 * window - elapsed + lead
      elseif previous > 0 then
        return window - elapsed + lead
      end
      return 0
    end

    local need = cost
    if need == 0 then need = 1 end

    if previous * weight + current + need > limit then
      local retry_after
      if previous > 0 and current + need <= limit then
        -- Fits later in this window, once the previous count has faded enough.
        local at = window - (limit - current - need) * window / previous
        retry_after = math.ceil(at - elapsed)
      else
        -- Fits only in the next window, where today's count becomes the previous one.
        local at = 0
        if current > 0 then
          at = window - (limit - need) * window / current
          if at < 0 then at = 0 end
        end
        retry_after = math.ceil(window - elapsed + at)
      end
      if retry_after < 1 then retry_after = 1 end
      local remaining = math.floor(limit - (previous * weight + current))
      if remaining < 0 then remaining = 0 end
      return { 0, remaining, reset_after(), retry_after + lead }, index
    end

    if cost > 0 then
      current = current + cost
      redis.call('HSET', hash, 'w', index, 'c', current, 'p', previous)
      redis.call('PEXPIRE', hash, math.ceil((2 * window - elapsed + lead) / 1000))
    end

    local remaining = math.floor(limit - (previous * weight + current))
    if remaining < 0 then remaining = 0 end
    return { 1, remaining, reset_after(), 0 }, index
  end

  -- Gives back `cost` units that reserve counted in fixed window `token`
  -- (see "Giving units back" above).
  function sliding_window.release(keys, window, limit, cost, token, now)
    local hash = keys[1]
    local state = redis.call('HMGET', hash, 'w', 'c', 'p')
    local stored = tonumber(state[1])
    if stored == token then
      local current = tonumber(state[2]) or 0
      redis.call('HSET', hash, 'c', current - math.min(cost, current))
    elseif stored == token + 1 then
      local previous = tonumber(state[3]) or 0
      redis.call('HSET', hash, 'p', previous - math.min(cost, previous))
    end
  end
end

-- Single check.
if #KEYS ~= 1 or #ARGV ~= 3 then
  return redis.error_reply('ERR sliding_window: expected 1 key and 3 arguments')
end
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
if not window or window < 1000 or not limit or limit < 1 or not cost or cost < 0 or cost > limit then
  return redis.error_reply('ERR sliding_window: invalid window, limit or cost')
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local reply = sliding_window.reserve(KEYS, window, limit, cost, now)
return reply
