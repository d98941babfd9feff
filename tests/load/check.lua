-- wrk script for tests/load/check_bench.sh: POST /v1/check with a random key per request.
--
-- Arguments (after `--` on the wrk command line): policy name, key space and
-- optionally a pause in milliseconds that each connection waits between a
-- reply and its next request (wrk's delay()), which caps the offered rate at
-- about connections * 1000 / pause per second; without it wrk saturates.
-- Each request is {"policy":"<policy>","key":"user-<n>"} with n uniform in
-- [0, key space), sent with Content-Type: application/json.
--
-- Status accounting: 200 (admitted) and 429 (denied) are both decisions; any
-- other status is an error. wrk's own summary.errors.status counts every
-- status >= 400, 429 included, so it is not used. done() prints one line,
-- "RESULT k=v ...", that the shell script parses; latencies are microseconds.

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

local policy = "bench"
local key_space = 100000
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  policy = args[1] or policy
  key_space = tonumber(args[2]) or key_space
  local pause_ms = tonumber(args[3]) or 0
  if pause_ms > 0 then
    -- wrk looks for delay() after init(), so defining it here switches it on.
    delay = function()
      return pause_ms
    end
  end
  -- Per-thread seed: threads must not replay the same key sequence.
  math.randomseed(os.time() * 1000 + id)
  ok = 0
  denied = 0
  other = 0
  other_statuses = {}
end

function request()
  local body = string.format('{"policy":"%s","key":"user-%d"}', policy, math.random(0, key_space - 1))
  return wrk.format("POST", "/v1/check", headers, body)
end

function response(status, _headers, _body)
  if status == 200 then
    ok = ok + 1
  elseif status == 429 then
    denied = denied + 1
  else
    other = other + 1
    other_statuses[status] = (other_statuses[status] or 0) + 1
  end
end

function done(summary, latency, _requests)
  local total_ok, total_denied, total_other = 0, 0, 0
  local statuses = {}
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_denied = total_denied + thread:get("denied")
    total_other = total_other + thread:get("other")
    for status, count in pairs(thread:get("other_statuses")) do
      statuses[status] = (statuses[status] or 0) + count
    end
  end
  local shown = {}
  for status, count in pairs(statuses) do
    table.insert(shown, string.format("%s:%d", tostring(status), count))
  end
  local errors = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d ok=%d denied=%d other_status=%d" ..
    " connect=%d read=%d write=%d timeout=%d" ..
    " p50_us=%d p95_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f statuses=%s\n",
    summary.requests, summary.duration, total_ok, total_denied, total_other,
    errors.connect, errors.read, errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    #shown > 0 and table.concat(shown, ",") or "-"))
end
