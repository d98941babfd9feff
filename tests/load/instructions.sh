#!/usr/bin/env bash
# CPU instructions a replica spends per decision, counted by callgrind: a
# number that repeats run after run, whatever else the machine is doing,
# where throughput on a shared 2-core box moves by 10-20 % between runs.
#
#   tests/load/instructions.sh                    # tracing off, default, 1.0
#   CASES=off REQUESTS=5000 tests/load/instructions.sh
#
# Each case starts the release binary under `valgrind --tool=callgrind` with
# instrumentation off, on the local Redis (own key prefix), policy `bench` of
# tests/load/policies.toml. WARMUP requests open the pooled connections and
# load the script; then counting is switched on (`callgrind_control -i on`),
# REQUESTS checks are sent (random keys among KEY_SPACE, CONNECTIONS
# keep-alive connections, a Python client outside valgrind), counting is
# switched off and the total is read. Every thread of the replica counts:
# the actix workers, the Redis connections' tasks and, with tracing on, the
# span exporter; so the figure is the replica's whole CPU work per decision.
#
# Cases: off (no tracing endpoint), default (an OTLP sink on loopback, the
# shipped sample_ratio), ratio_1 (sample_ratio = 1.0). The sink answers 200
# to every export, as in tracing_bench.sh.
#
# Settings: CASES="off default ratio_1", REQUESTS=3000, WARMUP=300,
# CONNECTIONS=8, KEY_SPACE=100000, REDIS_URL=redis://127.0.0.1:6379,
# BINARY=target/release/slidegate (built unless SKIP_BUILD=1),
# KEEP_DIR= (a directory: each case's callgrind output is copied there, for
# `callgrind_annotate --inclusive=yes KEEP_DIR/<case>.callgrind.1`).
#
# Instruction counts are not time: a cache miss or a syscall's kernel work
# counts nothing here. They answer "did this change make the replica do
# less", exactly, and the load scripts answer "how fast is it".

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/load"
CASES=${CASES:-off default ratio_1}
REQUESTS=${REQUESTS:-3000}
WARMUP=${WARMUP:-300}
CONNECTIONS=${CONNECTIONS:-8}
KEY_SPACE=${KEY_SPACE:-100000}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}

LOG_NAME=instructions
# shellcheck source=tests/load/lib.sh
source "$HERE/lib.sh"

require_whole_numbers REQUESTS WARMUP CONNECTIONS KEY_SPACE
require_loopback_redis
for tool in valgrind callgrind_control redis-cli curl python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (valgrind: apt-get install valgrind)"
done
[[ $(rcli PING 2>/dev/null) == PONG ]] || die "no Redis answers at $REDIS_HOST (set REDIS_URL)"
((REQUESTS >= 1 && CONNECTIONS >= 1)) || die "REQUESTS and CONNECTIONS must be at least 1"

if [[ -z ${BINARY:-} ]]; then
  if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet --bin slidegate)
  fi
  BINARY="$ROOT/target/release/slidegate"
fi
[[ -x $BINARY ]] || die "$BINARY is missing; build it or unset SKIP_BUILD"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/instructions.XXXXXX")
PREFIX="slidegate-instructions-$(date -u +%Y%m%dT%H%M%SZ)-$$:"
REPLICA_PID=""
SINK_PID=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_replica
  [[ -z $SINK_PID ]] || kill "$SINK_PID" 2>/dev/null || true
  delete_keys
  rm -rf -- "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

SINK_PORT=$(free_port)
python3 "$HERE/otlp_sink.py" "$SINK_PORT" "$WORK/sink_bytes" &
SINK_PID=$!

# Sends exactly N checks over C keep-alive connections; exits 1 on any status
# other than 200/429 or a connection error.
cat >"$WORK/client.py" <<'PY'
import http.client, json, random, sys, threading
host, port, total, connections, key_space = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
failures = []
def drive(count, seed):
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        for _ in range(count):
            body = json.dumps({"policy": "bench", "key": f"user-{rng.randrange(key_space)}"})
            conn.request("POST", "/v1/check", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            if reply.status not in (200, 429):
                failures.append(reply.status)
    except Exception as error:
        failures.append(repr(error))
share = [total // connections + (1 if i < total % connections else 0) for i in range(connections)]
threads = [threading.Thread(target=drive, args=(n, i)) for i, n in enumerate(share) if n]
for t in threads: t.start()
for t in threads: t.join()
if failures:
    print(f"{len(failures)} failures, first: {failures[0]}", file=sys.stderr)
    sys.exit(1)
PY

run_case() { # name, NAME=value...
  local name=$1
  shift
  local out="$WORK/$name.callgrind"
  BINARY_UNDER_TEST=$BINARY
  # start_replica_and_wait runs "$BINARY"; under valgrind it is a wrapper.
  cat >"$WORK/under_callgrind" <<SH
#!/bin/sh
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$BINARY_UNDER_TEST" "\$@"
SH
  chmod +x "$WORK/under_callgrind"
  local saved=$BINARY
  BINARY="$WORK/under_callgrind"
  # Valgrind runs the replica ~50x slower and one thread at a time: the
  # Redis deadlines are widened so that no check times out into a 503.
  READY_DEADLINE_S=120 start_replica_and_wait "$WORK/$name.log" SLIDEGATE__REDIS__URL="$REDIS_URL" \
    SLIDEGATE__LIMITER__KEY_PREFIX="$PREFIX$name:" SLIDEGATE__REDIS__CONNECT_TIMEOUT=10s \
    SLIDEGATE__REDIS__COMMAND_TIMEOUT=10s SLIDEGATE__SERVER__SHUTDOWN_TIMEOUT=1s "$@"
  BINARY=$saved
  local host=${URL#http://}
  python3 "$WORK/client.py" "${host%:*}" "${host##*:}" "$WARMUP" "$CONNECTIONS" "$KEY_SPACE" ||
    die "the warm-up of $name failed"
  callgrind_control -i on "$REPLICA_PID" >/dev/null
  python3 "$WORK/client.py" "${host%:*}" "${host##*:}" "$REQUESTS" "$CONNECTIONS" "$KEY_SPACE" ||
    die "the measured requests of $name failed"
  callgrind_control -i off "$REPLICA_PID" >/dev/null
  # Written now: a replica slow to stop under valgrind may be killed.
  callgrind_control -d "$REPLICA_PID" >/dev/null
  stop_replica
  REPLICA_PID=""
  local total
  total=$(sed -n 's/^totals: *//p' "$out"* | awk '{ sum += $1 } END { print sum + 0 }')
  ((total > 0)) || die "callgrind counted nothing for $name"
  echo "$name $total" >>"$WORK/results"
  [[ -z ${KEEP_DIR:-} ]] || { mkdir -p "$KEEP_DIR" && cp "$out"* "$KEEP_DIR/"; }
}

OTLP=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" SLIDEGATE__TRACING__BATCH_DELAY=200ms)
for name in $CASES; do
  log "$name: $WARMUP warm-up checks, then $REQUESTS counted, $CONNECTIONS connections"
  case $name in
    off) run_case off ;;
    default) run_case default "${OTLP[@]}" ;;
    ratio_1) run_case ratio_1 "${OTLP[@]}" SLIDEGATE__TRACING__SAMPLE_RATIO=1.0 ;;
    *) die "unknown case $name (off, default, ratio_1)" ;;
  esac
done

printf '\n%-28s %16s %14s\n' "tracing" "instructions" "per decision"
while read -r name total; do
  case $name in
    off) label="off (no endpoint)" ;;
    default) label="on, default sample_ratio" ;;
    ratio_1) label="on, sample_ratio = 1.0" ;;
  esac
  printf '%-28s %16s %14.0f\n' "$label" "$total" "$(awk -v t="$total" -v n="$REQUESTS" 'BEGIN { print t / n }')"
done <"$WORK/results"
printf '(%s checks counted per case, binary %s, commit %s)\n' "$REQUESTS" "$BINARY" \
  "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
