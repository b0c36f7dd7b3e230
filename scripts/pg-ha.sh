#!/usr/bin/env bash
# A PostgreSQL tier that survives losing a machine, on one machine: etcd (one member), two
# PostgreSQL nodes under Patroni with synchronous replication, and HAProxy sending clients to
# whichever node is the primary (Patroni's REST check `/primary`). Used by `make run-cluster`,
# by the failover tests and by `make bench`; each starts the programs itself, so that it can
# stop them in order or kill one, and this script keeps every setting in one place.
#
#   pg-ha.sh configure DIR   writes DIR/{ports.env,etcd.sh,node1.yml,node2.yml,haproxy.cfg}
#                            (ports from the environment: PG_PORT for clients, ETCD_PORT,
#                            ETCD_PEER_PORT, NODE1_PORT, NODE2_PORT, REST1_PORT, REST2_PORT)
#   pg-ha.sh etcd DIR        runs etcd in the foreground (exec: the pid is etcd's)
#   pg-ha.sh node DIR N      runs Patroni for node N (1 or 2) in the foreground, as the
#                            postgres system user when we are root (PostgreSQL refuses root)
#   pg-ha.sh proxy DIR       runs HAProxy in the foreground
#   pg-ha.sh primary DIR     prints the number of the node that is the primary (or fails)
#   pg-ha.sh sync DIR        prints the number of the node that Patroni holds to be the
#                            synchronous standby (the one it would promote), or fails
#   pg-ha.sh postmaster DIR N  prints the pid of node N's PostgreSQL (or fails)
#   pg-ha.sh lose DIR N      node N's machine lost: its Patroni, its postmaster and every
#                            PostgreSQL process frozen at once (SIGSTOP), then killed (SIGKILL);
#                            killing the postmaster alone would leave its backends finishing
#                            the statements they are in, as no lost machine does
#
# Timings (bootstrap.dcs below), chosen so that losing the primary's machine costs well under
# 15 s: the primary renews its leader key every loop_wait (1 s) for ttl (8 s); when the machine
# is gone the key runs out within 8 s, the replica (watching the key) takes it at once and
# promotes itself (about 1 s), and HAProxy's check (every 1 s) sends new connections to it.
# Patroni requires loop_wait + 2 x retry_timeout <= ttl: 1 + 2 x 3 = 7.
#
# synchronous_mode: a commit is answered only once the replica has it on disk too, and Patroni
# promotes only the replica named synchronous, so no acknowledged change is lost in a failover.
# synchronous_mode_strict is off: with two nodes, strict mode would stop every write whenever
# the replica is down. Non-strict, the primary goes on alone (Patroni drops the synchronous
# standby within a loop) and takes the replica back as synchronous once it has caught up; while
# it is alone, losing it too stops the service but still loses nothing acknowledged, because
# Patroni will not promote a replica that was not synchronous.
set -euo pipefail

die() { echo "pg-ha: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: pg-ha.sh configure|etcd|node|proxy|primary|postmaster DIR [N]"
command=$1
dir=$2

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$bin" ] || die "PostgreSQL is not installed: run ./setup.sh"
    echo "$bin"
}

as_postgres=()
if [ "$(id -u)" -eq 0 ]; then as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi

configure() {
    for program in /usr/bin/etcd /usr/bin/patroni /usr/sbin/haproxy; do
        [ -x "$program" ] || die "$program is missing: run ./setup.sh"
    done
    : "${PG_PORT:?}" "${ETCD_PORT:?}" "${ETCD_PEER_PORT:?}" "${NODE1_PORT:?}" "${NODE2_PORT:?}"
    : "${REST1_PORT:?}" "${REST2_PORT:?}"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
        "${as_postgres[@]}" test -w "$dir" || die "the postgres user cannot write to $dir"
    fi
    local bin
    bin=$(pg_bin)
    cat > "$dir/ports.env" <<EOF
PG_PORT=$PG_PORT
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
NODE1_PORT=$NODE1_PORT
NODE2_PORT=$NODE2_PORT
REST1_PORT=$REST1_PORT
REST2_PORT=$REST2_PORT
EOF
    for n in 1 2; do
        local port rest
        port=$([ "$n" = 1 ] && echo "$NODE1_PORT" || echo "$NODE2_PORT")
        rest=$([ "$n" = 1 ] && echo "$REST1_PORT" || echo "$REST2_PORT")
        cat > "$dir/node$n.yml" <<EOF
# Written by scripts/pg-ha.sh configure.
scope: p2p-directory
name: node$n
restapi:
  listen: 127.0.0.1:$rest
  connect_address: 127.0.0.1:$rest
etcd3:
  hosts: 127.0.0.1:$ETCD_PORT
bootstrap:
  dcs:
    ttl: 8
    loop_wait: 1
    retry_timeout: 3
    synchronous_mode: true
    synchronous_mode_strict: false
    postgresql:
      use_pg_rewind: true
      parameters:
        max_connections: 300
        shared_buffers: 64MB
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 5
        max_replication_slots: 5
        wal_log_hints: "on"
  initdb:
    - encoding: UTF8
    - locale: C
    - data-checksums
postgresql:
  listen: 127.0.0.1:$port
  connect_address: 127.0.0.1:$port
  data_dir: $dir/node$n
  bin_dir: $bin
  pgpass: $dir/pgpass$n
  use_unix_socket: false
  authentication:
    superuser:
      username: p2p
      password: p2p
    replication:
      username: replicator
      password: replicator
    rewind:
      username: p2p
      password: p2p
  parameters:
    unix_socket_directories: $dir
  # A private cluster on 127.0.0.1: the machine's users are trusted, as by the single
  # PostgreSQL of the tests. On several machines, use scram-sha-256 and real passwords.
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
EOF
    done
    cat > "$dir/haproxy.cfg" <<EOF
# Written by scripts/pg-ha.sh configure. Clients (the directory servers) connect to $PG_PORT;
# a node is up when its Patroni says it is the primary.
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    # The servers keep their connections open; the store's own deadline covers a silent node.
    timeout client 30m
    timeout server 30m
listen postgres
    bind 127.0.0.1:$PG_PORT
    option httpchk OPTIONS /primary
    http-check expect status 200
    # Connections to a node that stops being the primary are cut at once, so that nobody
    # keeps writing to a demoted node.
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
    server node1 127.0.0.1:$NODE1_PORT check port $REST1_PORT
    server node2 127.0.0.1:$NODE2_PORT check port $REST2_PORT
EOF
}

load() {
    [ -f "$dir/ports.env" ] || die "$dir is not configured: pg-ha.sh configure $dir"
    dir=$(cd "$dir" && pwd)
    # shellcheck disable=SC1091
    . "$dir/ports.env"
}

case "$command" in
configure) configure ;;
etcd)
    load
    exec /usr/bin/etcd --name etcd1 --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "etcd1=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn
    ;;
node)
    load
    n=${3:?node number}
    [ -f "$dir/node$n.yml" ] || die "no node $n in $dir"
    # Standard input from /dev/null, as under systemd: PostgreSQL's backends inherit it, and
    # one orphaned in a synchronous COMMIT when the postmaster is killed goes on to read its
    # next command from standard input (PostgreSQL 15). On a pipe nobody closes it would wait
    # for good, holding the shared memory, and the node could never start again.
    exec "${as_postgres[@]}" /usr/bin/patroni "$dir/node$n.yml" </dev/null
    ;;
proxy)
    load
    exec /usr/sbin/haproxy -db -f "$dir/haproxy.cfg"
    ;;
sync)
    load
    # From etcd itself (what a failover would go by), not a node's view of it, which lags by up
    # to a loop: right after the primary restarts in place, the key names no standby for a
    # few seconds, and a node's REST API may still say it is synchronous.
    patronictl -c "$dir/node1.yml" list -f json 2>/dev/null | python3 -c '
import json, sys
for member in json.load(sys.stdin):
    if member.get("Role") == "Sync Standby" and member.get("State") in ("running", "streaming"):
        print(member["Member"].removeprefix("node"))
        sys.exit(0)
sys.exit(1)'
    ;;
primary)
    load
    for n in 1 2; do
        rest=$([ "$n" = 1 ] && echo "$REST1_PORT" || echo "$REST2_PORT")
        if curl -fsS -m 5 -o /dev/null -X OPTIONS "http://127.0.0.1:$rest/primary" 2>/dev/null; then
            echo "$n"
            exit 0
        fi
    done
    exit 1
    ;;
postmaster)
    load
    n=${3:?node number}
    [ -f "$dir/node$n/postmaster.pid" ] || exit 1
    head -n 1 "$dir/node$n/postmaster.pid"
    ;;
lose)
    load
    n=${3:?node number}
    frozen=()
    postmaster=$(head -n 1 "$dir/node$n/postmaster.pid" 2>/dev/null || true)
    if [ -n "$postmaster" ] && kill -STOP "$postmaster" 2>/dev/null; then
        # Stopped, the postmaster forks no more: its children are all there is.
        frozen+=("$postmaster" $(pgrep -P "$postmaster" || true))
    fi
    frozen+=($(pgrep -f "^/usr/bin/python3 /usr/bin/patroni $dir/node$n.yml\$" || true))
    [ ${#frozen[@]} -gt 0 ] || die "node $n is not running"
    kill -STOP "${frozen[@]}" 2>/dev/null || true
    kill -KILL "${frozen[@]}" 2>/dev/null || true
    ;;
*) die "unknown command $command" ;;
esac
