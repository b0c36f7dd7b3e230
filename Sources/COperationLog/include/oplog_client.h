// Hand-written shim over the rpcgen client stubs: what Swift cannot call directly
// (clnt_destroy, clnt_control and rpc_createerr are macros in libtirpc).
#ifndef OPLOG_CLIENT_H
#define OPLOG_CLIENT_H

#include <stddef.h>
#include "operations.h"

/// Creates a TCP client handle for `version` (OPERATION_LOG_VERS or OPERATION_LOG_VERS_2) of
/// the operation-log program on `host`, with a per-call timeout of `timeout_ms`. On failure
/// returns NULL and writes the reason into `error`.
CLIENT *oplog_client_create(const char *host, unsigned int version, unsigned int timeout_ms, char *error,
                            size_t error_size);

/// Destroys a handle made by oplog_client_create.
void oplog_client_destroy(CLIENT *client);

/// Sends `count` records in one call of the handle's `version`: PRINT_RESULTS (PRINT_RESULT
/// for one) in version 2, PRINT_OPERATIONS (PRINT_OPERATION) without the results in version 1.
/// Returns 0 when the server printed them all; otherwise -1 and the reason in `error`.
int oplog_client_send(CLIENT *client, unsigned int version, operation_result *records, unsigned int count,
                      char *error, size_t error_size);

#endif
