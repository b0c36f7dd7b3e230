#!/usr/bin/env bash
# `make run`: brings the whole system up in the foreground: rpcbind (if none runs), the
# operation-log server, the time service and the directory server, each program's output
# prefixed with its name. Ctrl+C stops them all, showing each program's last lines, and leaves
# nothing behind (exit status 0 on a clean stop).
#
# Environment: P2P_PORT (4242), TIME_PORT (8000), WEB_PORT (8080), DATA_DIR (./storage), BUILD (release).
set -uo pipefail
cd "$(dirname "$0")/.."

P2P_PORT=${P2P_PORT:-4242}
TIME_PORT=${TIME_PORT:-8000}
WEB_PORT=${WEB_PORT:-8080}
DATA_DIR=${DATA_DIR:-./storage}
BIN=$(pwd)/.build/${BUILD:-release}

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

# On a terminal, Ctrl+C must reach only this script: with job control each program runs in its
# own process group (so it is stopped in order, the directory server first, rather than all at
# once) and the prefixing `sed`s ignore SIGINT (so that the programs' last lines still show).
interactive=0
if [ -t 0 ] && [ -t 1 ]; then
    interactive=1
    set -m
fi
prefix() { trap '' INT; exec sed -u "s/^/$1 | /"; }
oplog_registered() { rpcinfo -t localhost 536871065 1 >/dev/null 2>&1; }
rpcbind_answers() { rpcinfo -p localhost >/dev/null 2>&1; }

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
    wait_for rpcbind rpcbind_answers
    say "started rpcbind"
fi

# Each program's lines get its name in front; $! stays the program's own pid.
rpc/p2p-oplog > >(prefix "oplog ") 2>&1 &
pids+=($!)
wait_for "the operation-log server" oplog_registered

# No access log: a line per request would fill the pane (p2p-time --access-log turns it on).
"$BIN/p2p-time" --port "$TIME_PORT" > >(prefix "time  ") 2>&1 &
pids+=($!)
wait_for "the time service" port_in_use "$TIME_PORT"

"$BIN/p2p-server" -p "$P2P_PORT" --data-dir "$DATA_DIR" --http-port "$WEB_PORT" > >(prefix "server") 2>&1 &
pids+=($!)
wait_for "the directory server" port_in_use "$P2P_PORT"

client="$BIN/p2p-client -s localhost -p $P2P_PORT"
if [ "$TIME_PORT" != 8000 ]; then client+=" --time-service http://localhost:$TIME_PORT"; fi

cat <<EOF2

  The P2P system is up:
    directory server   p2p-server   0.0.0.0:$P2P_PORT   (data in $DATA_DIR/directory.sqlite)
    time service       p2p-time     http://127.0.0.1:$TIME_PORT   (WSDL: /?wsdl, plain: /time)
    directory web page p2p-server   http://127.0.0.1:$WEB_PORT/   (metrics: /metrics, health: /health)
    operation log      p2p-oplog    ONC-RPC program 0x20000099 v1 and v2, via rpcbind
  Start a client in another terminal, in the folder whose files it may share:
    $client
  (\`make install\` puts p2p-client and the others on PATH.)
  Ctrl+C stops everything.

EOF2

# Until Ctrl+C, or until one of them exits on its own. On a terminal the waiting is done by a
# foreground job, which alone receives Ctrl+C.
if [ "$interactive" -eq 1 ]; then
    tail $(printf -- '--pid=%s ' "${pids[@]}") -f /dev/null
else
    wait -n "${pids[@]}"
fi
for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        say "a program exited; stopping the others"
        stop
        exit 1
    fi
done
stop
say "stopped"
exit 0
