-- wrk script for tests/load/memory_bench.sh: POST /v1/check, every request a
-- key never sent before, until this thread has sent its share.
--
-- Arguments (after `--`): policy name, keys per thread. Thread t sends
-- {"policy":"<policy>","key":"k<t>-<n>"} for n = 1, 2, … and stops itself
-- (wrk.thread:stop()) once it has its share of answers, so the replica ends
-- up holding exactly threads x share keys. done() prints
-- "RESULT sent=<n> ok=<n> other=<n>".

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

local policy = "bench"
local share = 1000
local sent = 0
local answered = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  policy = args[1] or policy
  share = tonumber(args[2]) or share
  ok = 0
  other = 0
end

function request()
  sent = sent + 1
  if sent > share then
    -- Requests wrk asks for past the share (connections still open) repeat
    -- a key already held: they add nothing to the store.
    sent = share
  end
  return wrk.format("POST", "/v1/check", headers,
    string.format('{"policy":"%s","key":"k%d-%d"}', policy, id, sent))
end

function response(status)
  answered = answered + 1
  if status == 200 or status == 429 then
    ok = ok + 1
  else
    other = other + 1
  end
  if answered >= share then
    wrk.thread:stop()
  end
end

function done()
  local total_ok, total_other = 0, 0
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_other = total_other + thread:get("other")
  end
  io.write(string.format("RESULT ok=%d other=%d\n", total_ok, total_other))
end
