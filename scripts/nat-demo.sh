#!/usr/bin/env bash
# A simulated internet on this machine, to try users behind NAT by hand (and for `make bench`'s
# "nat" section): network namespaces joined by veth pairs to a core router, nftables masquerade
# on the home routers, which drop every connection from outside that is not an answer.
#
#   scripts/nat-demo.sh up [PREFIX] [symmetric]   build it (as root); prints how to use it
#   scripts/nat-demo.sh down [PREFIX]              remove it (every namespace of PREFIX)
#   scripts/nat-demo.sh rules [symmetric]          print a home router's nftables rules (its
#                                                  outside interface is "wan"; the tests use them)
#
# Namespaces (PREFIX defaults to p2pdemo):
#   PREFIX-srv    the directory server's host, public address 198.18.0.2
#   PREFIX-pub    a user with a public address, 198.18.1.2
#   PREFIX-h1     a user behind home router PREFIX-r1 (192.168.2.2, public 198.18.2.2)
#   PREFIX-h2     a user behind home router PREFIX-r2 (192.168.3.2, public 198.18.3.2)
# With "symmetric", both home routers give every connection a new random port (no punching).
set -euo pipefail

action=${1:-}
prefix=${2:-p2pdemo}
symmetric=${3:-}

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

attach() { # attach NAMESPACE NET: joins it to the core as 198.18.NET.2
    local ns=$1 net=$2
    ip link add "c$net" netns "$prefix-core" type veth peer name wan netns "$ns"
    in_ns "$prefix-core" ip addr add "198.18.$net.1/24" dev "c$net"
    in_ns "$prefix-core" ip link set "c$net" up
    in_ns "$ns" ip addr add "198.18.$net.2/24" dev wan
    in_ns "$ns" ip link set wan up
    in_ns "$ns" ip route add default via "198.18.$net.1"
}

namespace() {
    ip netns add "$1"
    in_ns "$1" ip link set lo up
}

home() { # home INDEX NET: router PREFIX-rINDEX on 198.18.NET.2, host PREFIX-hINDEX on 192.168.NET.2
    local index=$1 net=$2 router="$prefix-r$1" host="$prefix-h$1"
    namespace "$router"
    namespace "$host"
    attach "$router" "$net"
    ip link add lan netns "$router" type veth peer name eth0 netns "$host"
    in_ns "$router" ip addr add "192.168.$net.1/24" dev lan
    in_ns "$router" ip link set lan up
    in_ns "$host" ip addr add "192.168.$net.2/24" dev eth0
    in_ns "$host" ip link set eth0 up
    in_ns "$host" ip route add default via "192.168.$net.1"
    in_ns "$router" sysctl -q -w net.ipv4.ip_forward=1
    router_rules "$symmetric" | in_ns "$router" nft -f -
}

router_rules() { # router_rules [symmetric]: NAT out of "wan", nothing in that is not an answer
    local random=""
    if [ "${1:-}" = symmetric ]; then random=" fully-random"; fi
    cat <<EOF
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade$random
    }
}
table inet filter {
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }
}
EOF
}

case "$action" in
rules)
    router_rules "${2:-}"
    ;;
up)
    [ "$(id -u)" -eq 0 ] || { echo "nat-demo: run as root" >&2; exit 1; }
    command -v nft >/dev/null || { echo "nat-demo: nft missing (./setup.sh installs nftables)" >&2; exit 1; }
    namespace "$prefix-core"
    in_ns "$prefix-core" sysctl -q -w net.ipv4.ip_forward=1
    namespace "$prefix-srv"
    attach "$prefix-srv" 0
    namespace "$prefix-pub"
    attach "$prefix-pub" 1
    home 1 2
    home 2 3
    cat <<EOF
Built. In separate terminals (from the repository, after a release build):
  ip netns exec $prefix-srv .build/release/p2p-time --host 0.0.0.0
  ip netns exec $prefix-srv .build/release/p2p-server --host 0.0.0.0 --no-oplog [--relay-limit 2M]
  ip netns exec $prefix-h1  .build/release/p2p-client -s 198.18.0.2 -p 4242 --time-service http://198.18.0.2:8000
  ip netns exec $prefix-h2  .build/release/p2p-client -s 198.18.0.2 -p 4242 --time-service http://198.18.0.2:8000
  ip netns exec $prefix-pub .build/release/p2p-client -s 198.18.0.2 -p 4242 --time-service http://198.18.0.2:8000
Or, instead of the first two, the cluster (three servers behind HAProxy on 4242, PostgreSQL under Patroni):
  ip netns exec $prefix-srv env TIME_HOST=0.0.0.0 scripts/run.sh --cluster
Remove it with: scripts/nat-demo.sh down $prefix
EOF
    ;;
down)
    for ns in $(ip netns list | awk '{print $1}' | grep "^$prefix-" || true); do ip netns del "$ns"; done
    ;;
*)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
