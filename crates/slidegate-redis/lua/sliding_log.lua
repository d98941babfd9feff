-- sliding_log.lua: exact sliding-window limiter, one sorted-set entry per admission instant, carrying its units.
--
-- Whose clock: Redis's own `TIME`, read inside the script, is the only clock.
-- Every replica therefore judges a key against the same instant, and the
-- check-and-admit below runs atomically because Redis runs one script at a time.
--
-- KEYS[1]  the log (`...:wlog`): a sorted set with one entry per instant at
--          which checks were admitted. Member "<time>:<units>" (microseconds,
--          and the units admitted then, >= 1); score = the key's cumulative
--          units up to and including this entry. Entries are in time order
--          and their scores rise with it, so the units held are
--          newest score - (oldest score - oldest units), and "the entry that
--          holds the n-th unit" is one ZRANGE BYSCORE away. A check costs the
--          same whatever its cost, and a key's memory grows with its admitted
--          checks, not with their units.
-- KEYS[2]  the log of the previous layout (`...:log`: one member per unit,
--          score = admission time), written by replicas of earlier versions
--          during a rolling upgrade. Read, never written: its live units count
--          here too, so an upgrade forgets nothing. Both keys share one hash tag.
-- ARGV[1]  window in microseconds (>= 1000)
-- ARGV[2]  limit, units admitted per trailing window (>= 1)
-- ARGV[3]  cost of this check (0..limit); 0 is a peek: it is judged as a
--          cost of 1 and consumes nothing
--
-- Reply: { allowed (1|0), remaining, reset_after_us, retry_after_us }, all >= 0
--   remaining       units still admissible now, after this check; 0 when the
--                   key holds more than the limit (the limit was lowered)
--   reset_after_us  time until every admitted unit has left the window
--   retry_after_us  time until a check of this cost would be admitted; 0 if allowed
--
-- Semantics: a unit admitted at t counts at time `now` while now - t < window.
-- A check is admitted iff held + cost <= limit, against the limit it carries:
-- a key holding more than a lowered limit is denied like a full key until
-- enough units have left; a raised limit admits it at once.
--
-- Example (limit 3, window 10 s, admissions of cost 1 at t=0, 2 s, 5 s: entries
--   "0:1" score 1, "2000000:1" score 2, "5000000:1" score 3):
--   at now = 9 s, cost 1 -> {0, 0, 6000000, 1000000}: the log must hold at most
--   2 units, so the entry with score >= 3 - 2 (the one at 0) must leave, at 10 s;
--   the log is empty at 15 s. The same with the limit lowered to 1: the entry
--   with score >= 3 (at 5 s) must leave -> {0, 0, 6000000, 6000000}.
--
-- The clock going back (a failover to a server behind in time) never admits on
-- borrowed time: `now` is never earlier than the newest entry, so nothing
-- leaves the window early and entries stay in time order; durations in the
-- reply are measured on Redis's clock, so they include the gap.
--
-- Every write ends with PEXPIRE of the log to the moment its newest entry
-- leaves the window, so an idle key leaves Redis by itself.
--
-- Giving units back (release, for a request of several checks that another
-- check refused: check_all.lua, release.lua): a check's units are logged at
-- one instant, its token; release finds the entry of that instant (from the
-- newest backwards: only the entries admitted since are newer), takes the
-- units off it and off the cumulative score of it and of every later entry,
-- and removes it when none are left. Units whose entry has left the log meanwhile
-- are gone already: nothing to give back. Release only lowers what the key
-- holds, so the expiry the last write set still covers every entry.
--
-- This file is the single-check script whole, and the algorithm's one
-- definition: the table `sliding_log` (reserve, release) above the line
-- "-- Single check." is also the first part of check_all.lua's and
-- release.lua's scripts, which lib.rs assembles from it; below that line is
-- this script's own call of it.

local sliding_log = { keys = 2 }

do
  -- An entry of `log` at `rank` (0 = oldest, -1 = newest): time, units, score, member; nil past the end.
  local function entry(log, rank)
    local reply = redis.call('ZRANGE', log, rank, rank, 'WITHSCORES')
    if not reply[1] then
      return nil
    end
    local at, units = string.match(reply[1], '^(%d+):(%d+)$')
    if not at then
      error('sliding_log: the log holds an entry this script did not write')
    end
    return tonumber(at), tonumber(units), tonumber(reply[2]), reply[1]
  end

  -- Decides a check of `cost` units at `clock` (Redis TIME, microseconds)
  -- against keys = { log, previous layout's log }, and logs the units if
  -- admitted. Returns the reply above and the token release needs: the
  -- instant the units were (or would have been) logged at.
  function sliding_log.reserve(keys, window, limit, cost, clock)
    local log, old_log = keys[1], keys[2]
    local newest_at, newest_units, top, newest_member = entry(log, -1)
    local now = clock
    if newest_at and newest_at > now then
      now = newest_at
    end

    -- Entries that have left the window (t + window <= now) are all at the front.
    -- A galloping search over ranks finds how many: a steady stream expires about
    -- one entry per check (one or two ZRANGEs), a long pause many (a few dozen at most).
    local function gone(at)
      return at ~= nil and at + window <= now
    end
    local first_at, first_units, first_score = entry(log, 0)
    if gone(first_at) then
      local left, stays, step = 0, nil, 1
      while not stays do
        if gone(entry(log, left + step)) then
          left = left + step
          step = step * 2
        else
          stays = left + step
        end
      end
      while stays - left > 1 do
        local middle = math.floor((left + stays) / 2)
        if gone(entry(log, middle)) then
          left = middle
        else
          stays = middle
        end
      end
      redis.call('ZREMRANGEBYRANK', log, 0, left)
      first_at, first_units, first_score = entry(log, 0)
    end

    local counted = 0
    if first_at then
      -- The newest entry is still there: it is the last to leave.
      counted = top - (first_score - first_units)
    else
      top = 0
      newest_at = nil
    end
    local legacy = redis.call('ZCOUNT', old_log, string.format('(%d', now - window), '+inf')
    local held = counted + legacy

    -- When the newest unit leaves, as a duration on Redis's clock (0 when nothing is held).
    local function reset_after()
      local last = 0
      if newest_at then
        last = newest_at + window
      end
      if legacy > 0 then
        local newest_legacy = redis.call('ZRANGE', old_log, -1, -1, 'WITHSCORES')
        last = math.max(last, tonumber(newest_legacy[2]) + window)
      end
      if last == 0 then
        return 0
      end
      return last - clock
    end

    local need = cost
    if need == 0 then
      need = 1
    end

    if held + need > limit then
      -- Denied: wait until the window holds at most `limit - need` units.
      local allowance = limit - need
      -- When the log holds at most `units`: when the entry holding unit number
      -- top - units leaves (the first entry scored at or above it).
      local function log_fits(units)
        if counted <= units then
          return now
        end
        local reply = redis.call('ZRANGEBYSCORE', log, top - units, '+inf', 'LIMIT', 0, 1)
        return tonumber(string.match(reply[1], '^(%d+):')) + window
      end
      local fits
      if legacy == 0 then
        fits = log_fits(allowance)
      else
        -- When the previous layout's log holds at most `units`. Its live units
        -- are the ranks after the `left` ones that left (it is never trimmed
        -- here); the last of the oldest `legacy - units` of them must leave.
        local function legacy_fits(units)
          if legacy <= units then
            return now
          end
          local left = redis.call('ZCOUNT', old_log, '-inf', string.format('%d', now - window))
          local rank = left + legacy - units - 1
          local reply = redis.call('ZRANGE', old_log, rank, rank, 'WITHSCORES')
          return tonumber(reply[2]) + window
        end
        local newest_legacy = redis.call('ZRANGE', old_log, -1, -1, 'WITHSCORES')
        if not first_at or tonumber(newest_legacy[2]) <= first_at then
          -- Every old unit leaves before any entry of the log (the usual upgrade:
          -- old replicas wrote first): exact.
          if counted <= allowance then
            fits = legacy_fits(allowance - counted)
          else
            fits = log_fits(allowance)
          end
        else
          -- Old and new units interleave in time (old and new replicas both
          -- admitting): a bound that is never early, since each side alone has
          -- fitted by then.
          fits = math.min(math.max(legacy_fits(0), log_fits(allowance)),
            math.max(log_fits(0), legacy_fits(allowance)))
        end
      end
      local remaining = limit - held
      if remaining < 0 then
        remaining = 0
      end
      return { 0, remaining, reset_after(), fits - clock }, now
    end

    if cost > 0 then
      if newest_at == now then
        -- The same instant as the newest entry (or the clock went back): one entry for both.
        redis.call('ZREM', log, newest_member)
        redis.call('ZADD', log, top + cost, string.format('%d:%d', now, newest_units + cost))
      else
        redis.call('ZADD', log, top + cost, string.format('%d:%d', now, cost))
      end
      newest_at = now
      held = held + cost
      redis.call('PEXPIRE', log, math.ceil((now + window - clock) / 1000))
    end

    return { 1, limit - held, reset_after(), 0 }, now
  end

  -- Gives back `cost` units that reserve logged at instant `token` (see
  -- "Giving units back" above). `window`, `limit` and `clock` are not needed:
  -- the entry and the scores say everything.
  function sliding_log.release(keys, window, limit, cost, token, clock)
    local log = keys[1]
    -- The entries newer than the token's, newest first, as they are passed.
    local later = {}
    local rank = -1
    while true do
      local at, units, score, member = entry(log, rank)
      if not at or at < token then
        -- No entry of that instant: it left the window, or the key expired.
        return
      end
      if at == token then
        local given = math.min(cost, units)
        if given == 0 then
          return
        end
        for _, newer in ipairs(later) do
          redis.call('ZADD', log, 'XX', newer.score - given, newer.member)
        end
        if units > given then
          -- Added before the old member goes: the key never empties here,
          -- so it keeps its expiry.
          redis.call('ZADD', log, score - given, string.format('%d:%d', at, units - given))
        end
        redis.call('ZREM', log, member)
        return
      end
      later[#later + 1] = { score = score, member = member }
      rank = rank - 1
    end
  end
end

-- Single check.
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
local clock = tonumber(time[1]) * 1000000 + tonumber(time[2])
local reply = sliding_log.reserve(KEYS, window, limit, cost, clock)
return reply
