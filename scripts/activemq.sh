#!/usr/bin/env bash
# Installs (if missing), starts and stops the private ActiveMQ Classic instance the
# STOMP-on-ActiveMQ tests use: STOMP on 127.0.0.1:${EVENTING_ACTIVEMQ_STOMP_PORT:-61623}
# (RabbitMQ's STOMP keeps 61613), OpenWire on 127.0.0.1:${EVENTING_ACTIVEMQ_OPENWIRE_PORT:-61626},
# no AMQP, web console or JMX (Debian's package has none of them), KahaDB and the log in
# a temp dir that `restart` keeps. Source it (activemq_start, activemq_stop,
# activemq_restart, activemq_up, activemq_python), or run it with `start`, `stop`,
# `restart`, `status` or `python` (prints a python3 that has stomp.py, made on demand
# in a venv under ~/.cache/eventing).
#
# A server already answering on the STOMP port is used as it is and never stopped by
# activemq_stop (ACTIVEMQ_STARTED_HERE stays 0). The state of a broker started here
# (pid, dir) is kept in $ACTIVEMQ_STATE so that `stop` and `restart` from another
# shell (the tests' restart_broker) find it. See ../docs/stomp.md#activemq.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/detach.sh"
source "$(dirname "${BASH_SOURCE[0]}")/pyvenv.sh"

ACTIVEMQ_STOMP_PORT=${EVENTING_ACTIVEMQ_STOMP_PORT:-61623}
ACTIVEMQ_OPENWIRE_PORT=${EVENTING_ACTIVEMQ_OPENWIRE_PORT:-61626}
ACTIVEMQ_STATE=${ACTIVEMQ_STATE:-/tmp/eventing-activemq-${ACTIVEMQ_STOMP_PORT}.state}
ACTIVEMQ_STARTED_HERE=${ACTIVEMQ_STARTED_HERE:-0}
ACTIVEMQ_HOME=/usr/share/activemq

activemq_install() {
    if [ -r "$ACTIVEMQ_HOME/bin/activemq.jar" ] && id activemq >/dev/null 2>&1; then
        return 0
    fi
    echo "activemq: installing activemq (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq activemq >/dev/null
}

# True if something accepts connections on the STOMP port.
activemq_port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' probe "$ACTIVEMQ_STOMP_PORT" 2>/dev/null
}

# True once the STOMP port answers CONNECT with CONNECTED.
activemq_up() {
    local answer
    answer=$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "CONNECT\naccept-version:1.2\nhost:localhost\n\n\0" >&3
        head -c 9 <&3
        printf "DISCONNECT\n\n\0" >&3' probe "$ACTIVEMQ_STOMP_PORT" 2>/dev/null) || return 1
    [ "$answer" = CONNECTED ]
}

# True while process $1 exists and is not a zombie (PID 1 may reap a detached
# server about a second late, and kill -0 succeeds on zombies).
activemq_alive() {
    local pid=$1 state
    [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [ "$state" != Z ]
}

activemq_wait_up() {
    local deadline=$((SECONDS + ${1:-60}))
    until activemq_up; do
        if ((SECONDS > deadline)) || ! activemq_alive "$ACTIVEMQ_PID"; then
            echo "activemq: did not come up; last log lines:" >&2
            tail -n 30 "$ACTIVEMQ_DIR/data/activemq.log" "$ACTIVEMQ_DIR/console.log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
}

# Writes the broker's configuration into $ACTIVEMQ_DIR/conf. The children of
# <broker> must be in alphabetical order (the schema says so). schedulerSupport:
# the broker's persistent job scheduler (KahaDB's scheduler store under data/),
# which eventing's delayed retries and scheduled sends use (AMQ_SCHEDULED_DELAY).
activemq_configure() {
    mkdir -p "$ACTIVEMQ_DIR/conf" "$ACTIVEMQ_DIR/data" "$ACTIVEMQ_DIR/tmp"
    cat >"$ACTIVEMQ_DIR/conf/activemq.xml" <<EOF
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
                           http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="eventing-test"
          dataDirectory="$ACTIVEMQ_DIR/data" schedulerSupport="true" persistent="true">
    <destinationPolicy>
      <policyMap>
        <policyEntries>
          <!-- Queues empty and unused for 60 s are removed (STOMP cannot delete the
               queues of finished tests). A browse (eventing's dead-letter listing and
               count) sees up to maxBrowsePageSize messages: 400 by default. -->
          <policyEntry queue="&gt;" gcInactiveDestinations="true" inactiveTimoutBeforeGC="60000"
                       maxBrowsePageSize="65535"/>
        </policyEntries>
      </policyMap>
    </destinationPolicy>
    <persistenceAdapter>
      <kahaDB directory="$ACTIVEMQ_DIR/data/kahadb"/>
    </persistenceAdapter>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage limit="200 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="4 gb"/></storeUsage>
        <tempUsage><tempUsage limit="2 gb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <transportConnectors>
      <transportConnector name="openwire" uri="tcp://127.0.0.1:${ACTIVEMQ_OPENWIRE_PORT}"/>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:${ACTIVEMQ_STOMP_PORT}?transport.closeAsync=false"/>
    </transportConnectors>
  </broker>
</beans>
EOF
    # Debian's ActiveMQ logs through log4j 1.2: without this file there is no log.
    cat >"$ACTIVEMQ_DIR/conf/log4j.properties" <<EOF
log4j.rootLogger=INFO, logfile
log4j.logger.org.apache.activemq.transport.stomp=WARN
log4j.appender.logfile=org.apache.log4j.RollingFileAppender
log4j.appender.logfile.file=$ACTIVEMQ_DIR/data/activemq.log
log4j.appender.logfile.maxFileSize=10240KB
log4j.appender.logfile.maxBackupIndex=2
log4j.appender.logfile.layout=org.apache.log4j.PatternLayout
log4j.appender.logfile.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
EOF
    chown -R activemq:activemq "$ACTIVEMQ_DIR/data" "$ACTIVEMQ_DIR/tmp"
}

# Launches the broker on the data of $ACTIVEMQ_DIR (kept across restarts), as
# user activemq, detached; waits until STOMP answers.
activemq_launch() {
    local dir=$ACTIVEMQ_DIR
    (close_inherited_fds; setsid setpriv --reuid=activemq --regid=activemq --init-groups \
        java -Xms128m -Xmx1g -Djava.awt.headless=true \
        -Dactivemq.home="$ACTIVEMQ_HOME" -Dactivemq.base="$dir" -Dactivemq.conf="$dir/conf" \
        -Dactivemq.data="$dir/data" -Djava.io.tmpdir="$dir/tmp" \
        -Dlog4j.configuration="file:$dir/conf/log4j.properties" \
        -jar "$ACTIVEMQ_HOME/bin/activemq.jar" start "xbean:file:$dir/conf/activemq.xml" \
        </dev/null >"$dir/console.log" 2>&1 & echo $! >"$dir/activemq.pid")
    ACTIVEMQ_PID=$(cat "$dir/activemq.pid")
    printf 'ACTIVEMQ_DIR=%s\nACTIVEMQ_PID=%s\n' "$dir" "$ACTIVEMQ_PID" >"$ACTIVEMQ_STATE"
    activemq_wait_up 60
}

activemq_start() {
    if activemq_up || activemq_port_open; then
        if activemq_up; then
            echo "activemq: already running on 127.0.0.1:${ACTIVEMQ_STOMP_PORT}; using it"
        else
            echo "activemq: port ${ACTIVEMQ_STOMP_PORT} is taken by something that does not answer STOMP" >&2
            return 1
        fi
        return 0
    fi
    activemq_install
    ACTIVEMQ_DIR=$(mktemp -d /tmp/eventing-activemq.XXXXXX)
    chmod 755 "$ACTIVEMQ_DIR"
    echo "activemq: starting ActiveMQ on 127.0.0.1:${ACTIVEMQ_STOMP_PORT} (STOMP), :${ACTIVEMQ_OPENWIRE_PORT} (OpenWire); data and log in $ACTIVEMQ_DIR"
    activemq_configure
    activemq_launch
    ACTIVEMQ_STARTED_HERE=1
    export ACTIVEMQ_STARTED_HERE ACTIVEMQ_DIR ACTIVEMQ_PID
    echo "activemq: up (pid $ACTIVEMQ_PID)"
}

# SIGTERM and wait until the process is gone (not merely a zombie). Only the java
# of an ActiveMQ: a stale state file must not make us signal a reused pid.
activemq_kill() {
    local pid=$1 i
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q activemq.jar; then
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 300); do
        activemq_alive "$pid" || return 0
        sleep 0.05
    done
    echo "activemq: pid $pid still running after 15 s; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

activemq_load_state() {
    if [ -r "$ACTIVEMQ_STATE" ]; then
        # shellcheck disable=SC1090
        source "$ACTIVEMQ_STATE"
        return 0
    fi
    return 1
}

activemq_stop() {
    if [[ "$ACTIVEMQ_STARTED_HERE" != 1 ]]; then
        return 0
    fi
    if activemq_load_state; then
        echo "activemq: stopping (pid $ACTIVEMQ_PID)"
        activemq_kill "$ACTIVEMQ_PID"
        rm -rf "$ACTIVEMQ_DIR" "$ACTIVEMQ_STATE"
    fi
    ACTIVEMQ_STARTED_HERE=0
}

# Restarts the broker started by activemq_start on the SAME data: persistent
# messages, scheduled ones and queues survive, connections drop. The
# configuration is written again first, so a changed one takes effect. Fails if
# this script did not start the broker running on the port.
activemq_restart() {
    if ! activemq_load_state; then
        echo "activemq: no broker started by scripts/activemq.sh to restart" >&2
        return 1
    fi
    activemq_kill "$ACTIVEMQ_PID"
    activemq_configure
    activemq_launch
    echo "activemq: restarted (pid $ACTIVEMQ_PID)"
}

# Prints the path of a python3 that can `import stomp` (stomp.py), creating a venv
# under ~/.cache/eventing on first use (scripts/pyvenv.sh).
activemq_python() {
    python_with "${EVENTING_STOMP_PY_VENV:-$HOME/.cache/eventing/stomp-py}" stomp 'stomp.py>=8,<10'
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
        start) activemq_start ;;
        stop) ACTIVEMQ_STARTED_HERE=1 activemq_stop ;;
        restart) activemq_restart ;;
        status) activemq_up && echo "activemq: up" || { echo "activemq: down"; exit 1; } ;;
        python) activemq_python ;;
        *) echo "usage: $0 start|stop|restart|status|python" >&2; exit 2 ;;
    esac
fi
