#!/usr/bin/env bash
# Checks that rpc/p2p-oplog refuses to start, saying why, when rpcbind is not running.
# Only meaningful on a machine where rpcbind is not running yet (CI, a fresh machine); skipped
# otherwise, since stopping a running rpcbind would disturb other programs.
set -uo pipefail
cd "$(dirname "$0")/.."
if rpcinfo -p localhost >/dev/null 2>&1; then
    echo "check-oplog-without-rpcbind: skipped (rpcbind is running)"
    exit 0
fi
output=$(timeout 10 rpc/p2p-oplog 2>&1)
status=$?
if [ "$status" -ne 1 ] || ! grep -q "is rpcbind running" <<<"$output"; then
    echo "check-oplog-without-rpcbind: FAILED: exit $status, output: $output"
    exit 1
fi
echo "check-oplog-without-rpcbind: refuses with: $output"
