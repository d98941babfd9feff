#!/usr/bin/env bash
# The largest K (checks per second per user) the fleet holds under
# capacity.js: one fleet_run.sh per K, increasing, stopping at the first K not
# held. Held = k6's thresholds passed (zero errors, every check consistent),
# the exactness audit passed when run (AUDIT=1), p99 < P99_MS, and at least 99% of the offered
# checks were sent (the rest are k6's dropped iterations: no VU was free, i.e.
# the fleet fell behind).
#
#   tests/load/capacity_search.sh                      # full-length stages (~2 min per K)
#   STAGE_SCALE=0.2 KS="5 10 25 50" tests/load/capacity_search.sh
#
# Settings (environment; the rest is passed to fleet_run.sh, e.g. REPLICAS):
#   KS="2 5 10 25 50 100 150 200"   the K values tried, in order
#   STAGE_SCALE=0.2             stage durations (1 = 80 s per run)
#   P99_MS=10                   the p99 bound
#   MIN_SENT_PCT=99             sent / offered below this = not held
#   CEILING_REQUESTS=0          fleet_run's Redis ceiling run (skipped by default)
#   AUDIT=0                     fleet_run's exactness audit (off by default, see below)
#   OUT_DIR=target/load-report/<timestamp>-capacity-search
#
# Writes OUT_DIR/summary.md (one row per K, the verdict) and OUT_DIR/K<k>/
# (each run's report, charts and logs). Bounded: each run is killed after
# 80 s x STAGE_SCALE + 180 s; at most as many runs as KS has values.
# Exit status: 0 when at least one K was held, 1 otherwise.

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/load"
KS=${KS:-2 5 10 25 50 100 150 200}
STAGE_SCALE=${STAGE_SCALE:-0.2}
P99_MS=${P99_MS:-10}
MIN_SENT_PCT=${MIN_SENT_PCT:-99}
export CEILING_REQUESTS=${CEILING_REQUESTS:-0}
# No per-decision audit log by default: capacity.js's keys never reach their
# limit (1000/s per key), so the audit could only ever say "exact", and
# writing a line per check cost k6 CPU the fleet needs. AUDIT=1 turns it on.
export AUDIT=${AUDIT:-0}
OUT=${OUT_DIR:-$ROOT/target/load-report/$(date -u +%Y%m%dT%H%M%SZ)-capacity-search}

LOG_NAME=capacity_search
# shellcheck source=tests/load/lib.sh
source "$HERE/lib.sh"

[[ $STAGE_SCALE =~ ^[0-9]*[.]?[0-9]+$ ]] || die "STAGE_SCALE must be a positive number"
[[ $P99_MS =~ ^[0-9]+([.][0-9]+)?$ ]] || die "P99_MS must be a number of ms"
[[ $MIN_SENT_PCT =~ ^[0-9]+([.][0-9]+)?$ ]] || die "MIN_SENT_PCT must be a number"
read -r -a ks <<<"$KS"
((${#ks[@]} > 0)) || die "KS is empty"
for k in "${ks[@]}"; do
  [[ $k =~ ^[0-9]*[.]?[0-9]+$ ]] || die "KS must hold positive numbers (got $k)"
done
RUN_TIMEOUT_S=$(awk -v s="$STAGE_SCALE" 'BEGIN { printf "%d", 80 * s + 180 }')
mkdir -p "$OUT"

CHILD_PID=""
on_signal() {
  log "interrupted"
  if [[ -n $CHILD_PID ]]; then
    # timeout passes TERM on to fleet_run.sh, which stops its fleet.
    kill -TERM "$CHILD_PID" 2>/dev/null || true
    wait "$CHILD_PID" 2>/dev/null || true
  fi
  exit 130
}
trap on_signal INT TERM

# Build once; every run then uses the binary as it is.
PROFILE=${PROFILE:-release}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  build_flags=()
  [[ $PROFILE == release ]] && build_flags=(--release)
  log "cargo build ${build_flags[*]}"
  (cd "$ROOT" && cargo build "${build_flags[@]}" --quiet --bin slidegate)
fi

summary=$OUT/summary.md
{
  echo "# Capacity search ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))"
  echo
  echo "capacity.js through tests/load/fleet_run.sh, STAGE_SCALE=$STAGE_SCALE, ${REPLICAS:-3} replicas;"
  echo "each stage offers users × K checks/s (peak 150 × K). Held: zero errors, audit exact (when run),"
  echo "p99 < $P99_MS ms, sent ≥ $MIN_SENT_PCT% of offered."
  echo
  echo "| K | peak offered/s | sent / offered | achieved checks/s | errors | p50 | p95 | p99 | held |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
} >"$summary"

best=""
for k in "${ks[@]}"; do
  run_dir="$OUT/K$k"
  log "K=$k: SCENARIO=capacity.js K=$k STAGE_SCALE=$STAGE_SCALE fleet_run.sh (bounded to ${RUN_TIMEOUT_S}s)"
  status=0
  SCENARIO=capacity.js K="$k" STAGE_SCALE="$STAGE_SCALE" P99_MS="$P99_MS" OUT_DIR="$run_dir" SKIP_BUILD=1 \
    timeout "$RUN_TIMEOUT_S" "$HERE/fleet_run.sh" >"$OUT/K$k.log" 2>&1 &
  CHILD_PID=$!
  wait "$CHILD_PID" || status=$?
  CHILD_PID=""
  if [[ ! -s $run_dir/summary.json ]]; then
    log "K=$k: no summary (fleet_run exit $status): $(tail -n 5 "$OUT/K$k.log")"
    echo "| $k | | | | | | | | no (run failed, exit $status; see K$k.log) |" >>"$summary"
    break
  fi
  # One line: the row, then the verdict (held / the reasons it was not).
  row=$(python3 - "$run_dir/summary.json" "$P99_MS" "$MIN_SENT_PCT" "$status" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
p99_bound, min_sent, status = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
m, meta = data["metrics"], data["slidegate"]
count = lambda n: m.get(n, {}).get("values", {}).get("count", 0)
d = m.get("http_req_duration", {}).get("values", {})
sent, offered, errors = count("http_reqs"), meta["offered"], count("errors")
seconds = data["state"]["testRunDurationMs"] / 1000
peak = max(s["rate"] for s in meta["stages"])
reasons = []
if status != 0:
    reasons.append(f"fleet_run exit {status}")
if errors:
    reasons.append(f"{errors} errors")
if not d.get("p(99)", float("inf")) < p99_bound:
    reasons.append(f"p99 {d.get('p(99)', 0):.2f} ms")
if 100 * sent / offered < min_sent:
    reasons.append(f"sent {100 * sent / offered:.1f}%")
verdict = "**yes**" if not reasons else "no: " + ", ".join(reasons)
print(f"| {meta['k']:g} | {peak:,} | {sent:,} / {offered:,.0f} ({100 * sent / offered:.1f}%) | "
      f"{sent / seconds:,.0f} | {errors} | {d.get('med', 0):.2f} ms | {d.get('p(95)', 0):.2f} ms | "
      f"{d.get('p(99)', 0):.2f} ms | {verdict} |")
PY
  )
  echo "$row" >>"$summary"
  log "K=$k: $row"
  if [[ $row != *'**yes**'* ]]; then
    break
  fi
  best=$k
done

{
  echo
  if [[ -n $best ]]; then
    echo "**Largest K held: $best** (peak $(awk -v k="$best" 'BEGIN { printf "%d", 150 * k }') checks/s offered)."
  else
    echo "**No K held.**"
  fi
  echo
  echo "Each run's report and charts: K<k>/report.md."
} >>"$summary"
cat "$summary"
log "summary: ${summary#"$ROOT"/}"
[[ -n $best ]]
