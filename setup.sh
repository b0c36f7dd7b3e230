#!/usr/bin/env bash
# Installs everything the P2P system needs on a Debian machine (run as root, or with sudo
# available). Idempotent and quiet when all is there:
#   system packages: a C compiler, rpcbind, rpcgen and libtirpc for the operation log, pkg-config,
#   SQLite headers, libedit (line editing at the client prompt), socat, wrk and ss (iproute2) for
#   the benchmarks, pkill (procps), chromium for the test that loads the directory's web page in
#   a real browser, tmux for the tests that type at the client's prompt in a real terminal,
#   haproxy and PostgreSQL (server, psql, pgbench) for several directory servers on one
#   database (`make run-cluster`, their tests and benchmark: each starts a private instance),
#   Patroni (with python3-etcd, the etcd client it uses) and etcd for the database tier of
#   `make run-cluster` that survives losing a machine (scripts/pg-ha.sh), curl to ask Patroni
#   which node is the primary,
#   nftables for the tests that build a simulated internet with NAT routers in network namespaces;
#   libssl-dev (the load generator's HMAC for keyed requests) and python3-cryptography (the
#   benchmark's keyed sessions: Ed25519, X25519, HKDF);
#   .venv/: a Python virtual environment with zeep, for the SOAP interop test.
# Run alone (./setup.sh) it also builds the system in release mode.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf 'setup: %s\n' "$*"; }

packages=(gcc libc6-dev make rpcbind rpcsvc-proto libtirpc-dev pkg-config libsqlite3-dev libedit-dev socat wrk python3 procps iproute2
    chromium tmux haproxy postgresql postgresql-client nftables patroni python3-etcd etcd-server curl
    libssl-dev python3-cryptography)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Test tools only: zeep, to prove the time service works with unmodified Python clients.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import zeep' >/dev/null 2>&1; then
    say "creating .venv with zeep"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check zeep
fi

# Run by hand (not from make), set-up includes the build, as users of the C version expect.
if [ -z "${MAKELEVEL:-}" ]; then
    say "building (release)"
    make -s oplog
    scripts/swift.sh build -c release
    say "done: 'make run' starts the system"
fi
