#!/usr/bin/env bash
# Generates the RPC code from rpc/operations.x into the given folders:
#   generate.sh HEADER_DIR CLIENT_DIR SERVER_DIR
# The header and the XDR/client stubs go to the Swift package's C target, the server
# dispatch to rpc/. Runs rpcgen from rpc/ so the generated includes say "operations.h".
set -euo pipefail
header_dir=$(realpath "$1") client_dir=$(realpath "$2") server_dir=$(realpath "$3")
cd "$(dirname "$0")"
flags=(-M) # reentrant stubs: the caller passes the result pointer
rm -f "$header_dir/operations.h" "$client_dir/operations_clnt.c" "$client_dir/operations_xdr.c" \
    "$server_dir/operations_svc.c"
rpcgen "${flags[@]}" -h -o "$header_dir/operations.h" operations.x
rpcgen "${flags[@]}" -l -o "$client_dir/operations_clnt.c" operations.x
rpcgen "${flags[@]}" -c -o "$client_dir/operations_xdr.c" operations.x
rpcgen "${flags[@]}" -m -o "$server_dir/operations_svc.c" operations.x
