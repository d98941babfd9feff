-- release.lua: gives back the units check_all.lua reserved, for a request another call refused.
--
-- A Redis Cluster runs a script on one slot only, so the cluster store
-- decides a request whose keys span slots with one check_all call per slot.
-- If any of them refused the request (or failed), the others have consumed
-- units the request will not use: this script gives them back. Assembled by
-- lib.rs like check_all.lua: the algorithms, checks.lua, then this.
--
-- Whose clock: Redis's own `TIME`, read once. A gcra check gives back what
-- it still holds at that instant: its cost less what has drained since it
-- was reserved (see gcra.lua).
--
-- KEYS  the checks' keys in order, as checks.lua describes
-- ARGV  five per check (checks.lua): algorithm, window, limit, cost, and
--       token: the token check_all.lua answered for that check
--
-- Reply: flat, five integers per check, in order, each as check_all.lua
--   reports a check given back: 1, remaining, reset_after_us, 0, 0, where
--   remaining and reset_after_us are what its key holds without it (a
--   peek's, at the same instant). Checks are released newest first, as
--   check_all.lua does, so a key named twice reports each check without itself.
--
-- A token that matches nothing (the units left the window, the key
-- expired) gives back nothing. Each token is released once: a second
-- release would take off units that are someone else's.

local checks, problem = read_checks('release', 'token', function()
  return true
end)
if not checks then
  return redis.error_reply(problem)
end

local time = redis.call('TIME')
local clock = tonumber(time[1]) * 1000000 + tonumber(time[2])

local replies = {}
for index = #checks, 1, -1 do
  local check = checks[index]
  check.algorithm.release(check.keys, check.window, check.limit, check.cost, check.last, clock)
  replies[index] = as_released(check, clock)
end

local reply = {}
for _, released in ipairs(replies) do
  for _, value in ipairs(released) do
    reply[#reply + 1] = value
  end
  reply[#reply + 1] = 0
end
return reply
