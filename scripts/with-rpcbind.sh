#!/usr/bin/env bash
# Runs a command with rpcbind available: starts rpcbind if none runs, and stops it afterwards
# if it was started here. The command's exit status is kept.
set -uo pipefail

started=0
if ! rpcinfo -p localhost >/dev/null 2>&1; then
    rpcbind -w 2>/dev/null || rpcbind
    for _ in $(seq 1 50); do
        rpcinfo -p localhost >/dev/null 2>&1 && break
        sleep 0.1
    done
    if ! rpcinfo -p localhost >/dev/null 2>&1; then
        echo "with-rpcbind: rpcbind did not come up" >&2
        exit 1
    fi
    started=1
fi

"$@"
status=$?

# A test run that crashed can leave the programs it started running: end those of this
# checkout.
pkill -f "^$PWD/.build/(debug|release)/p2p-" 2>/dev/null || true
pkill -f "^$PWD/rpc/p2p-oplog" 2>/dev/null || true

if [ "$started" -eq 1 ]; then
    pkill -x rpcbind 2>/dev/null || true
fi
exit $status
