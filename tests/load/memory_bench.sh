#!/usr/bin/env bash
# Memory: a replica's resident memory at idle and holding a million distinct
# keys in the embedded store, and Redis memory per key for each algorithm.
#
#   tests/load/memory_bench.sh               # 1,000,000 keys embedded; 100,000 per algorithm in Redis
#   KEYS=200000 REDIS_KEYS=20000 tests/load/memory_bench.sh
#
# Embedded: one release replica without Redis, `limiter.max_keys` raised to
# hold every key, policy `bench` (sliding_log, 100 per minute). VmRSS from
# /proc is read after start-up (idle) and once the store holds KEYS keys, each
# admitted once (wrk with tests/load/unique_keys.lua). The window is a minute,
# so the keys are all still counting when RSS is read.
#
# Redis: a private redis-server on a free port (nothing else in it); for each
# algorithm, REDIS_KEYS distinct keys get one admitted check each, sent with
# `redis-cli --pipe` as EVALSHA of the replica's own script; `used_memory`
# before and after, divided by the keys, and `MEMORY USAGE` of one key.
#
# Settings: KEYS=1000000, REDIS_KEYS=100000, SKIP_BUILD=1.

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/load"
KEYS=${KEYS:-1000000}
REDIS_KEYS=${REDIS_KEYS:-100000}

LOG_NAME=memory_bench
# shellcheck source=tests/load/lib.sh
source "$HERE/lib.sh"
require_whole_numbers KEYS REDIS_KEYS
((KEYS >= 2 && REDIS_KEYS >= 1)) || die "KEYS must be at least 2, REDIS_KEYS at least 1"
for tool in wrk redis-server redis-cli curl cargo; do
  command -v "$tool" >/dev/null || die "$tool is not installed (wrk: apt-get install wrk)"
done

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet --bin slidegate)
fi
BINARY="$ROOT/target/release/slidegate"
[[ -x $BINARY ]] || die "$BINARY is missing; build it or unset SKIP_BUILD"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/memory_bench.XXXXXX")
REPLICA_PID=""
REDIS_PID=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_child
  stop_replica
  [[ -z $REDIS_PID ]] || kill "$REDIS_PID" 2>/dev/null || true
  rm -rf -- "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

rss_kib() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# --- the embedded store ----------------------------------------------------------

start_replica_and_wait "$WORK/replica.log" SLIDEGATE__LIMITER__MAX_KEYS=$((KEYS + KEYS / 10))
idle=$(rss_kib "$REPLICA_PID")
log "idle: $(mib "$idle") MiB; sending $KEYS distinct keys"
# Two wrk threads, each with its share of the keys.
(wrk -t2 -c32 -d600s --timeout 5s -s "$HERE/unique_keys.lua" "$URL" -- bench $((KEYS / 2)) \
  >"$WORK/wrk.txt" 2>&1) &
CHILD_PID=$!
held=0
deadline=$((SECONDS + 600))
while ((SECONDS < deadline)); do
  held=$(curl -s --max-time 5 "$URL/metrics" |
    sed -n 's/^slidegate_memory_store_keys{store="embedded"} \([0-9]*\).*/\1/p')
  ((${held:-0} >= KEYS / 2 * 2)) && break
  sleep 1
done
stop_child
((${held:-0} >= KEYS / 2 * 2)) || die "the store held ${held:-0} keys, not $KEYS, within 600 s"
full=$(rss_kib "$REPLICA_PID")
stop_replica
REPLICA_PID=""

# --- Redis per key, per algorithm ----------------------------------------------

PORT=$(free_port)
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  --daemonize no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do
  redis-cli -p "$PORT" PING >/dev/null 2>&1 && break
  sleep 0.1
done
r() { redis-cli -p "$PORT" "$@"; }
used() { r INFO memory | tr -d '\r' | sed -n 's/^used_memory://p'; }

declare -A PER_KEY SAMPLE
for algorithm in sliding_log sliding_window gcra; do
  sha=$(r SCRIPT LOAD "$(cat "$ROOT/crates/slidegate-redis/lua/$algorithm.lua")")
  before=$(used)
  case $algorithm in
    sliding_log) keys_of() { echo "2 x{bench:k$1}:wlog x{bench:k$1}:log"; } ;;
    sliding_window) keys_of() { echo "1 x{bench:k$1}:sw"; } ;;
    gcra) keys_of() { echo "1 x{bench:k$1}:gcra"; } ;;
  esac
  for ((i = 0; i < REDIS_KEYS; i++)); do
    echo "EVALSHA $sha $(keys_of "$i") 60000000 100 1"
  done | r --pipe >"$WORK/pipe.txt" 2>&1 || die "redis-cli --pipe failed: $(cat "$WORK/pipe.txt")"
  after=$(used)
  PER_KEY[$algorithm]=$(awk -v a="$after" -v b="$before" -v n="$REDIS_KEYS" 'BEGIN { printf "%.0f", (a - b) / n }')
  # shellcheck disable=SC2046
  SAMPLE[$algorithm]=$(r MEMORY USAGE $(keys_of 0 | cut -d' ' -f2))
  r FLUSHALL >/dev/null
done

printf '\nslidegate memory, %s, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(uname -m)"
printf 'replica (embedded store, sliding_log): idle %s MiB; holding %s keys %s MiB (%.0f bytes per key)\n' \
  "$(mib "$idle")" "$KEYS" "$(mib "$full")" "$(awk -v f="$full" -v i="$idle" -v n="$KEYS" 'BEGIN { print (f - i) * 1024 / n }')"
printf '%-16s %20s %28s\n' "Redis" "used_memory per key" "MEMORY USAGE of one key"
for algorithm in sliding_log sliding_window gcra; do
  printf '%-16s %18s B %26s B\n' "$algorithm" "${PER_KEY[$algorithm]}" "${SAMPLE[$algorithm]}"
done
