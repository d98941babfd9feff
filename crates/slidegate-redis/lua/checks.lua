-- checks.lua: how check_all.lua and release.lua read their KEYS and ARGV, which they lay out alike.
--
-- Not a script of its own: lib.rs puts it after the algorithms (the tables
-- `sliding_log`, `sliding_window` and `gcra`, from the part of each
-- single-check script above its line "-- Single check.") and before
-- check_all.lua or release.lua.
--
-- KEYS  every check's keys, in the order of the checks; each check takes
--       the keys its algorithm's single-check script takes (sliding_log 2:
--       the log and the previous layout's log; sliding_window 1; gcra 1).
-- ARGV  five per check, in the same order:
--         algorithm  sliding_log | sliding_window | gcra
--         window     microseconds (>= 1000)
--         limit      units per window (>= 1)
--         cost       0..limit (0 is a peek)
--         a fifth that is the script's own (check_all: enforced; release: token)
--
-- Everything is checked before anything is read or written: a call that
-- cannot be done whole is refused whole, with an error naming the check.

-- The algorithms by the name ARGV gives them.
local algorithms = {
  sliding_log = sliding_log,
  sliding_window = sliding_window,
  gcra = gcra,
}

-- A whole number in 0..2^53 (where a double counts exactly), or nil: not
-- "1.5", "-1", "inf" or "nan", which tonumber alone would let through.
local function whole(argument)
  local number = tonumber(argument)
  if number and number >= 0 and number <= 9007199254740992 and number == math.floor(number) then
    return number
  end
  return nil
end

-- The checks of this call: { algorithm, keys, window, limit, cost, last }
-- each, `last` the fifth argument, named `last_name` and accepted when
-- `last_valid(number)` holds. Or nil and the error reply's text.
local function read_checks(script, last_name, last_valid)
  if #ARGV == 0 or #ARGV % 5 ~= 0 then
    return nil, string.format(
      'ERR %s: expected 5 arguments per check (algorithm, window, limit, cost, %s), got %d arguments',
      script, last_name, #ARGV)
  end
  local checks = {}
  local next_key = 1
  for index = 1, #ARGV / 5 do
    local base = (index - 1) * 5
    local algorithm = algorithms[ARGV[base + 1]]
    if not algorithm then
      return nil, string.format(
        'ERR %s: check %d: unknown algorithm (expected sliding_log, sliding_window or gcra)',
        script, index)
    end
    local window = whole(ARGV[base + 2])
    local limit = whole(ARGV[base + 3])
    local cost = whole(ARGV[base + 4])
    if not window or window < 1000 or not limit or limit < 1 or not cost or cost > limit then
      return nil, string.format('ERR %s: check %d: invalid window, limit or cost', script, index)
    end
    local last = whole(ARGV[base + 5])
    if not last or not last_valid(last) then
      return nil, string.format('ERR %s: check %d: invalid %s', script, index, last_name)
    end
    local keys = {}
    for slot = 1, algorithm.keys do
      keys[slot] = KEYS[next_key]
      next_key = next_key + 1
    end
    checks[index] = {
      algorithm = algorithm,
      keys = keys,
      window = window,
      limit = limit,
      cost = cost,
      last = last,
    }
  end
  if #KEYS ~= next_key - 1 then
    return nil, string.format('ERR %s: these checks take %d keys, got %d',
      script, next_key - 1, #KEYS)
  end
  return checks
end

-- What a check reports when its units were given back (or it held none):
-- admitted, with what its key holds now, judged as a peek. A peek of a
-- full key is judged as one unit and would say "denied"; the check itself
-- was admitted, so it says allowed, nothing to wait for.
local function as_released(check, clock)
  local peek = check.algorithm.reserve(check.keys, check.window, check.limit, 0, clock)
  return { 1, peek[2], peek[3], 0 }
end
