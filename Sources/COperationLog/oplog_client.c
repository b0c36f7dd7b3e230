// Hand-written shim over the rpcgen client stubs (see include/oplog_client.h).
#include <stdio.h>
#include <string.h>
#include "oplog_client.h"

CLIENT *oplog_client_create(const char *host, unsigned int timeout_ms, char *error, size_t error_size) {
    CLIENT *client = clnt_create(host, OPERATION_LOG_PROG, OPERATION_LOG_VERS, "tcp");
    if (client == NULL) {
        snprintf(error, error_size, "%s", clnt_spcreateerror(host));
        // clnt_spcreateerror ends with a newline; keep the reason on one line.
        error[strcspn(error, "\n")] = '\0';
        return NULL;
    }
    // Once set, this replaces the 25 s timeout rpcgen compiles into every call.
    struct timeval timeout = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    clnt_control(client, CLSET_TIMEOUT, (char *)&timeout);
    return client;
}

void oplog_client_destroy(CLIENT *client) {
    if (client != NULL) {
        clnt_destroy(client);
    }
}

int oplog_client_send(CLIENT *client, operation_record *records, unsigned int count, char *error,
                      size_t error_size) {
    int result = -1;
    enum clnt_stat status;
    if (count == 1) {
        status = print_operation_1(&records[0], &result, client);
    } else {
        operation_batch batch = {.operation_batch_len = count, .operation_batch_val = records};
        status = print_operations_1(&batch, &result, client);
    }
    if (status != RPC_SUCCESS) {
        snprintf(error, error_size, "%s", clnt_sperror(client, "PRINT_OPERATIONS"));
        error[strcspn(error, "\n")] = '\0';
        return -1;
    }
    if (result != 0) {
        snprintf(error, error_size, "log server answered %d", result);
        return -1;
    }
    return 0;
}
