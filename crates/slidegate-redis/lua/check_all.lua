-- check_all.lua: several checks decided as one request, all or nothing, in one script call.
--
-- Assembled by lib.rs: the algorithms (the part of sliding_log.lua,
-- sliding_window.lua and gcra.lua above their line "-- Single check."),
-- checks.lua, then this. Each algorithm is the same code as its single-check
-- script: reserve(keys, window, limit, cost, clock) decides and consumes,
-- returning the single-check reply and a token; release(keys, window, limit,
-- cost, token, clock) gives the units back.
--
-- Whose clock: Redis's own `TIME`, read once: every check of the request is
-- judged at the same instant.
--
-- KEYS  every check's keys in order, as checks.lua describes. A standalone
--       Redis has no slots, so one call may hold checks of any keys; a Redis
--       Cluster runs a script on one slot only, and the cluster store calls
--       this once per slot (the keys of one check share a hash tag).
-- ARGV  five per check (checks.lua): algorithm, window, limit, cost, and
--       enforced: 1 when a denial refuses the request, 0 for a shadow check
--       (counted when it admits, refusing nothing).
--
-- Reply: flat, five integers per check, in order:
--   allowed (1|0), remaining, reset_after_us, retry_after_us, token
--   token  nonzero only for units this call still holds (the check admitted,
--          cost > 0, the request admitted): what release.lua needs to give
--          them back if the request is refused elsewhere (another slot).
--          0 for a denial, a peek, a check given back. (No token of units
--          held is 0: instants are microseconds since 1970, and a fixed
--          window's index is 0 only for a window longer than that.)
--
-- Semantics: the request is admitted iff every enforced check admits it;
-- then every check that admitted has consumed its cost, and a shadow check
-- that denied has consumed nothing. If an enforced check denies, none
-- consumes anything: each check is reserved in order (so two checks of one
-- key see each other, the second judged after the first), and if any
-- enforced one was denied, every admitted one is released, newest first, at
-- the same instant, and reports what its key holds then (admitted, a peek's
-- remaining and reset_after, retry_after 0). A denied check reports its
-- denial either way. Redis runs one script at a time: no other check sees
-- the units of a refused request.
--
-- Example (A: limit 10, 0 held; B: limit 3, 3 held; both enforced, cost 1):
--   A is reserved (remaining 9), B is denied, A is released:
--   -> {1, 10, 0, 0, 0,  0, 0, <reset>, <retry>, 0}
--
-- A script that fails half-way cannot be undone by Redis: if a reservation
-- raises an error (a key holding what these scripts did not write), the ones
-- before it are released before the error is raised again, so a failed call
-- consumes nothing.

local checks, problem = read_checks('check_all', 'enforced', function(enforced)
  return enforced == 0 or enforced == 1
end)
if not checks then
  return redis.error_reply(problem)
end

local time = redis.call('TIME')
local clock = tonumber(time[1]) * 1000000 + tonumber(time[2])

local replies, tokens = {}, {}
local refused = false
local reserved, failure = pcall(function()
  for index, check in ipairs(checks) do
    replies[index], tokens[index] =
      check.algorithm.reserve(check.keys, check.window, check.limit, check.cost, clock)
    if check.last == 1 and replies[index][1] == 0 then
      refused = true
    end
  end
end)

if refused or not reserved then
  -- Newest first: a key checked twice gets its second check's units back
  -- before its first, and each reports what its key holds without itself.
  for index = #replies, 1, -1 do
    local check = checks[index]
    if replies[index][1] == 1 and check.cost > 0 then
      check.algorithm.release(check.keys, check.window, check.limit, check.cost, tokens[index], clock)
      if reserved then
        replies[index] = as_released(check, clock)
      end
    end
  end
  if not reserved then
    -- As it was raised: Redis reports it as the script's error.
    error(failure, 0)
  end
end

local reply = {}
for index, check in ipairs(checks) do
  local decided = replies[index]
  local token = 0
  if not refused and decided[1] == 1 and check.cost > 0 then
    token = tokens[index]
  end
  for _, value in ipairs(decided) do
    reply[#reply + 1] = value
  end
  reply[#reply + 1] = token
end
return reply
