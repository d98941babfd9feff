#!/usr/bin/env bash
# Envoy's rate-limit gRPC API against POST /v1/check, in the same run: one
# release replica on Redis, saturated by 150 concurrent callers for each of
# /v1/check (wrk), ShouldRateLimit with one descriptor, and ShouldRateLimit
# with three (crates/slidegate-envoy/examples/rls_load.rs).
#
#   tests/load/rls_bench.sh
#   DURATION=30 STREAMS=150 tests/load/rls_bench.sh
#
# Every limit is 100 per minute (sliding_log) on random keys among
# KEY_SPACE: the HTTP policy `bench` of policies.toml, and rules d0, d1, d2
# of the domain `bench` written here. Three descriptors are three keys, so
# three decisions per call (checked one after the other today).
#
# Settings (environment): DURATION=20, WARMUP=3, STREAMS=150 (wrk
# connections, and gRPC streams over CONNECTIONS=4 HTTP/2 connections),
# KEY_SPACE=100000, REDIS_URL=redis://127.0.0.1:6379 (must be this
# machine), SKIP_BUILD=1 (use the release binaries as they are).
#
# Exit status: 0 when every answer was a decision (200/429, OK/OVER_LIMIT)
# and there were no socket errors; 1 otherwise.

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/load"
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
STREAMS=${STREAMS:-150}
CONNECTIONS=${CONNECTIONS:-4}
KEY_SPACE=${KEY_SPACE:-100000}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
REPORT_DIR="$ROOT/target/load-report"

LOG_NAME=rls_bench
# shellcheck source=tests/load/lib.sh
source "$HERE/lib.sh"

require_whole_numbers DURATION WARMUP STREAMS CONNECTIONS KEY_SPACE
((DURATION >= 1 && DURATION <= 600)) || die "DURATION must be 1..600 seconds"
require_loopback_redis
for tool in wrk redis-cli curl cargo python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (wrk: apt-get install wrk)"
done
[[ $(rcli PING 2>/dev/null) == PONG ]] || die "no Redis answers at $REDIS_HOST (set REDIS_URL)"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release (slidegate, rls_load)"
  (cd "$ROOT" && cargo build --release --quiet --bin slidegate &&
    cargo build --release --quiet -p slidegate-envoy --example rls_load)
fi
BINARY="$ROOT/target/release/slidegate"
LOADER="$ROOT/target/release/examples/rls_load"
[[ -x $BINARY && -x $LOADER ]] || die "release binaries missing; build them or unset SKIP_BUILD"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rls_bench.XXXXXX")
PREFIX="slidegate-rls-bench-$(date -u +%Y%m%dT%H%M%SZ)-$$:"
REPLICA_PID=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_child
  stop_replica
  delete_keys
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

cat >"$WORK/rules.yaml" <<'YAML'
domain: bench
descriptors:
  - key: d0
    rate_limit: { unit: minute, requests_per_unit: 100 }
  - key: d1
    rate_limit: { unit: minute, requests_per_unit: 100 }
  - key: d2
    rate_limit: { unit: minute, requests_per_unit: 100 }
YAML

GRPC_PORT=$(free_port)
log "starting the replica (Redis store, key prefix $PREFIX, RLS on 127.0.0.1:$GRPC_PORT)"
start_replica_and_wait "$WORK/replica.log" \
  SLIDEGATE__REDIS__URL="$REDIS_URL" \
  SLIDEGATE__LIMITER__KEY_PREFIX="$PREFIX" \
  SLIDEGATE__ENVOY_RLS__BIND="127.0.0.1:$GRPC_PORT" \
  SLIDEGATE__ENVOY_RLS__RULES="$WORK/rules.yaml"
log "replica ready at $URL"

http_run() { # seconds, output file
  run_child "$2" timeout $(($1 + 30)) wrk -t1 -c"$STREAMS" -d"${1}s" --timeout 5s \
    -s "$HERE/check.lua" "$URL" -- bench "$KEY_SPACE" 0
}
rls_run() { # seconds, descriptors, output file
  run_child "$3" timeout $(($1 + 30)) "$LOADER" "127.0.0.1:$GRPC_PORT" "$STREAMS" "$1" "$2" "$KEY_SPACE" "$CONNECTIONS"
}

# "decisions/s calls/s p50_ms p99_ms errors" of a RESULT line in file $1,
# where one call decides $2 limits.
summarize() {
  local result
  result=$(grep '^RESULT ' "$1" | tail -n 1) || die "no RESULT line in $1: $(cat "$1")"
  field() { tr ' ' '\n' <<<"$result" | sed -n "s/^$1=//p"; }
  local answered errors
  if [[ -n $(field calls) ]]; then
    answered=$(($(field ok) + $(field over)))
    errors=$(field errors)
  else
    answered=$(($(field ok) + $(field denied)))
    errors=$(($(field other_status) + $(field connect) + $(field read) + $(field write) + $(field timeout)))
  fi
  awk -v n="$answered" -v per="$2" -v us="$(field duration_us)" -v p50="$(field p50_us)" -v p99="$(field p99_us)" -v e="$errors" \
    'BEGIN { printf "%.0f %.0f %.2f %.2f %d\n", n * per / (us / 1e6), n / (us / 1e6), p50 / 1000, p99 / 1000, e }'
}

log "load: ${DURATION}s each, $STREAMS concurrent callers, $KEY_SPACE keys, 100/min sliding_log"
((WARMUP == 0)) || http_run "$WARMUP" "$WORK/warmup.txt" || die "wrk failed during warm-up"
http_run "$DURATION" "$WORK/http.txt" || die "wrk failed: $(cat "$WORK/http.txt")"
read -r h_dps h_cps h_p50 h_p99 h_err < <(summarize "$WORK/http.txt" 1)
((WARMUP == 0)) || rls_run "$WARMUP" 1 "$WORK/warmup.txt" || die "rls_load failed during warm-up"
rls_run "$DURATION" 1 "$WORK/rls1.txt" || die "rls_load failed: $(cat "$WORK/rls1.txt")"
read -r g1_dps g1_cps g1_p50 g1_p99 g1_err < <(summarize "$WORK/rls1.txt" 1)
rls_run "$DURATION" 3 "$WORK/rls3.txt" || die "rls_load failed: $(cat "$WORK/rls3.txt")"
read -r g3_dps g3_cps g3_p50 g3_p99 g3_err < <(summarize "$WORK/rls3.txt" 3)
kill -0 "$REPLICA_PID" 2>/dev/null || die "the replica died under load"

mkdir -p "$REPORT_DIR"
REPORT="$REPORT_DIR/rls-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "slidegate RLS bench, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, Redis at $REDIS_HOST"
  echo "load: ${DURATION}s per row, $STREAMS concurrent callers, $KEY_SPACE random keys, 100/min sliding_log"
  printf '%-34s %10s %12s %8s %8s %7s\n' front calls/s decisions/s p50_ms p99_ms errors
  printf '%-34s %10s %12s %8s %8s %7s\n' "POST /v1/check (wrk)" "$h_cps" "$h_dps" "$h_p50" "$h_p99" "$h_err"
  printf '%-34s %10s %12s %8s %8s %7s\n' "ShouldRateLimit, 1 descriptor" "$g1_cps" "$g1_dps" "$g1_p50" "$g1_p99" "$g1_err"
  printf '%-34s %10s %12s %8s %8s %7s\n' "ShouldRateLimit, 3 descriptors" "$g3_cps" "$g3_dps" "$g3_p50" "$g3_p99" "$g3_err"
} | tee "$REPORT"
log "report: $REPORT"
((h_err == 0 && g1_err == 0 && g3_err == 0)) || die "answers that were not decisions, or socket errors"
