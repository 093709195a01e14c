#!/usr/bin/env bash
# Installs (if missing), starts and stops the local redis-server the Redis tests use:
# 127.0.0.1:${EVENTING_REDIS_PORT:-6390}, AOF with `appendfsync always` (a durable
# send is on disk before Redis answers), no RDB snapshots, its data in a fresh temp
# dir. Source it (redis_start, redis_stop, redis_restart, redis_up, redis_python),
# or run it with `start`, `stop`, `restart`, `status` or `python`.
#
# Debian's package may start a server of its own on 6379 (unless policy-rc.d stops
# it): we never use or stop that one; ours has its own port. A server already
# answering on our port is used as it is and never stopped by redis_stop
# (REDIS_STARTED_HERE stays 0). The state of a server started here (pid, temp dir)
# is kept in $REDIS_STATE so that `stop` and `restart` from another shell (the
# tests' restart_broker) find it; `restart` keeps the data dir, so what the AOF
# holds survives.
#
# `python` prints the path of a Python with the `redis` package (a venv under
# ~/.cache/eventing, made on first use) for the interop test, or fails if there is
# no python3.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/detach.sh"
source "$(dirname "${BASH_SOURCE[0]}")/pyvenv.sh"

REDIS_PORT=${EVENTING_REDIS_PORT:-6390}
REDIS_STATE=${REDIS_STATE:-/tmp/eventing-redis-${REDIS_PORT}.state}
REDIS_STARTED_HERE=${REDIS_STARTED_HERE:-0}
REDIS_VENV=${REDIS_VENV:-${HOME:-/tmp}/.cache/eventing/redis-venv}

redis_install() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 &&
        command -v redis-sentinel >/dev/null 2>&1; then
        return 0
    fi
    echo "redis: installing redis-server, redis-sentinel and redis-tools (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server redis-sentinel redis-tools >/dev/null
}

# True once the server on our port answers PING.
redis_up() {
    [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
}

# True if something accepts connections on our port.
redis_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/${REDIS_PORT}") 2>/dev/null
}

# True while process $1 exists and is not a zombie (kill -0 succeeds on zombies).
redis_alive() {
    local pid=$1 state
    [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [ "$state" != Z ]
}

redis_wait_up() {
    local deadline=$((SECONDS + ${1:-30}))
    until redis_up; do
        if ((SECONDS > deadline)); then
            echo "redis: did not come up; last log lines:" >&2
            [ -n "${REDIS_DIR:-}" ] && tail -n 20 "$REDIS_DIR/redis.log" >&2 || true
            return 1
        fi
        sleep 0.05
    done
    # PING answers while the AOF is still loading (LOADING errors for the rest).
    until [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info persistence 2>/dev/null |
        tr -d '\r' | sed -n 's/^loading://p')" = 0 ]; do
        if ((SECONDS > deadline)); then
            echo "redis: still loading its data" >&2
            return 1
        fi
        sleep 0.05
    done
}

# Launches redis-server on the data dir $REDIS_DIR (kept across restarts).
redis_launch() {
    mkdir -p "$REDIS_DIR"
    rm -f "$REDIS_DIR/redis.pid"
    (close_inherited_fds; setsid redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" \
        --appendonly yes --appendfsync always --save '' --repl-diskless-sync-delay 0 \
        --daemonize no --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
        </dev/null >/dev/null 2>&1 &)
    redis_wait_up 30
    local i
    for i in $(seq 1 100); do
        [ -s "$REDIS_DIR/redis.pid" ] && break
        sleep 0.05
    done
    REDIS_PID=$(cat "$REDIS_DIR/redis.pid")
    printf 'REDIS_DIR=%s\nREDIS_PID=%s\n' "$REDIS_DIR" "$REDIS_PID" >"$REDIS_STATE"
}

redis_start() {
    if redis_up || redis_port_open; then
        if redis_up; then
            echo "redis: already running on 127.0.0.1:${REDIS_PORT}; using it"
        else
            echo "redis: port ${REDIS_PORT} is taken by something that does not answer PING; using it" >&2
        fi
        return 0
    fi
    redis_install
    REDIS_DIR=$(mktemp -d /tmp/eventing-redis.XXXXXX)
    echo "redis: starting redis-server on 127.0.0.1:${REDIS_PORT} (AOF, appendfsync always; data and log in $REDIS_DIR)"
    redis_launch
    REDIS_STARTED_HERE=1
    export REDIS_STARTED_HERE REDIS_DIR REDIS_PID
    echo "redis: up (pid $REDIS_PID)"
}

# SIGTERM (Redis fsyncs its AOF and exits) and wait until the process is gone (not
# merely a zombie). Only a redis-server: a stale state file must not make us signal
# a reused pid.
redis_kill() {
    local pid=$1 i
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q redis-server; then
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 200); do
        redis_alive "$pid" || return 0
        sleep 0.05
    done
    echo "redis: pid $pid still running after 10 s; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

redis_load_state() {
    if [ -r "$REDIS_STATE" ]; then
        # shellcheck disable=SC1090
        source "$REDIS_STATE"
        return 0
    fi
    return 1
}

redis_stop() {
    if [[ "$REDIS_STARTED_HERE" != 1 ]]; then
        return 0
    fi
    if redis_load_state; then
        echo "redis: stopping (pid $REDIS_PID)"
        redis_kill "$REDIS_PID"
        rm -rf "$REDIS_DIR" "$REDIS_STATE"
    fi
    REDIS_STARTED_HERE=0
}

# Restarts the server started by redis_start on the SAME data dir: the AOF is
# replayed (streams, groups, pending entries survive), connections drop. Fails if
# this script did not start the server running on the port.
redis_restart() {
    if ! redis_load_state; then
        echo "redis: no server started by scripts/redis.sh to restart" >&2
        return 1
    fi
    redis_kill "$REDIS_PID"
    redis_launch
    echo "redis: restarted (pid $REDIS_PID)"
}

# A Python with the `redis` package: a venv made on first use (scripts/pyvenv.sh).
# Prints its path.
redis_python() {
    python_with "$REDIS_VENV" redis redis
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
        start) redis_start ;;
        stop) REDIS_STARTED_HERE=1 redis_stop ;;
        restart) redis_restart ;;
        status) redis_up && echo "redis: up" || { echo "redis: down"; exit 1; } ;;
        python) redis_python ;;
        *) echo "usage: $0 start|stop|restart|status|python" >&2; exit 2 ;;
    esac
fi
