#!/usr/bin/env bash
# `make run`: brings the whole system up in the foreground: rpcbind (if none runs), the
# operation-log server, the time service and the directory server, each program's output
# prefixed with its name. Ctrl+C stops them all and leaves nothing behind.
#
# Environment: P2P_PORT (4242), TIME_PORT (8000), WEB_PORT (8080), DATA_DIR (./storage), BUILD (release).
set -uo pipefail
cd "$(dirname "$0")/.."

P2P_PORT=${P2P_PORT:-4242}
TIME_PORT=${TIME_PORT:-8000}
WEB_PORT=${WEB_PORT:-8080}
DATA_DIR=${DATA_DIR:-./storage}
BIN=.build/${BUILD:-release}

say() { printf '\033[1mrun\033[0m | %s\n' "$*"; }
fail() { say "error: $*"; stop; exit 1; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits until `check` succeeds, for at most 15 s.
wait_for() {
    local what=$1; shift
    for _ in $(seq 1 150); do
        "$@" && return 0
        sleep 0.1
    done
    fail "$what did not come up"
}

pids=()
started_rpcbind=0
stopping=0
stop() {
    [ "$stopping" -eq 1 ] && return
    stopping=1
    if [ ${#pids[@]} -gt 0 ]; then
        say "stopping"
        # Reverse order, one at a time: the directory server first, so that it can still
        # deliver its last log records.
        for (( i=${#pids[@]}-1; i>=0; i-- )); do
            kill -TERM "${pids[$i]}" 2>/dev/null
            wait "${pids[$i]}" 2>/dev/null
        done
    fi
    if [ "$started_rpcbind" -eq 1 ]; then
        pkill -x rpcbind 2>/dev/null
        say "stopped rpcbind (started by make run)"
    fi
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

for port in "$P2P_PORT" "$TIME_PORT" "$WEB_PORT"; do
    if port_in_use "$port"; then
        fail "port $port is already in use (another p2p-server or p2p-time?); free it or set P2P_PORT/TIME_PORT/WEB_PORT"
    fi
done
for program in "$BIN/p2p-server" "$BIN/p2p-time" rpc/p2p-oplog; do
    [ -x "$program" ] || fail "$program is missing: run 'make run' (it builds everything)"
done

if ! rpcinfo -p localhost >/dev/null 2>&1; then
    rpcbind -w 2>/dev/null || rpcbind || fail "cannot start rpcbind"
    started_rpcbind=1
    wait_for rpcbind rpcinfo -p localhost
    say "started rpcbind"
fi

# Each program's lines get its name in front; $! stays the program's own pid.
rpc/p2p-oplog > >(sed -u 's/^/oplog  | /') 2>&1 &
pids+=($!)
wait_for "the operation-log server" rpcinfo -t localhost 536871065 1 >/dev/null

"$BIN/p2p-time" --port "$TIME_PORT" > >(sed -u 's/^/time   | /') 2>&1 &
pids+=($!)
wait_for "the time service" port_in_use "$TIME_PORT"

"$BIN/p2p-server" -p "$P2P_PORT" --data-dir "$DATA_DIR" --http-port "$WEB_PORT" > >(sed -u 's/^/server | /') 2>&1 &
pids+=($!)
wait_for "the directory server" port_in_use "$P2P_PORT"

cat <<EOF2

  The P2P system is up:
    directory server   p2p-server   0.0.0.0:$P2P_PORT   (data in $DATA_DIR/directory.sqlite)
    time service       p2p-time     http://127.0.0.1:$TIME_PORT   (WSDL: /?wsdl, plain: /time)
    directory web page p2p-server   http://127.0.0.1:$WEB_PORT/   (metrics: /metrics, health: /health)
    operation log      p2p-oplog    ONC-RPC program 0x20000099 v1, via rpcbind
  Start a client in another terminal:
    $BIN/p2p-client -s localhost -p $P2P_PORT
  Ctrl+C stops everything.

EOF2

# Until Ctrl+C, or until one of them exits on its own.
wait -n "${pids[@]}"
say "a program exited; stopping the others"
