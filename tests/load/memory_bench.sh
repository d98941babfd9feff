#!/usr/bin/env bash
# What slidegate's state costs in memory: a replica's resident memory idle
# and holding KEYS distinct keys in the embedded store, and Redis memory per
# key for each algorithm.
#
#   tests/load/memory_bench.sh                  # 1,000,000 keys, sliding_log
#   KEYS=200000 ALGORITHMS="gcra sliding_window" tests/load/memory_bench.sh
#
# Replica: the release binary on the embedded store (no Redis), policies from
# tests/load/memory_policies.toml (limit 100 per hour: no key goes idle and
# is swept during the run), limiter.max_keys above KEYS so nothing is
# evicted. VmRSS from /proc once ready ("idle"), then wrk sends one check
# per new key (tests/load/unique_keys.lua) until the replica's
# slidegate_memory_store_keys gauge reads KEYS; VmRSS again ("held"). One
# replica per algorithm.
#
# Redis: a private redis-server on a free port (nothing else in it). For
# each algorithm, REDIS_KEYS checks of cost 1 on fresh keys, sent with
# `redis-cli --pipe` as EVALSHA of the script in crates/slidegate-redis/lua/;
# INFO memory's used_memory before and after, divided by the keys the script
# created (DBSIZE), and MEMORY USAGE of one of them.
#
# Settings: KEYS=1000000, REDIS_KEYS=100000, ALGORITHMS="sliding_log gcra
# sliding_window" for Redis, REPLICA_ALGORITHMS=sliding_log (each costs a
# run of KEYS checks), CONNECTIONS=50, BINARY=target/release/slidegate
# (built unless SKIP_BUILD=1), SKIP_REPLICA=1,
# SKIP_REDIS=1.
#
# Output: a Markdown table on stdout, also written to target/load-report/.

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/load"
KEYS=${KEYS:-1000000}
REDIS_KEYS=${REDIS_KEYS:-100000}
ALGORITHMS=${ALGORITHMS:-sliding_log gcra sliding_window}
REPLICA_ALGORITHMS=${REPLICA_ALGORITHMS:-sliding_log}
CONNECTIONS=${CONNECTIONS:-50}
REPORT_DIR="$ROOT/target/load-report"
WINDOW_US=3600000000
LIMIT=100

LOG_NAME=memory_bench
# shellcheck source=tests/load/lib.sh
source "$HERE/lib.sh"

require_whole_numbers KEYS REDIS_KEYS CONNECTIONS
((KEYS >= CONNECTIONS && CONNECTIONS >= 1)) || die "need 1 <= CONNECTIONS <= KEYS"
for tool in wrk redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (wrk: apt-get install wrk)"
done

if [[ ${SKIP_REPLICA:-0} != 1 && ${SKIP_BUILD:-0} != 1 ]]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet --bin slidegate)
fi
BINARY=${BINARY:-$ROOT/target/release/slidegate}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/memory_bench.XXXXXX")
REPLICA_PID=""
REDIS_PID=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_child
  stop_replica
  if [[ -n $REDIS_PID ]]; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  rm -rf -- "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

rss_kib() { # pid -> VmRSS in KiB
  sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"
}
mib() { # KiB -> MiB, one decimal
  awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'
}
held_keys() { # the replica's embedded-store key count
  curl -s --max-time 5 "$URL/metrics" | sed -n 's/^slidegate_memory_store_keys{store="embedded"} \([0-9]*\)$/\1/p'
}

REPLICA_ROWS=()
if [[ ${SKIP_REPLICA:-0} != 1 ]]; then
  [[ -x $BINARY ]] || die "$BINARY is missing; build it or unset SKIP_BUILD"
  for algorithm in $REPLICA_ALGORITHMS; do
    policy="memory_$algorithm"
    grep -q "name = \"$policy\"" "$HERE/memory_policies.toml" || die "no policy $policy in memory_policies.toml"
    # Two workers, as on this machine by default; pinned so the figure does
    # not depend on the core count of the machine it is rerun on.
    POLICIES="$HERE/memory_policies.toml" start_replica_and_wait "$WORK/replica-$algorithm.log" \
      SLIDEGATE__LIMITER__MAX_KEYS=$((KEYS + KEYS / 10 + 1000)) SLIDEGATE__SERVER__WORKERS=2
    idle=$(rss_kib "$REPLICA_PID")
    # One spare key per connection: the gauge has been seen to read one
    # short of what wrk reports sent, and the run waits for KEYS held.
    share=$(((KEYS + CONNECTIONS - 1) / CONNECTIONS + 1))
    log "$algorithm: idle VmRSS $(mib "$idle") MiB; sending $KEYS new keys ($CONNECTIONS connections)"
    # One connection per wrk thread: each stops itself after its share.
    wrk -t"$CONNECTIONS" -c"$CONNECTIONS" -d600s --timeout 10s -s "$HERE/unique_keys.lua" "$URL" \
      -- "$policy" "$share" >"$WORK/wrk-$algorithm.txt" 2>&1 &
    CHILD_PID=$!
    started=$SECONDS
    held=0
    while ((SECONDS - started < 600)); do
      held=$(held_keys || echo 0)
      ((${held:-0} >= KEYS)) && break
      kill -0 "$CHILD_PID" 2>/dev/null || die "wrk ended before the keys were held: $(tail -n 3 "$WORK/wrk-$algorithm.txt")"
      sleep 1
    done
    ((${held:-0} >= KEYS)) || die "the replica held ${held:-0} of $KEYS keys after 600 s"
    stop_child
    took=$((SECONDS - started))
    loaded=$(rss_kib "$REPLICA_PID")
    per_key=$(awk -v a="$loaded" -v b="$idle" -v n="$held" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }')
    REPLICA_ROWS+=("| \`$algorithm\` | $(mib "$idle") MiB | $held | $(mib "$loaded") MiB | $per_key B | ${took} s |")
    stop_replica
  done
fi

REDIS_ROWS=()
if [[ ${SKIP_REDIS:-0} != 1 ]]; then
  start_private_redis
  used_memory() { rcli INFO memory | tr -d '\r' | sed -n 's/^used_memory://p'; }
  for algorithm in $ALGORITHMS; do
    script="$ROOT/crates/slidegate-redis/lua/$algorithm.lua"
    [[ -f $script ]] || die "no $script"
    rcli FLUSHALL >/dev/null
    rcli SCRIPT FLUSH >/dev/null
    sha=$(rcli -x SCRIPT LOAD <"$script" | tr -d '\r')
    [[ $sha =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD of $script answered: $sha"
    keys_per_call=$(sed -n 's/^if #KEYS ~= \([0-9]*\) .*/\1/p' "$script")
    [[ $keys_per_call =~ ^[0-9]+$ ]] || die "cannot tell how many keys $algorithm.lua takes"
    before=$(used_memory)
    pipe_calls "$sha" "$keys_per_call" "$algorithm" 0 "$REDIS_KEYS" 1 0 "$WINDOW_US" "$LIMIT"
    after=$(used_memory)
    created=$(rcli DBSIZE | tr -d '\r')
    ((created > 0)) || die "$algorithm.lua created no key"
    volatile=$(rcli INFO keyspace | tr -d '\r' | sed -n 's/^db0:keys=[0-9]*,expires=\([0-9]*\).*/\1/p')
    [[ $volatile == "$created" ]] || die "$algorithm.lua left keys without an expiry ($volatile of $created expire)"
    one=0
    for n in $(seq "$keys_per_call"); do
      bytes=$(rcli MEMORY USAGE "{bench:$algorithm:0}:$n" SAMPLES 0 | tr -d '\r')
      [[ $bytes =~ ^[0-9]+$ ]] && one=$((one + bytes))
    done
    per_check=$(awk -v a="$after" -v b="$before" -v n="$REDIS_KEYS" 'BEGIN { printf "%.0f", (a - b) / n }')
    REDIS_ROWS+=("| \`$algorithm\` | $REDIS_KEYS | $created | $per_check B | $one B |")
  done
fi

report() {
  printf '# Memory: the embedded store and Redis\n\n'
  printf '%s UTC, commit %s, %s cores; key names like {bench:sliding_log:123456}:1.\n\n' \
    "$(date -u '+%Y-%m-%d %H:%M')" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(nproc)"
  if ((${#REPLICA_ROWS[@]})); then
    printf '| embedded store | replica idle (VmRSS) | keys held | replica holding them | per key | load took |\n'
    printf '|---|---:|---:|---:|---:|---:|\n'
    printf '%s\n' "${REPLICA_ROWS[@]}"
    printf '\n'
  fi
  if ((${#REDIS_ROWS[@]})); then
    printf '| Redis %s | limited keys (1 check each) | Redis keys | used_memory per limited key | MEMORY USAGE of one |\n' "$REDIS_VERSION"
    printf '|---|---:|---:|---:|---:|\n'
    printf '%s\n' "${REDIS_ROWS[@]}"
  fi
}
mkdir -p "$REPORT_DIR"
REPORT_FILE="$REPORT_DIR/memory-$(date -u +%Y%m%dT%H%M%SZ).md"
report | tee "$REPORT_FILE"
log "report written to ${REPORT_FILE#"$ROOT"/}"
