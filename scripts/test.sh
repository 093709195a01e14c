#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts RabbitMQ (AMQP and
# STOMP) if needed, runs every test of the workspace with every provider, and stops
# the broker again if it started it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/broker.sh
broker_start
trap broker_stop EXIT
export EVENTING_AMQP_URL=${EVENTING_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export EVENTING_STOMP_URL=${EVENTING_STOMP_URL:-stomp://guest:guest@127.0.0.1:61613}
# With arguments (`-p eventing-stomp`, `--test amqp`, ...) they choose what runs;
# without, the whole workspace.
if [ "$#" -eq 0 ]; then
    set -- --workspace
fi
cargo test --all-features --no-fail-fast "$@"
