#!/usr/bin/env bash
# Load test of POST /v1/check: one release replica on Redis, driven by wrk,
# compared with the Redis ceiling for the same script measured in the same run.
#
#   tests/load/check_bench.sh                 # 20 s at 150 connections, sliding_log
#   DURATION=60 ALGORITHM=gcra tests/load/check_bench.sh
#
# Steps: build the release binary (a no-op when fresh); install wrk if missing;
# start ONE replica on 127.0.0.1 (free port), Redis store, unique key prefix,
# policies from tests/load/policies.toml; wait for GET /health/ready = 200;
# warm up; drive POST /v1/check with random keys for DURATION seconds; then run
# redis-benchmark EVALSHA of the same Lua script at the same concurrency; print
# a report and write it to target/load-report/. The replica is stopped and the
# run's Redis keys deleted on every exit, including failures and Ctrl-C.
#
# Settings (environment):
#   DURATION=20          seconds of measured load
#   WARMUP=3             seconds of unmeasured load first (opens pooled connections)
#   CONNECTIONS=150      concurrent HTTP connections, and redis-benchmark clients
#   WRK_THREADS=1        wrk threads; see below why 1
#   RATE=                unset: saturate (closed loop, every connection sends as
#                        soon as it has its reply). A number: each connection
#                        pauses CONNECTIONS*1000/RATE ms between requests, which
#                        offers at most ~RATE checks/s — latency at a given load.
#   KEY_SPACE=100000     distinct keys, for wrk and redis-benchmark alike
#                        KEY_SPACE=1 is the hot-key case: one key far over its
#                        limit, every check a denial. Run it with
#                        SLIDEGATE__LIMITER__DENY_CACHE__ENABLED=true and =false
#                        to see what the deny cache saves (docs/benchmarks.md).
#   ALGORITHM=sliding_log | sliding_window | gcra   (policy bench, bench_sliding_window, bench_gcra)
#   REDIS_URL=redis://127.0.0.1:6379   must point at this machine
#   REDIS_REQUESTS=300000   requests of the Redis ceiling run
#   SKIP_BUILD=1         use target/release/slidegate as it is
#   ENFORCE_TARGETS=1    exit 1 when below 70 % of the ceiling or p99 >= 5 ms
# Other SLIDEGATE__* variables (e.g. SLIDEGATE__SERVER__WORKERS,
# SLIDEGATE__REDIS__POOL_SIZE) pass through to the replica.
#
# Why one wrk thread: the machine has two cores, shared by wrk, the replica
# (one actix worker per core) and Redis (one thread). One wrk thread keeps 150
# connections busy with about a third of a core at ~26k checks/s; a second
# one would only take CPU from the replica and Redis and lower what is measured.
#
# Latency without RATE is closed-loop latency under saturation: the mean is
# CONNECTIONS / throughput (Little's law), e.g. 150 / 26k/s = 5.8 ms, and even
# redis-benchmark alone at 150 clients shows a p99 around 5-6 ms here. For
# latency at a given load, set RATE.
#
# Exit status: 0 when the run completed without errors (any status other than
# 200/429, or socket errors); 1 otherwise, or on a target miss with ENFORCE_TARGETS=1.

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/load"

DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-150}
WRK_THREADS=${WRK_THREADS:-1}
KEY_SPACE=${KEY_SPACE:-100000}
ALGORITHM=${ALGORITHM:-sliding_log}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
REDIS_REQUESTS=${REDIS_REQUESTS:-300000}
RATE=${RATE:-}
REPORT_DIR="$ROOT/target/load-report"
READY_DEADLINE_S=30
TARGET_SHARE_PCT=70
TARGET_P99_MS=5

LOG_NAME=check_bench
# shellcheck source=tests/load/lib.sh
source "$HERE/lib.sh"

for value in DURATION WARMUP CONNECTIONS WRK_THREADS KEY_SPACE REDIS_REQUESTS; do
  [[ ${!value} =~ ^[0-9]+$ ]] || die "$value must be a whole number (got ${!value})"
done
((DURATION >= 1 && DURATION <= 600)) || die "DURATION must be 1..600 seconds"
((REDIS_REQUESTS >= 1)) || die "REDIS_REQUESTS must be at least 1: every report compares with the Redis ceiling"
((CONNECTIONS >= WRK_THREADS && WRK_THREADS >= 1)) || die "need 1 <= WRK_THREADS <= CONNECTIONS"
PAUSE_MS=0
LOAD_KIND="saturating (closed loop)"
if [[ -n $RATE ]]; then
  [[ $RATE =~ ^[1-9][0-9]*$ ]] || die "RATE must be a positive whole number (got $RATE)"
  PAUSE_MS=$(((CONNECTIONS * 1000 + RATE - 1) / RATE))
  LOAD_KIND="offered ≤ ~$RATE/s ($PAUSE_MS ms pause per connection between requests)"
fi

case "$ALGORITHM" in
  sliding_log) POLICY=bench ;;
  sliding_window) POLICY=bench_sliding_window ;;
  gcra) POLICY=bench_gcra ;;
  *) die "ALGORITHM must be sliding_log, sliding_window or gcra (got $ALGORITHM)" ;;
esac
# Must match the policy in policies.toml: limit 100 per 1 minute.
WINDOW_US=60000000
LIMIT=100

require_loopback_redis

# --- tools -------------------------------------------------------------------

need_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "$1 needs root to install packages; install wrk by hand"
  fi
}

if ! command -v wrk >/dev/null; then
  log "installing wrk (Debian package)"
  if ! need_root apt-get install -y -qq wrk >/dev/null 2>&1; then
    need_root apt-get update -qq
    need_root apt-get install -y -qq wrk >/dev/null
  fi
fi
for tool in wrk redis-cli redis-benchmark curl cargo; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ $(rcli PING 2>/dev/null) == PONG ]] || die "no Redis answers at $REDIS_HOST (set REDIS_URL)"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet --bin slidegate)
fi
BINARY="$ROOT/target/release/slidegate"
[[ -x $BINARY ]] || die "$BINARY is missing; build it or unset SKIP_BUILD"

# --- state and cleanup ---------------------------------------------------------

RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)-$$"
# Unique per run; no glob characters, so it can be used as a SCAN pattern.
PREFIX="slidegate-load-$RUN_ID:"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/check_bench.XXXXXX")
REPLICA_LOG="$WORK/replica.log"
REPLICA_PID=""



cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_child
  stop_replica
  delete_keys
  if ((status != 0)) && [[ -s $REPLICA_LOG ]]; then
    log "last lines of the replica's log:"
    tail -n 20 "$REPLICA_LOG" >&2 || true
  fi
  rm -rf -- "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# --- CPU accounting (to tell who is the bottleneck) ---------------------------

CLK_TCK=$(getconf CLK_TCK)
REDIS_PID=$(rcli INFO server | tr -d '\r' | sed -n 's/^process_id://p')
# Redis may run in another PID namespace (a container); then its CPU is not shown.
[[ -n $REDIS_PID && -r /proc/$REDIS_PID/stat ]] || REDIS_PID=""

proc_ticks() { # utime + stime of a process, in clock ticks
  if [[ -n ${1:-} && -r /proc/$1/stat ]]; then
    # Fields after the ")" that closes the command name: utime is 12th, stime 13th.
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
  else
    echo 0
  fi
}
machine_ticks() { # "busy total" over all CPUs
  awk '/^cpu / { total = 0; for (i = 2; i <= NF; i++) total += $i; print total - $5 - $6, total }' /proc/stat
}
children_ticks() { # sets CHILD_TICKS: CPU of this script's reaped children (wrk, redis-benchmark)
  # `times` must run in this shell: in $(...) it would report the subshell's own counters.
  times >"$WORK/times"
  CHILD_TICKS=$(tail -n 1 "$WORK/times" | awk -v hz="$CLK_TCK" '{
    total = 0
    for (i = 1; i <= 2; i++) { split($i, part, "m"); sub("s", "", part[2]); total += part[1] * 60 + part[2] }
    printf "%.0f", total * hz
  }')
}
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f", 100 * a / b; else print "n/a" }'; }

# --- the replica -----------------------------------------------------------------

log "starting the replica (Redis store, key prefix $PREFIX, policy $POLICY)"
SLIDEGATE__SERVER__BIND=127.0.0.1:0 \
  SLIDEGATE__SERVER__SHUTDOWN_TIMEOUT=2s \
  SLIDEGATE__REDIS__URL="$REDIS_URL" \
  SLIDEGATE__LIMITER__KEY_PREFIX="$PREFIX" \
  SLIDEGATE__LOG__FORMAT=json \
  "$BINARY" --config "$HERE/policies.toml" >"$REPLICA_LOG" 2>&1 &
REPLICA_PID=$!

# Port 0 lets the OS pick a free port; the replica logs the address it bound.
ADDRESS=""
deadline=$((SECONDS + READY_DEADLINE_S))
ready=""
while ((SECONDS < deadline)); do
  kill -0 "$REPLICA_PID" 2>/dev/null || die "the replica exited during start-up"
  if [[ -z $ADDRESS ]]; then
    ADDRESS=$(grep -so '"address":"127\.0\.0\.1:[0-9]*"' "$REPLICA_LOG" | head -n 1 | cut -d'"' -f4 || true)
  fi
  if [[ -n $ADDRESS ]]; then
    code=$(curl -s -o "$WORK/ready.json" -w '%{http_code}' --max-time 2 "http://$ADDRESS/health/ready" || true)
    if [[ $code == 200 ]]; then
      ready=yes
      break
    fi
  fi
  sleep 0.2
done
[[ -n $ready ]] || die "the replica was not ready within ${READY_DEADLINE_S}s (address: ${ADDRESS:-none logged})"
URL="http://$ADDRESS"
log "replica $REPLICA_PID ready at $URL"

# One check by hand: the policy exists and the store decides.
code=$(curl -s -o "$WORK/probe.json" -w '%{http_code}' --max-time 2 -X POST "$URL/v1/check" \
  -H 'Content-Type: application/json' -d "{\"policy\":\"$POLICY\",\"key\":\"probe\"}" || true)
[[ $code == 200 ]] || die "a probe check answered $code: $(cat "$WORK/probe.json" 2>/dev/null)"

# --- HTTP load -------------------------------------------------------------------

run_wrk() { # seconds, output file
  run_child "$2" timeout $(($1 + 30)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${1}s" --timeout 5s \
    -s "$HERE/check.lua" "$URL" -- "$POLICY" "$KEY_SPACE" "$PAUSE_MS"
}

if ((WARMUP > 0)); then
  log "warm-up: ${WARMUP}s"
  run_wrk "$WARMUP" "$WORK/warmup.txt" || die "wrk failed during warm-up: $(cat "$WORK/warmup.txt")"
fi

log "load: $LOAD_KIND, ${DURATION}s, $CONNECTIONS connections, $WRK_THREADS wrk thread(s), $KEY_SPACE keys, policy $POLICY"
replica_before=$(proc_ticks "$REPLICA_PID")
redis_before=$(proc_ticks "$REDIS_PID")
read -r busy_before total_before < <(machine_ticks)
children_ticks
children_before=$CHILD_TICKS
run_wrk "$DURATION" "$WORK/wrk.txt" || die "wrk failed: $(cat "$WORK/wrk.txt")"
replica_after=$(proc_ticks "$REPLICA_PID")
redis_after=$(proc_ticks "$REDIS_PID")
read -r busy_after total_after < <(machine_ticks)
children_ticks
children_after=$CHILD_TICKS
kill -0 "$REPLICA_PID" 2>/dev/null || die "the replica died under load"

result=$(grep '^RESULT ' "$WORK/wrk.txt" | tail -n 1) || die "wrk printed no RESULT line: $(cat "$WORK/wrk.txt")"
field() { tr ' ' '\n' <<<"$result" | sed -n "s/^$1=//p"; }
requests=$(field requests)
duration_us=$(field duration_us)
ok=$(field ok)
denied=$(field denied)
other_status=$(field other_status)
socket_errors=$(($(field connect) + $(field read) + $(field write) + $(field timeout)))
errors=$((other_status + socket_errors))
decisions=$((ok + denied))
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
p50=$(ms "$(field p50_us)")
p95=$(ms "$(field p95_us)")
p99=$(ms "$(field p99_us)")
p999=$(ms "$(field p999_us)")
max_ms=$(ms "$(field max_us)")
rps=$(awk -v n="$decisions" -v us="$duration_us" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
interval_ticks=$(awk -v us="$duration_us" -v hz="$CLK_TCK" 'BEGIN { print us / 1e6 * hz }')
replica_cpu=$(pct $((replica_after - replica_before)) "$interval_ticks")
redis_cpu=n/a
[[ -z $REDIS_PID ]] || redis_cpu=$(pct $((redis_after - redis_before)) "$interval_ticks")
machine_cpu=$(pct $((busy_after - busy_before)) $((total_after - total_before)))
wrk_cpu=$(pct $((children_after - children_before)) "$interval_ticks")
others_cpu=$(pct $((busy_after - busy_before - (replica_after - replica_before) - (redis_after - redis_before) - (children_after - children_before))) "$interval_ticks")
curl -s --max-time 2 -o "$WORK/ready_after.json" "$URL/health/ready" || true
pool=$(grep -o '"pool":{[^}]*}' "$WORK/ready_after.json" 2>/dev/null | head -n 1 || true)
threads=$(cat /proc/"$REPLICA_PID"/task/*/comm 2>/dev/null | sed 's/[0-9]*$//' | sort | uniq -c |
  sed 's/^ *\([0-9]*\) \(.*\)$/\1 × "\2"/' | paste -sd ',' - | sed 's/,/, /g' || true)

# The replica is no longer needed: stop it so the ceiling run has the CPU to itself.
stop_replica

# --- Redis ceiling ------------------------------------------------------------------

SCRIPT_FILE="$ROOT/crates/slidegate-redis/lua/$ALGORITHM.lua"
load_script() {
  SHA=$(rcli -x SCRIPT LOAD <"$SCRIPT_FILE" | tr -d '\r')
  [[ $SHA =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD of $SCRIPT_FILE answered: $SHA"
}
load_script
grep -q "$SHA" "$WORK/ready.json" || log "warning: the replica reported other script hashes than $SHA"

# redis-benchmark replaces EVERY occurrence of __rand_int__ with its own random
# number (checked with MONITOR: "…{bench:000000014564}:wlog" "…{bench:000000020764}:log"),
# so the service's layout "<prefix>{<policy>:<key>}:wlog" + ":log" would give
# the two keys of one call different hash tags. Here the hash tag is the
# policy and the random part follows it: both keys share one slot, every call
# still hits a random log among KEY_SPACE, and the script does exactly the
# work it does for the service (same commands, same arguments).
CEILING_PREFIX="${PREFIX}ceiling:"
case "$ALGORITHM" in
  sliding_log) KEYS=("${CEILING_PREFIX}{$POLICY}:__rand_int__:wlog" "${CEILING_PREFIX}{$POLICY}:__rand_int__:log") ;;
  sliding_window) KEYS=("${CEILING_PREFIX}{$POLICY}:__rand_int__:sw") ;;
  gcra) KEYS=("${CEILING_PREFIX}{$POLICY}:__rand_int__:gcra") ;;
esac

log "Redis ceiling: redis-benchmark -c $CONNECTIONS -r $KEY_SPACE -n $REDIS_REQUESTS EVALSHA ($ALGORITHM.lua)"
# A shared Redis may see SCRIPT FLUSH from someone else (the API tests do it);
# redis-benchmark then stops at the first NOSCRIPT. Load again and retry.
for attempt in 1 2 3; do
  redis_before=$(proc_ticks "$REDIS_PID")
  read -r busy_before total_before < <(machine_ticks)
  children_ticks
  children_before=$CHILD_TICKS
  started_ns=$(date +%s%N)
  if run_child "$WORK/redis-benchmark.txt" timeout 300 redis-benchmark -u "$REDIS_URL" -c "$CONNECTIONS" \
    -r "$KEY_SPACE" -n "$REDIS_REQUESTS" --csv EVALSHA "$SHA" "${#KEYS[@]}" "${KEYS[@]}" "$WINDOW_US" "$LIMIT" 1; then
    break
  fi
  if ((attempt == 3)) || ! grep -q NOSCRIPT "$WORK/redis-benchmark.txt"; then
    die "redis-benchmark failed: $(tail -c 2000 "$WORK/redis-benchmark.txt")"
  fi
  log "the script left Redis during the ceiling run (someone ran SCRIPT FLUSH); loading it again"
  load_script
done
elapsed_ns=$(($(date +%s%N) - started_ns))
redis_after=$(proc_ticks "$REDIS_PID")
read -r busy_after total_after < <(machine_ticks)
children_ticks
children_after=$CHILD_TICKS
# --csv ends with one row: "test","rps","avg_latency_ms","min_latency_ms",
# "p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms".
row=$(tr '\r' '\n' <"$WORK/redis-benchmark.txt" | grep '^"EVALSHA' | tail -n 1 | tr -d '"') || true
csv() { awk -F, -v from_end="$1" '{ print $(NF - from_end) }' <<<"$row"; }
ceiling=$(csv 6 | awk '{ printf "%.0f", $1 }')
[[ $ceiling =~ ^[0-9]+$ ]] || die "cannot read requests/s from redis-benchmark: $(tail -c 2000 "$WORK/redis-benchmark.txt")"
ceiling_p50=$(csv 3)
ceiling_p95=$(csv 2)
ceiling_p99=$(csv 1)
ceiling_ticks=$(awk -v ns="$elapsed_ns" -v hz="$CLK_TCK" 'BEGIN { print ns / 1e9 * hz }')
redis_cpu_ceiling=n/a
[[ -z $REDIS_PID ]] || redis_cpu_ceiling=$(pct $((redis_after - redis_before)) "$ceiling_ticks")
benchmark_cpu=$(pct $((children_after - children_before)) "$ceiling_ticks")
others_cpu_ceiling=$(pct $((busy_after - busy_before - (redis_after - redis_before) - (children_after - children_before))) "$ceiling_ticks")
# EVALSHA replies with an array; an error reply would still count as a request.
rcli EVALSHA "$SHA" "${#KEYS[@]}" "${KEYS[@]//__rand_int__/check}" "$WINDOW_US" "$LIMIT" 1 >"$WORK/evalsha.txt" 2>&1
if grep -qi 'err' "$WORK/evalsha.txt"; then
  die "EVALSHA with the ceiling's arguments fails: $(cat "$WORK/evalsha.txt")"
fi

share=$(awk -v a="$rps" -v b="$ceiling" 'BEGIN { printf "%.1f", 100 * a / b }')
verdict_share=$(awk -v s="$share" -v t="$TARGET_SHARE_PCT" 'BEGIN { print (s >= t) ? "meets" : "BELOW" }')
verdict_p99=$(awk -v p="$p99" -v t="$TARGET_P99_MS" 'BEGIN { print (p < t) ? "meets" : "ABOVE" }')

# --- report -----------------------------------------------------------------------------

mkdir -p "$REPORT_DIR"
REPORT="$REPORT_DIR/check-$ALGORITHM-$RUN_ID.md"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=""
if git -C "$ROOT" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | grep -q .; then
  dirty=" (+ uncommitted changes in crates/ or Cargo files)"
fi
redis_version=$(rcli INFO server | tr -d '\r' | sed -n 's/^redis_version://p')
{
  echo "# POST /v1/check under load: $ALGORITHM"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit$dirty, $(nproc) cores, Redis $redis_version; one release replica, Redis store."
  echo
  echo "| | |"
  echo "| --- | --- |"
  echo "| load | $LOAD_KIND: wrk -t$WRK_THREADS -c$CONNECTIONS, ${DURATION}s after ${WARMUP}s warm-up, random keys from $KEY_SPACE, policy \`$POLICY\` ($LIMIT per 1m) |"
  echo "| decisions/s | **$rps** ($decisions decisions: $ok admitted, $denied denied; $requests responses in all) |"
  echo "| latency p50 / p95 / p99 | **$p50 / $p95 / $p99 ms** (p99.9 $p999 ms, max $max_ms ms) |"
  echo "| errors | **$errors** ($other_status other statuses [$(field statuses)], $socket_errors socket errors: connect $(field connect), read $(field read), write $(field write), timeout $(field timeout)) |"
  echo "| Redis ceiling | **$ceiling req/s** EVALSHA $ALGORITHM.lua, redis-benchmark -c $CONNECTIONS -r $KEY_SPACE -n $REDIS_REQUESTS (p50 / p95 / p99 $ceiling_p50 / $ceiling_p95 / $ceiling_p99 ms) |"
  echo "| service / ceiling | **$share %** (target ≥ $TARGET_SHARE_PCT %: $verdict_share) |"
  echo "| p99 target | < $TARGET_P99_MS ms: $verdict_p99 |"
  echo "| CPU during load | replica $replica_cpu %, redis-server $redis_cpu %, wrk $wrk_cpu %, other processes $others_cpu %; machine $machine_cpu % busy |"
  echo "| CPU during ceiling | redis-server $redis_cpu_ceiling %, redis-benchmark $benchmark_cpu %, other processes $others_cpu_ceiling % |"
  echo "| replica threads | ${threads:-?} |"
  echo "| replica Redis pool after load | ${pool:-?} |"
  echo
  echo "CPU: per process, % of one core (both cores = 200 %); \"machine busy\" is % of all cores."
  echo "\"Other processes\" well above 0 means something else (a build, another test run) competed for"
  echo "the two cores during the measurement, and the figures are lower and noisier than the code's."
} >"$REPORT"

echo
cat "$REPORT"
echo
log "report written to ${REPORT#"$ROOT"/}"

if ((errors > 0)); then
  log "the run had $errors errors"
  exit 1
fi
if [[ ${ENFORCE_TARGETS:-0} == 1 && ($verdict_share != meets || $verdict_p99 != meets) ]]; then
  log "below target"
  exit 1
fi
