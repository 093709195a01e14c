#!/usr/bin/env bash
# Starts and stops the throwaway PostgreSQL 15 cluster the outbox tests use: a fresh
# cluster in a temp dir (initdb as user `postgres`: the server refuses root), on
# 127.0.0.1:${EVENTING_PG_PORT:-5442} with its socket in that dir, database
# `eventing`, trust auth, fsync off (test data only).
# Source it (postgres_start, postgres_stop, postgres_up; then EVENTING_PG_URL is
# exported), or run it with `start`, `stop` or `status`.
#
# A server already answering on the port is used as it is and never stopped by
# postgres_stop (PG_STARTED_HERE stays 0). The state of a cluster started here is
# kept in $PG_STATE so that `stop` from another shell finds it.
set -euo pipefail

PG_PORT=${EVENTING_PG_PORT:-5442}
PG_STATE=${PG_STATE:-/tmp/eventing-postgres-${PG_PORT}.state}
PG_STARTED_HERE=${PG_STARTED_HERE:-0}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_DB=eventing

postgres_install() {
    if [ -x "$PG_BIN/initdb" ]; then
        return 0
    fi
    echo "postgres: installing postgresql (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
}

# Runs a server binary as `postgres` when we are root (setpriv execs directly).
postgres_as() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups "$@"
    else
        "$@"
    fi
}

postgres_up() {
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null
}

postgres_start() {
    export EVENTING_PG_URL=${EVENTING_PG_URL:-postgres://postgres@127.0.0.1:${PG_PORT}/${PG_DB}}
    if postgres_up; then
        echo "postgres: already running on 127.0.0.1:${PG_PORT}; using it"
        return 0
    fi
    postgres_install
    PG_DIR=$(mktemp -d /tmp/eventing-postgres.XXXXXX)
    if [ "$(id -u)" = 0 ]; then
        chown postgres:postgres "$PG_DIR"
    fi
    chmod 700 "$PG_DIR"
    echo "postgres: starting a fresh cluster on 127.0.0.1:${PG_PORT} (data and log in $PG_DIR)"
    postgres_as "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
        --no-sync >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; return 1; }
    postgres_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/pg.log" -w -t 30 \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DIR -c fsync=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null || { tail -n 20 "$PG_DIR/pg.log" >&2; return 1; }
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$PG_DB"
    printf 'PG_DIR=%s\n' "$PG_DIR" >"$PG_STATE"
    PG_STARTED_HERE=1
    export PG_STARTED_HERE PG_DIR
    echo "postgres: up ($EVENTING_PG_URL)"
}

postgres_stop() {
    if [[ "$PG_STARTED_HERE" != 1 ]]; then
        return 0
    fi
    if [ -r "$PG_STATE" ]; then
        # shellcheck disable=SC1090
        source "$PG_STATE"
        if [ -f "$PG_DIR/data/postmaster.pid" ]; then
            echo "postgres: stopping ($PG_DIR)"
            postgres_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null || true
        fi
        rm -rf "$PG_DIR" "$PG_STATE"
    fi
    PG_STARTED_HERE=0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
        start) postgres_start ;;
        stop) PG_STARTED_HERE=1 postgres_stop ;;
        status) postgres_up && echo "postgres: up" || { echo "postgres: down"; exit 1; } ;;
        *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
    esac
fi
