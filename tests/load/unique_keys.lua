-- wrk script for tests/load/memory_bench.sh: POST /v1/check, every request a key never sent before, until a total is reached.
--
-- Arguments (after `--`): policy name, keys per thread. Thread t sends keys
-- "m<t>-0", "m<t>-1", … up to its share, then repeats its last key (already
-- held, so the store grows no further) until the shell stops wrk.

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

local headers = { ["Content-Type"] = "application/json" }

function init(args)
  policy = args[1] or "bench"
  per_thread = tonumber(args[2]) or 1000000
  sent = 0
end

function request()
  local index = sent
  if index >= per_thread then
    index = per_thread - 1
  else
    sent = sent + 1
  end
  local body = string.format('{"policy":"%s","key":"m%d-%d"}', policy, id, index)
  return wrk.format("POST", "/v1/check", headers, body)
end
