// Hand-written shim over the rpcgen client stubs (see include/oplog_client.h).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "oplog_client.h"

CLIENT *oplog_client_create(const char *host, unsigned int version, unsigned int timeout_ms, char *error,
                            size_t error_size) {
    CLIENT *client = clnt_create(host, OPERATION_LOG_PROG, version, "tcp");
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

// Version 1 has no result codes: the same records without them.
static enum clnt_stat send_version_1(CLIENT *client, operation_result *records, unsigned int count, int *result) {
    if (count == 1) {
        return print_operation_1(&records[0].record, result, client);
    }
    operation_record *plain = calloc(count, sizeof *plain);
    if (plain == NULL) {
        return RPC_SYSTEMERROR;
    }
    for (unsigned int i = 0; i < count; i++) {
        plain[i] = records[i].record;
    }
    operation_batch batch = {.operation_batch_len = count, .operation_batch_val = plain};
    enum clnt_stat status = print_operations_1(&batch, result, client);
    free(plain);
    return status;
}

int oplog_client_send(CLIENT *client, unsigned int version, operation_result *records, unsigned int count,
                      char *error, size_t error_size) {
    int result = -1;
    enum clnt_stat status;
    if (version == OPERATION_LOG_VERS) {
        status = send_version_1(client, records, count, &result);
    } else if (count == 1) {
        status = print_result_2(&records[0], &result, client);
    } else {
        operation_result_batch batch = {.operation_result_batch_len = count, .operation_result_batch_val = records};
        status = print_results_2(&batch, &result, client);
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
