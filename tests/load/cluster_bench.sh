#!/usr/bin/env bash
# One release replica against a standalone Redis and against a 3-master Redis
# Cluster, in the same run on this machine: decisions/s and latency of
# POST /v1/check under the same wrk load (random keys, sliding_log).
#
#   tests/load/cluster_bench.sh
#   DURATION=30 CONNECTIONS=150 tests/load/cluster_bench.sh
#
# Steps: build the release binary (a no-op when fresh); start a private
# redis-server and three cluster-enabled ones on free ports in a temporary
# directory (`redis-cli --cluster create`, no replicas); for each store start
# ONE replica, wait for readiness, warm up, drive wrk for DURATION seconds,
# stop the replica; print a table and write it to target/load-report/.
# Every process and directory is removed on every exit, Ctrl-C included.
#
# Settings (environment): DURATION=20, WARMUP=3, CONNECTIONS=150,
# KEY_SPACE=100000, WRK_THREADS=1, SKIP_BUILD=1 (use target/release/slidegate).
#
# What the figures mean here: wrk, the replica and every redis-server share
# the machine's two cores, so three masters do not add CPU, they divide it.
# The comparison shows what the cluster client costs per decision (routing
# by slot, one connection per node), not how a cluster scales; see
# docs/benchmarks.md.
#
# Exit status: 0 when both runs completed with only 200/429 answers and no
# socket errors; 1 otherwise.

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/load"
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-150}
KEY_SPACE=${KEY_SPACE:-100000}
WRK_THREADS=${WRK_THREADS:-1}
POLICY=bench
REPORT_DIR="$ROOT/target/load-report"

LOG_NAME=cluster_bench
# shellcheck source=tests/load/lib.sh
source "$HERE/lib.sh"

require_whole_numbers DURATION WARMUP CONNECTIONS KEY_SPACE WRK_THREADS
((DURATION >= 1 && DURATION <= 600)) || die "DURATION must be 1..600 seconds"
for tool in wrk redis-server redis-cli curl cargo python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (wrk: apt-get install wrk)"
done

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet --bin slidegate)
fi
BINARY="$ROOT/target/release/slidegate"
[[ -x $BINARY ]] || die "$BINARY is missing; build it or unset SKIP_BUILD"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cluster_bench.XXXXXX")
SERVER_PIDS=()
REPLICA_PID=""

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_child
  stop_replica
  for pid in "${SERVER_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((status != 0)) && [[ -s $WORK/replica.log ]]; then
    log "last lines of the replica's log:"
    tail -n 20 "$WORK/replica.log" >&2 || true
  fi
  rm -rf -- "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# A port whose cluster bus port (port + 10000) is free too.
cluster_port() {
  python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    if port < 55535:
        try:
            b = socket.socket(); b.bind(("127.0.0.1", port + 10000)); b.close(); print(port); break
        except OSError:
            pass
    s.close()'
}

start_redis() { # port, extra arguments...
  local port=$1 dir="$WORK/redis-$1"
  shift
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" "$@" \
    >"$dir/log" 2>&1 &
  SERVER_PIDS+=($!)
  local deadline=$((SECONDS + 10))
  until [[ $(redis-cli -p "$port" PING 2>/dev/null) == PONG ]]; do
    ((SECONDS < deadline)) || die "redis-server on $port did not start: $(tail -n 5 "$dir/log")"
    sleep 0.1
  done
}

STANDALONE_PORT=$(free_port)
start_redis "$STANDALONE_PORT"
CLUSTER_PORTS=()
for _ in 1 2 3; do
  port=$(cluster_port)
  start_redis "$port" --cluster-enabled yes --cluster-config-file "$WORK/nodes-$port.conf" \
    --cluster-node-timeout 2000
  CLUSTER_PORTS+=("$port")
done
redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
  >"$WORK/create.log" 2>&1 || die "redis-cli --cluster create: $(cat "$WORK/create.log")"
deadline=$((SECONDS + 30))
for port in "${CLUSTER_PORTS[@]}"; do
  until redis-cli -p "$port" CLUSTER INFO 2>/dev/null | grep -q 'cluster_state:ok'; do
    ((SECONDS < deadline)) || die "the cluster did not reach cluster_state:ok within 30 s"
    sleep 0.2
  done
done
log "standalone Redis on $STANDALONE_PORT; cluster masters on ${CLUSTER_PORTS[*]}"

NODES=$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")
NODES=${NODES%,}

run_wrk() { # seconds, output file
  run_child "$2" timeout $(($1 + 30)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${1}s" --timeout 5s \
    -s "$HERE/check.lua" "$URL" -- "$POLICY" "$KEY_SPACE" 0
}

# One measured run against the replica now running; prints
# "decisions/s p50 p99 errors".
measure() {
  ((WARMUP == 0)) || run_wrk "$WARMUP" "$WORK/warmup.txt" || die "wrk failed during warm-up"
  run_wrk "$DURATION" "$WORK/wrk.txt" || die "wrk failed: $(cat "$WORK/wrk.txt")"
  local result
  result=$(grep '^RESULT ' "$WORK/wrk.txt" | tail -n 1) || die "wrk printed no RESULT line"
  field() { tr ' ' '\n' <<<"$result" | sed -n "s/^$1=//p"; }
  local decisions=$(($(field ok) + $(field denied)))
  local errors=$(($(field other_status) + $(field connect) + $(field read) + $(field write) + $(field timeout)))
  awk -v n="$decisions" -v us="$(field duration_us)" -v p50="$(field p50_us)" -v p99="$(field p99_us)" -v e="$errors" \
    'BEGIN { printf "%.0f %.2f %.2f %d\n", n / (us / 1e6), p50 / 1000, p99 / 1000, e }'
}

log "load: ${DURATION}s, $CONNECTIONS connections, $KEY_SPACE keys, policy $POLICY (sliding_log)"
start_replica_and_wait "$WORK/replica.log" SLIDEGATE__LIMITER__KEY_PREFIX="cluster-bench:" \
  SLIDEGATE__REDIS__URL="redis://127.0.0.1:$STANDALONE_PORT"
read -r s_rps s_p50 s_p99 s_errors < <(measure)
stop_replica
start_replica_and_wait "$WORK/replica.log" SLIDEGATE__LIMITER__KEY_PREFIX="cluster-bench:" \
  SLIDEGATE__REDIS__MODE=cluster SLIDEGATE__REDIS__NODES="$NODES"
read -r c_rps c_p50 c_p99 c_errors < <(measure)
keys_per_master=$(for port in "${CLUSTER_PORTS[@]}"; do redis-cli -p "$port" DBSIZE; done | paste -sd / -)
stop_replica

mkdir -p "$REPORT_DIR"
REPORT="$REPORT_DIR/cluster-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "slidegate cluster bench, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
  echo "load: wrk ${DURATION}s, $CONNECTIONS connections, $KEY_SPACE random keys, sliding_log"
  printf '%-28s %12s %9s %9s %7s\n' store decisions/s p50_ms p99_ms errors
  printf '%-28s %12s %9s %9s %7s\n' "standalone Redis" "$s_rps" "$s_p50" "$s_p99" "$s_errors"
  printf '%-28s %12s %9s %9s %7s\n' "Redis Cluster, 3 masters" "$c_rps" "$c_p50" "$c_p99" "$c_errors"
  echo "cluster/standalone throughput: $(awk -v c="$c_rps" -v s="$s_rps" 'BEGIN { printf "%.2f", c / s }')"
  echo "keys per master after the run: $keys_per_master"
} | tee "$REPORT"
log "report: $REPORT"
((s_errors == 0 && c_errors == 0)) || die "answers other than 200/429, or socket errors"
