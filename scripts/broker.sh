#!/usr/bin/env bash
# Installs (if missing), starts and stops the local RabbitMQ the AMQP and STOMP tests
# use: AMQP on 127.0.0.1:5672, STOMP on 127.0.0.1:61613. Source it, or run it with
# `start`, `stop`, `restart` or `status`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/detach.sh"

BROKER_LOG=${BROKER_LOG:-/tmp/eventing-rabbitmq.log}
BROKER_STARTED_HERE=${BROKER_STARTED_HERE:-0}

broker_up() {
    timeout 20 rabbitmqctl -q status >/dev/null 2>&1
}

broker_install() {
    if command -v rabbitmq-server >/dev/null 2>&1; then
        return 0
    fi
    echo "broker: installing rabbitmq-server (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
}

broker_configure() {
    # Loopback only: this broker is for tests.
    mkdir -p /etc/rabbitmq
    cat > /etc/rabbitmq/rabbitmq.conf <<'CONF'
listeners.tcp.1 = 127.0.0.1:5672
stomp.listeners.tcp.1 = 127.0.0.1:61613
loopback_users = none
management.tcp.ip = 127.0.0.1
CONF
    cat > /etc/rabbitmq/rabbitmq-env.conf <<'CONF'
NODE_IP_ADDRESS=127.0.0.1
NODENAME=rabbit@localhost
CONF
    rabbitmq-plugins --offline enable rabbitmq_stomp >/dev/null
}

broker_wait() {
    local deadline=$((SECONDS + ${1:-120}))
    until broker_up; do
        if ((SECONDS > deadline)); then
            echo "broker: did not come up; last log lines:" >&2
            tail -n 40 "$BROKER_LOG" >&2 || true
            return 1
        fi
        sleep 1
    done
    timeout 60 rabbitmqctl -q await_startup >/dev/null 2>&1 || true
    # STOMP answers a moment after AMQP.
    local i
    for i in $(seq 1 60); do
        if (exec 3<>/dev/tcp/127.0.0.1/61613) 2>/dev/null; then
            return 0
        fi
        sleep 1
    done
    echo "broker: STOMP port 61613 not answering" >&2
    return 1
}

broker_start() {
    broker_install
    if broker_up; then
        echo "broker: already running"
        broker_configure_users
        return 0
    fi
    broker_configure
    echo "broker: starting rabbitmq-server (log $BROKER_LOG)"
    (close_inherited_fds; setsid rabbitmq-server >"$BROKER_LOG" 2>&1 &)
    BROKER_STARTED_HERE=1
    export BROKER_STARTED_HERE
    broker_wait 180
    broker_configure_users
    echo "broker: up"
}

broker_configure_users() {
    # The default guest user works on loopback; nothing else to do.
    true
}

broker_stop() {
    if [[ "$BROKER_STARTED_HERE" == 1 ]]; then
        echo "broker: stopping"
        timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || true
    fi
}

# Restarts the broker application (the node stays up): durable queues and persistent
# messages survive, connections drop.
broker_restart_app() {
    rabbitmqctl -q stop_app >/dev/null
    rabbitmqctl -q start_app >/dev/null
    broker_wait 120
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
        start) broker_start ;;
        stop) BROKER_STARTED_HERE=1 broker_stop ;;
        restart) broker_restart_app ;;
        status) broker_up && echo "broker: up" || { echo "broker: down"; exit 1; } ;;
        *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
    esac
fi
