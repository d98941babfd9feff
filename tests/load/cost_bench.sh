#!/usr/bin/env bash
# What one check costs Redis, by its cost: Redis microseconds per EVALSHA (from
# INFO commandstats) and the key's MEMORY USAGE, for each limiter script.
#
#   tests/load/cost_bench.sh                     # the scripts in lua/ of this tree
#   SCRIPTS_FROM=72001dc HEAVY_CALLS=20 tests/load/cost_bench.sh   # before issue #11
#   ALGORITHMS=sliding_log LIMIT=1000 tests/load/cost_bench.sh
#
# Steps: start a private redis-server on a free 127.0.0.1 port (no other
# client pollutes its command statistics); load each script; then per script
# four phases, each sent in CHUNKS chunks down one connection with
# `redis-cli --pipe` (so client round-trips do not count, only the server's
# time inside EVALSHA), the phases taking turns chunk by chunk, with CONFIG
# RESETSTAT before each chunk and its calls and usec added up per phase:
#   admit cost 1       CALLS checks of cost 1, each on a fresh key (admitted)
#   admit cost=limit   HEAVY_CALLS checks of cost LIMIT, each on a fresh key (admitted)
#   deny, 1 entry      CALLS checks of cost 1 on a key holding one check of cost LIMIT (denied)
#   deny, full log     CALLS checks of cost 1 on a key holding LIMIT checks of cost 1 (denied)
# and MEMORY USAGE (SAMPLES 0: every element counted) of the keys one check
# of cost 1, one check of cost LIMIT, and LIMIT checks of cost 1 leave. The
# decisions are checked to be what the phases say (admitted or denied). The
# private Redis is stopped on every exit.
#
# Settings (environment):
#   LIMIT=100000       the policy's limit (100,000 is sliding_log's largest)
#   WINDOW_US=2592000000000   30 days: nothing leaves the window during the run, and
#                      gcra drains one unit per 26 s, so a full key stays full
#   CALLS=2000         calls of each cost-1 phase
#   HEAVY_CALLS=$CALLS calls of the cost=limit phase; with the previous
#                      sliding_log (SCRIPTS_FROM=72001dc) each takes ~0.3 s
#                      and ~12 MB, so measure it with e.g. HEAVY_CALLS=20
#   CHUNKS=10          each phase's calls are sent in this many chunks, the
#                      phases taking turns, so that load from elsewhere on the
#                      machine falls on every phase alike
#   ALGORITHMS="sliding_log gcra sliding_window"
#   SCRIPTS_FROM=      unset: lua/ of this working tree; a git revision: its lua/
#
# Output: a Markdown table on stdout, also written to target/load-report/.

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/load"
LIMIT=${LIMIT:-100000}
WINDOW_US=${WINDOW_US:-2592000000000}
CALLS=${CALLS:-2000}
HEAVY_CALLS=${HEAVY_CALLS:-$CALLS}
CHUNKS=${CHUNKS:-10}
ALGORITHMS=${ALGORITHMS:-sliding_log gcra sliding_window}
SCRIPTS_FROM=${SCRIPTS_FROM:-}
REPORT_DIR="$ROOT/target/load-report"

LOG_NAME=cost_bench
# shellcheck source=tests/load/lib.sh
source "$HERE/lib.sh"

for value in LIMIT WINDOW_US CALLS HEAVY_CALLS CHUNKS; do
  [[ ${!value} =~ ^[0-9]+$ ]] && ((${!value} >= 1)) || die "$value must be a whole number >= 1 (got ${!value})"
done
((WINDOW_US >= 1000)) || die "WINDOW_US must be at least 1000 (1 ms), as the scripts require"
for tool in redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cost_bench.XXXXXX")
REDIS_PID=""
cleanup() {
  if [[ -n $REDIS_PID ]]; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_private_redis

script_source() { # algorithm -> the script's text
  if [[ -n $SCRIPTS_FROM ]]; then
    git -C "$ROOT" show "$SCRIPTS_FROM:crates/slidegate-redis/lua/$1.lua" 2>/dev/null || git -C "$ROOT" show "$SCRIPTS_FROM:lua/$1.lua"
  else
    cat "$ROOT/crates/slidegate-redis/lua/$1.lua"
  fi
}

usec_per_call() { # -> EVALSHA's usec_per_call since the last RESETSTAT
  rcli INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\).*/\1/p'
}

decision() { # sha keys tag index cost -> "allowed remaining" of one more call
  local keys=() n
  for n in $(seq "$2"); do keys+=("{bench:$3:$4}:$n"); done
  rcli EVALSHA "$1" "$2" "${keys[@]}" "$WINDOW_US" "$LIMIT" "$5" | head -n 2 | tr '\n' ' '
}

memory() { # keys tag index -> bytes of all the script's keys of that index
  local total=0 n bytes
  for n in $(seq "$1"); do
    bytes=$(rcli MEMORY USAGE "{bench:$2:$3}:$n" SAMPLES 0)
    [[ $bytes =~ ^[0-9]+$ ]] && total=$((total + bytes))
  done
  echo "$total"
}

expect() { # what actual expected-prefix
  [[ $2 == "$3"* ]] || die "$1: expected a decision starting '$3', got '$2'"
}

human() { # bytes -> "123 B" / "12.3 KB" / "12.3 MB"
  python3 -c 'import sys; b = int(sys.argv[1]); print("%d B" % b if b < 10**4 else "%.1f KB" % (b / 1e3) if b < 10**7 else "%.1f MB" % (b / 1e6))' "$1"
}

# EVALSHA's calls and usec since the last RESETSTAT, as "calls usec".
evalsha_stats() {
  rcli INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2/p'
}

# Redis's main thread's CPU time so far, in microseconds.
cpu_us() {
  rcli INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys)_main_thread:/ { s += $2 } END { printf "%.0f", s * 1e6 }'
}

# Runs one chunk of a phase between RESETSTATs and adds its EVALSHA calls and
# usec, and the main thread's CPU time meanwhile, to the phase's totals
# (CALLS_<phase>, USEC_<phase>, CPU_<phase>).
measure() { # phase, then pipe_calls' arguments
  local phase=$1 calls usec cpu_before cpu_after
  shift
  rcli CONFIG RESETSTAT >/dev/null
  cpu_before=$(cpu_us)
  pipe_calls "$@"
  cpu_after=$(cpu_us)
  read -r calls usec <<<"$(evalsha_stats)"
  [[ $calls =~ ^[0-9]+$ && $usec =~ ^[0-9]+$ ]] || die "cannot read INFO commandstats"
  eval "CALLS_$phase=\$((CALLS_$phase + calls)); USEC_$phase=\$((USEC_$phase + usec))"
  eval "CPU_$phase=\$((CPU_$phase + cpu_after - cpu_before))"
}

per_call() { # phase [CPU] -> usec (or CPU us) per call, two decimals
  local calls="CALLS_$1" usec="${2:-USEC}_$1"
  python3 -c 'import sys; print("%.2f" % (int(sys.argv[2]) / int(sys.argv[1])))' "${!calls}" "${!usec}"
}

ROWS=()
CPU_ROWS=()
for algorithm in $ALGORITHMS; do
  script_source "$algorithm" >"$WORK/$algorithm.lua" || die "no lua/$algorithm.lua in ${SCRIPTS_FROM:-this tree}"
  SHA=$(rcli -x SCRIPT LOAD <"$WORK/$algorithm.lua" | tr -d '\r')
  [[ $SHA =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD of $algorithm answered: $SHA"
  KEYS=$(sed -n 's/^if #KEYS ~= \([0-9]*\) .*/\1/p' "$WORK/$algorithm.lua")
  [[ $KEYS =~ ^[0-9]+$ ]] || die "cannot tell how many keys $algorithm.lua takes"
  for phase in one all deny_one deny_full; do
    eval "CALLS_$phase=0; USEC_$phase=0; CPU_$phase=0"
  done

  # The two keys the denial phases check: one check of cost LIMIT, and LIMIT checks of cost 1.
  log "$algorithm: preparing a key with one check of cost $LIMIT and one with $LIMIT checks of cost 1"
  pipe_calls "$SHA" "$KEYS" "$algorithm-deny" 0 1 "$LIMIT" 0 "$WINDOW_US" "$LIMIT"
  memory_all=$(memory "$KEYS" "$algorithm-deny" 0)
  pipe_calls "$SHA" "$KEYS" "$algorithm-full" 0 "$LIMIT" 1 1 "$WINDOW_US" "$LIMIT"
  memory_full=$(memory "$KEYS" "$algorithm-full" 0)

  chunk=$(((CALLS + CHUNKS - 1) / CHUNKS))
  heavy_chunk=$(((HEAVY_CALLS + CHUNKS - 1) / CHUNKS))
  log "$algorithm: $CHUNKS rounds of $chunk + $heavy_chunk + $chunk + $chunk calls, one phase after the other"
  for ((round = 0; round < CHUNKS; round++)); do
    measure one "$SHA" "$KEYS" "$algorithm-one" $((round * chunk)) "$chunk" 1 0 "$WINDOW_US" "$LIMIT"
    # At once: a gcra unit of 100,000 per 30 days drains in 26 s.
    ((round > 0)) || memory_one=$(memory "$KEYS" "$algorithm-one" 0)
    measure all "$SHA" "$KEYS" "$algorithm-all" $((round * heavy_chunk)) "$heavy_chunk" "$LIMIT" 0 "$WINDOW_US" "$LIMIT"
    # With one member per unit each of these keys holds ~12 MB: drop them now.
    drop=()
    for ((i = round * heavy_chunk; i < (round + 1) * heavy_chunk; i++)); do
      for n in $(seq "$KEYS"); do drop+=("{bench:$algorithm-all:$i}:$n"); done
    done
    rcli DEL "${drop[@]}" >/dev/null
    measure deny_one "$SHA" "$KEYS" "$algorithm-deny" 0 "$chunk" 1 1 "$WINDOW_US" "$LIMIT"
    measure deny_full "$SHA" "$KEYS" "$algorithm-full" 0 "$chunk" 1 1 "$WINDOW_US" "$LIMIT"
  done
  expect "$algorithm admit cost 1" "$(decision "$SHA" "$KEYS" "$algorithm-one" 0 0)" "1 "
  expect "$algorithm deny after cost=limit" "$(decision "$SHA" "$KEYS" "$algorithm-deny" 0 1)" "0 0"
  expect "$algorithm deny on a full key" "$(decision "$SHA" "$KEYS" "$algorithm-full" 0 1)" "0 0"
  ROWS+=("| \`$algorithm\` | $(per_call one) | $(per_call all) | $(per_call deny_one) | $(per_call deny_full) | $(human "$memory_one") | $(human "$memory_all") | $(human "$memory_full") |")
  CPU_ROWS+=("| \`$algorithm\` | $(per_call one CPU) | $(per_call all CPU) | $(per_call deny_one CPU) | $(per_call deny_full CPU) |")
  rcli FLUSHALL >/dev/null # the private server only
done

mkdir -p "$REPORT_DIR"
REPORT="$REPORT_DIR/cost-bench-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "Redis $REDIS_VERSION, scripts from ${SCRIPTS_FROM:-the working tree} ($(git -C "$ROOT" rev-parse --short HEAD) checked out), limit $LIMIT, window ${WINDOW_US} us."
  echo "Redis µs per EVALSHA (INFO commandstats: usec / calls, over $CHUNKS interleaved chunks per phase) and MEMORY USAGE of the script's keys."
  echo
  echo "| script | admit cost 1 | admit cost $LIMIT | deny (1 entry) | deny (full: $LIMIT × cost 1) | memory: 1 × cost 1 | memory: 1 × cost $LIMIT | memory: $LIMIT × cost 1 |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Redis main thread CPU µs per call over the same chunks (INFO cpu; unlike the wall-clock usec above, not inflated while another process has the CPU):"
  echo
  echo "| script | admit cost 1 | admit cost $LIMIT | deny (1 entry) | deny (full: $LIMIT × cost 1) |"
  echo "|---|---:|---:|---:|---:|"
  printf '%s\n' "${CPU_ROWS[@]}"
} | tee "$REPORT"
log "report written to $REPORT"
