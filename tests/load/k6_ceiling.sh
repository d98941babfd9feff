#!/usr/bin/env bash
# How many checks per second k6 itself can send on this machine, with nothing
# to measure behind nginx: nginx answers every POST /v1/check with a fixed 200
# (no proxying), k6 runs tests/load/k6_ceiling.js at a constant arrival rate
# with the same settings fleet_run.sh gives it (GOGC, nice). Prints k6's
# latency, dropped iterations and the CPU k6 used (% of one core).
#
#   tests/load/k6_ceiling.sh                 # RATE=15000 (capacity.js's K = 100 peak), 10 s
#   RATE=7500 DURATION=20 tests/load/k6_ceiling.sh
#
# Everything runs on 127.0.0.1 and is stopped on every exit.

set -euo pipefail
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
RATE=${RATE:-15000}
DURATION=${DURATION:-10}
K6_GOGC=${K6_GOGC:-400}
K6_NICE=${K6_NICE:-10}
NGINX_WORKERS=${NGINX_WORKERS:-2}
LOG_NAME=k6_ceiling
# shellcheck source=tests/load/lib.sh
source "$HERE/lib.sh"
[[ $RATE =~ ^[0-9]+$ ]] || die "RATE must be a whole number"
[[ $DURATION =~ ^[0-9]+$ ]] || die "DURATION must be a whole number of seconds"

ensure_k6
for tool in k6 nginx python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/k6_ceiling.XXXXXX")
chmod 755 "$WORK"
NGINX_PID=""
cleanup() {
  [[ -z $NGINX_PID ]] || { kill -TERM "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; }
  rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$(free_port)
cat >"$WORK/nginx.conf" <<CONF
worker_processes $NGINX_WORKERS;
error_log $WORK/error.log;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/client_body;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fastcgi;
  uwsgi_temp_path $WORK/uwsgi;
  scgi_temp_path $WORK/scgi;
  server {
    listen 127.0.0.1:$PORT;
    location / { default_type application/json; return 200 '{"allowed":true}'; }
  }
}
CONF
nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;' </dev/null >/dev/null 2>&1 &
NGINX_PID=$!
for _ in $(seq 1 50); do
  curl -s -o /dev/null -X POST "http://127.0.0.1:$PORT/v1/check" && break
  sleep 0.1
done

echo "k6 alone: $RATE checks/s for ${DURATION}s against a fixed nginx 200 (GOGC=$K6_GOGC, nice $K6_NICE)"
timed=()
# GNU time (Debian package "time") reports the CPU k6 used; without it, only k6's numbers.
[[ -x /usr/bin/time ]] && timed=(/usr/bin/time -f 'k6 CPU: %U s user + %S s system in %e s = %P of one core')
env GOGC="$K6_GOGC" timeout $((DURATION + 60)) nice -n "$K6_NICE" "${timed[@]}" \
  k6 run --no-color -q -e BASE_URL="http://127.0.0.1:$PORT" -e RATE="$RATE" -e DURATION="$DURATION" \
  "$HERE/k6_ceiling.js" 2>&1 | grep -E 'http_req_duration\.|http_reqs|dropped_iterations|k6 CPU'
