#!/usr/bin/env bash
# `make run`: brings the whole system up in the foreground: rpcbind (if none runs), the
# operation-log server, the time service and the directory server, each program's output
# prefixed with its name. Ctrl+C stops them all, showing each program's last lines, and leaves
# nothing behind (exit status 0 on a clean stop).
#
# `make run-cluster` (--cluster): the same with several directory servers instead of one, on a
# database tier that survives losing a machine (scripts/pg-ha.sh: etcd, two PostgreSQL nodes
# under Patroni with a synchronous replica, HAProxy on PG_PORT sending connections to the
# primary; all of it in $CLUSTER_DIR, PostgreSQL run as the postgres system user when we are
# root), three p2p-server on it (on 127.0.0.1, ports P2P_PORT+1..3, web pages
# WEB_PORT..WEB_PORT+2) and HAProxy on P2P_PORT in front of them (TCP, health checks, the PROXY
# protocol so that the servers see the clients' addresses).
#
# Under --cluster a database node or a directory server that dies is reported and the rest go
# on (the tier is built to survive exactly that); `kill -USR1 <run.sh's pid>`, which the report
# prints, starts every lost one again (a node rejoins and follows the primary). Losing what the
# cluster cannot do without (etcd, either HAProxy, the log or the time service) stops it all.
#
# Environment: P2P_PORT (4242), TIME_PORT (8000), TIME_HOST (127.0.0.1; 0.0.0.0 for clients on
# other machines, as in scripts/nat-demo.sh), WEB_PORT (8080), DATA_DIR (./storage),
# BUILD (release); with --cluster also PG_PORT (55432; etcd, the nodes and their Patroni REST
# APIs take the six ports after it), CLUSTER_DIR (.build/cluster), SERVERS (3).
set -uo pipefail
cd "$(dirname "$0")/.."

CLUSTER=0
if [ "${1:-}" = "--cluster" ]; then CLUSTER=1; fi
P2P_PORT=${P2P_PORT:-4242}
TIME_PORT=${TIME_PORT:-8000}
TIME_HOST=${TIME_HOST:-127.0.0.1}
WEB_PORT=${WEB_PORT:-8080}
DATA_DIR=${DATA_DIR:-./storage}
PG_PORT=${PG_PORT:-55432}
CLUSTER_DIR=${CLUSTER_DIR:-.build/cluster}
SERVERS=${SERVERS:-3}
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
# The signal that stops each program (PostgreSQL: SIGINT, its fast shutdown; SIGTERM would
# wait for the servers' sessions to end).
stop_signals=()
# Each program's name, and the function that starts it again when the rest can go on without
# it for a while (empty: its loss stops everything).
names=()
restarts=()
# Adds the program just started in the background ($!) to those watched and stopped.
watch() { pids+=($!) stop_signals+=(TERM) names+=("$1") restarts+=("${2:-}"); }
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
            kill -"${stop_signals[$i]}" "${pids[$i]}" 2>/dev/null
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

ports=("$P2P_PORT" "$TIME_PORT" "$WEB_PORT")
programs=("$BIN/p2p-server" "$BIN/p2p-time" rpc/p2p-oplog)
if [ "$CLUSTER" -eq 1 ]; then
    ports=("$P2P_PORT" "$TIME_PORT")
    for i in $(seq 0 6); do ports+=($((PG_PORT + i))); done
    for i in $(seq 1 "$SERVERS"); do ports+=($((P2P_PORT + i)) $((WEB_PORT + i - 1))); done
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$pg_bin" ] || fail "PostgreSQL is not installed: run ./setup.sh"
    programs+=("$pg_bin/postgres" /usr/sbin/haproxy /usr/bin/patroni /usr/bin/etcd)
fi
for port in "${ports[@]}"; do
    if port_in_use "$port"; then
        fail "port $port is already in use (another p2p-server, p2p-time, PostgreSQL?); free it or set P2P_PORT/TIME_PORT/WEB_PORT/PG_PORT"
    fi
done
for program in "${programs[@]}"; do
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
watch "the operation-log server"
wait_for "the operation-log server" oplog_registered

# No access log: a line per request would fill the pane (p2p-time --access-log turns it on).
"$BIN/p2p-time" --host "$TIME_HOST" --port "$TIME_PORT" > >(prefix "time  ") 2>&1 &
watch "the time service"
wait_for "the time service" port_in_use "$TIME_PORT"

pg_ready() { "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U p2p -d postgres; }
psql_cluster() { psql -X -q -A -t -h 127.0.0.1 -p "$PG_PORT" -U p2p "$@"; }
# For the quick questions only (configure, primary, sync): a program that runs in the
# background is started with scripts/pg-ha.sh itself, which execs it, so that $! is the
# program (a function would run in a subshell that ignores SIGINT and outlives a kill).
ha() { scripts/pg-ha.sh "$1" "$cluster_dir" "${@:2}"; }
# Patroni says "no action" once a second per node when all is well: only its news are shown.
prefix_patroni() { trap '' INT; exec sed -u -e '/INFO: no action\./d' -e '/INFO: Lock owner: /d' -e "s/^/$1 | /"; }

if [ "$CLUSTER" -eq 0 ]; then
    "$BIN/p2p-server" -p "$P2P_PORT" --data-dir "$DATA_DIR" --http-port "$WEB_PORT" > >(prefix "server") 2>&1 &
    watch "the directory server"
    wait_for "the directory server" port_in_use "$P2P_PORT"
else
    mkdir -p "$CLUSTER_DIR"
    cluster_dir=$(cd "$CLUSTER_DIR" && pwd)
    if [ -d "$cluster_dir/postgres" ]; then
        fail "$cluster_dir holds the single PostgreSQL of an older make run-cluster; move it away (or set CLUSTER_DIR)"
    fi
    PG_PORT=$PG_PORT ETCD_PORT=$((PG_PORT + 1)) ETCD_PEER_PORT=$((PG_PORT + 2)) NODE1_PORT=$((PG_PORT + 3)) \
        NODE2_PORT=$((PG_PORT + 4)) REST1_PORT=$((PG_PORT + 5)) REST2_PORT=$((PG_PORT + 6)) \
        ha configure || fail "cannot configure the database tier in $cluster_dir"
    [ -d "$cluster_dir/node1" ] || say "creating the database tier in $cluster_dir (etcd, Patroni, two PostgreSQL nodes)"
    # `scripts/pg-ha.sh` execs each program, so $! is the program itself. Patroni stops its
    # PostgreSQL when it gets SIGTERM; the nodes stop before etcd, which they need to stop cleanly.
    scripts/pg-ha.sh etcd "$cluster_dir" > >(prefix "etcd  ") 2>&1 &
    watch etcd
    wait_for etcd port_in_use $((PG_PORT + 1))
    # A node started again rejoins: Patroni rewinds it if it was the primary, and it follows.
    start_node() { scripts/pg-ha.sh node "$cluster_dir" "$1" > >(prefix_patroni "node$1 ") 2>&1 & }
    for n in 1 2; do
        start_node "$n"
        watch "database node $n" "start_node $n"
    done
    scripts/pg-ha.sh proxy "$cluster_dir" > >(prefix "pgprx ") 2>&1 &
    watch "the HAProxy in front of PostgreSQL"
    # The first start creates the cluster (initdb, then the replica's copy): up to a minute.
    for _ in $(seq 1 600); do
        ha primary >/dev/null && pg_ready && break
        sleep 0.1
    done
    ha primary >/dev/null || fail "no PostgreSQL primary after a minute (see the node lines above)"
    # The replica's first copy of the primary takes a few seconds more; the servers may start
    # meanwhile, but the promise of no lost change holds only from then on, so wait for it.
    for _ in $(seq 1 600); do
        ha sync >/dev/null && break
        sleep 0.1
    done
    if standby=$(ha sync); then
        say "PostgreSQL primary: node $(ha primary), synchronous standby: node $standby"
    else
        say "warning: PostgreSQL primary: node $(ha primary), no synchronous standby yet (see the node lines)"
    fi
    if [ "$(psql_cluster -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'directory'")" != 1 ]; then
        psql_cluster -d postgres -c "CREATE DATABASE directory" || fail "cannot create the database"
    fi
    store="postgres://p2p@127.0.0.1:$PG_PORT/directory?sslmode=disable"
    backends=""
    start_server() {
        "$BIN/p2p-server" --host 127.0.0.1 -p $((P2P_PORT + $1)) --store "$store" --proxy-protocol \
            --http-port $((WEB_PORT + $1 - 1)) > >(prefix "srv$1  ") 2>&1 &
    }
    for i in $(seq 1 "$SERVERS"); do
        start_server "$i"
        watch "directory server $i" "start_server $i"
        wait_for "directory server $i" port_in_use $((P2P_PORT + i))
        backends+="    server srv$i 127.0.0.1:$((P2P_PORT + i)) send-proxy-v2 check inter 1s"$'\n'
    done
    cat > "$cluster_dir/directory-haproxy.cfg" <<EOF2
# Written by scripts/run.sh --cluster.
global
    maxconn 4096
defaults
    mode tcp
    # A connection refused by a server that died goes to another one.
    retries 3
    option redispatch 1
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend directory
    bind 0.0.0.0:$P2P_PORT
    default_backend servers
backend servers
    balance roundrobin
$backends
EOF2
    /usr/sbin/haproxy -db -f "$cluster_dir/directory-haproxy.cfg" > >(prefix "proxy ") 2>&1 &
    watch "the HAProxy in front of the directory servers"
    wait_for HAProxy port_in_use "$P2P_PORT"
fi

client="$BIN/p2p-client -s localhost -p $P2P_PORT"
if [ "$TIME_PORT" != 8000 ]; then client+=" --time-service http://localhost:$TIME_PORT"; fi

if [ "$CLUSTER" -eq 0 ]; then
    cat <<EOF2

  The P2P system is up:
    directory server   p2p-server   0.0.0.0:$P2P_PORT   (data in $DATA_DIR/directory.sqlite)
EOF2
else
    cat <<EOF2

  The P2P system is up, with $SERVERS directory servers:
    load balancer      haproxy      0.0.0.0:$P2P_PORT   (round robin, PROXY protocol v2, health checks)
    directory servers  p2p-server   127.0.0.1:$((P2P_PORT + 1))-$((P2P_PORT + SERVERS))
    database           PostgreSQL   $store   (HAProxy to the primary)
      under Patroni    node 1 127.0.0.1:$((PG_PORT + 3)), node 2 127.0.0.1:$((PG_PORT + 4)), synchronous replication,
                       etcd 127.0.0.1:$((PG_PORT + 1)); state: patronictl -c $cluster_dir/node1.yml list
EOF2
fi
web_note=""
if [ "$CLUSTER" -eq 1 ]; then web_note=" (server 1; the others on the next ports)"; fi
cat <<EOF2
    time service       p2p-time     http://$TIME_HOST:$TIME_PORT   (WSDL: /?wsdl, plain: /time)
    directory web page p2p-server   http://127.0.0.1:$WEB_PORT/$web_note   (metrics: /metrics, health: /health)
    operation log      p2p-oplog    ONC-RPC program 0x20000099 v1 and v2, via rpcbind
  Start a client in another terminal, in the folder whose files it may share:
    $client
  (\`make install\` puts p2p-client and the others on PATH.)
  Ctrl+C stops everything.

EOF2

# Until Ctrl+C, or until a program the rest cannot do without exits. `wait -n` returns when a
# watched program exits or a signal with a trap arrives (Ctrl+C's INT, USR1); with job control
# on a terminal the programs are in process groups of their own, so Ctrl+C reaches only this
# script.
lost=()
restart_asked=0
trap 'restart_asked=1' USR1
while true; do
    watched=()
    for i in "${!pids[@]}"; do
        [ "${lost[$i]:-0}" -eq 1 ] || watched+=("${pids[$i]}")
    done
    wait -n "${watched[@]}" 2>/dev/null
    for i in "${!pids[@]}"; do
        [ "${lost[$i]:-0}" -eq 1 ] && continue
        kill -0 "${pids[$i]}" 2>/dev/null && continue
        if [ -z "${restarts[$i]}" ]; then
            say "${names[$i]} exited; stopping the others"
            stop
            exit 1
        fi
        lost[$i]=1
        say "${names[$i]} exited; the rest go on. To start it again: kill -USR1 $$"
    done
    if [ "$restart_asked" -eq 1 ]; then
        restart_asked=0
        for i in "${!pids[@]}"; do
            [ "${lost[$i]:-0}" -eq 1 ] || continue
            ${restarts[$i]}
            pids[$i]=$!
            lost[$i]=0
            say "started ${names[$i]} again"
        done
    fi
done
