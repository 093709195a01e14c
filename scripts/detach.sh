#!/usr/bin/env bash
# Sourced by the broker scripts: what a server launched in the background must not
# inherit. A `flock FILE bash scripts/test.sh` passes the lock's descriptor down; a
# broker (re)started from there would hold the lock for as long as it runs.

# Closes every descriptor above 2 of the current (sub)shell. Call it first thing in
# the subshell that launches a server.
close_inherited_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
            eval "exec $fd>&-" 2>/dev/null || true
        fi
    done
}
