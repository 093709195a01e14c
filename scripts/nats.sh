#!/usr/bin/env bash
# Installs (if missing), starts and stops the local nats-server (JetStream) the NATS
# tests use: client port 127.0.0.1:${EVENTING_NATS_PORT:-4222}, monitoring on
# 127.0.0.1:${EVENTING_NATS_MONITOR_PORT:-8222}, its store in a fresh temp dir.
# Source it (nats_start, nats_stop, nats_restart, nats_up), or run it with
# `start`, `stop`, `restart` or `status`.
#
# A server already answering on the port is used as it is and never stopped by
# nats_stop (NATS_STARTED_HERE stays 0). The state of a server started here (pid,
# temp dir) is kept in $NATS_STATE so that `stop` and `restart` from another shell
# (the tests' restart_broker) find it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/detach.sh"

NATS_PORT=${EVENTING_NATS_PORT:-4222}
NATS_MONITOR_PORT=${EVENTING_NATS_MONITOR_PORT:-8222}
NATS_STATE=${NATS_STATE:-/tmp/eventing-nats-${NATS_PORT}.state}
NATS_STARTED_HERE=${NATS_STARTED_HERE:-0}

nats_install() {
    if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
        return 0
    fi
    echo "nats: installing nats-server (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nats-server >/dev/null
}

nats_bin() {
    command -v nats-server 2>/dev/null || echo /usr/sbin/nats-server
}

# True once JetStream answers on the monitoring port.
nats_up() {
    curl -fsS --max-time 2 "http://127.0.0.1:${NATS_MONITOR_PORT}/healthz?js-enabled-only=true" >/dev/null 2>&1
}

# True if something accepts connections on the client port.
nats_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/${NATS_PORT}") 2>/dev/null
}

# True while process $1 exists and is not a zombie (PID 1 may reap a detached
# server about a second late, and kill -0 succeeds on zombies).
nats_alive() {
    local pid=$1 state
    [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [ "$state" != Z ]
}

nats_wait_up() {
    local deadline=$((SECONDS + ${1:-30}))
    until nats_up; do
        if ((SECONDS > deadline)); then
            echo "nats: did not come up; last log lines:" >&2
            [ -n "${NATS_DIR:-}" ] && tail -n 20 "$NATS_DIR/nats.log" >&2 || true
            return 1
        fi
        sleep 0.05
    done
}

# Launches nats-server on the store of $NATS_DIR (kept across restarts).
nats_launch() {
    mkdir -p "$NATS_DIR/js"
    (close_inherited_fds; setsid "$(nats_bin)" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$NATS_DIR/js" -n eventing-test \
        -m "$NATS_MONITOR_PORT" -P "$NATS_DIR/nats.pid" -l "$NATS_DIR/nats.log" \
        </dev/null >/dev/null 2>&1 &)
    nats_wait_up 30
    NATS_PID=$(cat "$NATS_DIR/nats.pid")
    printf 'NATS_DIR=%s\nNATS_PID=%s\n' "$NATS_DIR" "$NATS_PID" >"$NATS_STATE"
}

nats_start() {
    if nats_up || nats_port_open; then
        if nats_up; then
            echo "nats: already running on 127.0.0.1:${NATS_PORT}; using it"
        else
            echo "nats: port ${NATS_PORT} is taken by a server without JetStream monitoring; using it" >&2
        fi
        return 0
    fi
    nats_install
    NATS_DIR=$(mktemp -d /tmp/eventing-nats.XXXXXX)
    echo "nats: starting nats-server -js on 127.0.0.1:${NATS_PORT} (store and log in $NATS_DIR)"
    nats_launch
    NATS_STARTED_HERE=1
    export NATS_STARTED_HERE NATS_DIR NATS_PID
    echo "nats: up (pid $NATS_PID)"
}

# SIGTERM and wait until the process is gone (not merely a zombie). Only a
# nats-server: a stale state file must not make us signal a reused pid.
nats_kill() {
    local pid=$1 i
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q nats-server; then
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 200); do
        nats_alive "$pid" || return 0
        sleep 0.05
    done
    echo "nats: pid $pid still running after 10 s; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

nats_load_state() {
    if [ -r "$NATS_STATE" ]; then
        # shellcheck disable=SC1090
        source "$NATS_STATE"
        return 0
    fi
    return 1
}

nats_stop() {
    if [[ "$NATS_STARTED_HERE" != 1 ]]; then
        return 0
    fi
    if nats_load_state; then
        echo "nats: stopping (pid $NATS_PID)"
        nats_kill "$NATS_PID"
        rm -rf "$NATS_DIR" "$NATS_STATE"
    fi
    NATS_STARTED_HERE=0
}

# Restarts the server started by nats_start on the SAME store: durable streams,
# consumers and messages survive, connections drop. Fails if this script did not
# start the server running on the port.
nats_restart() {
    if ! nats_load_state; then
        echo "nats: no server started by scripts/nats.sh to restart" >&2
        return 1
    fi
    nats_kill "$NATS_PID"
    nats_launch
    echo "nats: restarted (pid $NATS_PID)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
        start) nats_start ;;
        stop) NATS_STARTED_HERE=1 nats_stop ;;
        restart) nats_restart ;;
        status) nats_up && echo "nats: up" || { echo "nats: down"; exit 1; } ;;
        *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
    esac
fi
