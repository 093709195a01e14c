#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts RabbitMQ (AMQP and
# STOMP) and nats-server (JetStream) if needed, runs every test of the workspace with
# every provider, and stops the servers again if it started them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/broker.sh
source scripts/nats.sh
source scripts/redis.sh
source scripts/activemq.sh
source scripts/postgres.sh
broker_start
trap 'postgres_stop; activemq_stop; redis_stop; nats_stop; broker_stop' EXIT
nats_start
redis_start
activemq_start
postgres_start # exports EVENTING_PG_URL (eventing-outbox)
export EVENTING_AMQP_URL=${EVENTING_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export EVENTING_STOMP_URL=${EVENTING_STOMP_URL:-stomp://guest:guest@127.0.0.1:61613}
export EVENTING_NATS_URL=${EVENTING_NATS_URL:-nats://127.0.0.1:${NATS_PORT}}
export EVENTING_REDIS_URL=${EVENTING_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT}}
export EVENTING_ACTIVEMQ_URL=${EVENTING_ACTIVEMQ_URL:-stomp://127.0.0.1:${ACTIVEMQ_STOMP_PORT}?broker=activemq}
# With arguments (`-p eventing-stomp`, `--test amqp`, ...) they choose what runs;
# without, the whole workspace.
if [ "$#" -eq 0 ]; then
    set -- --workspace
fi
cargo test --all-features --no-fail-fast "$@"
