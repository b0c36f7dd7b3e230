/*
 * Fuzz target for the log server's record decoding: the rpcgen-generated XDR routines of
 * rpc/operations.x (Sources/COperationLog/operations_xdr.c) on any bytes. The first byte picks
 * the routine (record, batch, result, result batch), the rest is the call's argument bytes as
 * they come off the wire. Whatever decodes is freed as the server frees it; a decode that fails
 * must leave nothing allocated (the leak checker would say so) and never read outside the input.
 */
#include <stdint.h>
#include <string.h>

#include <rpc/rpc.h>

#include "operations.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    XDR xdrs;
    xdrmem_create(&xdrs, (char *)(data + 1), (u_int)(size - 1), XDR_DECODE);
    switch (data[0] % 4) {
    case 0: {
        operation_record value;
        memset(&value, 0, sizeof value);
        (void)xdr_operation_record(&xdrs, &value);
        xdr_free((xdrproc_t)xdr_operation_record, (char *)&value);
        break;
    }
    case 1: {
        operation_batch value;
        memset(&value, 0, sizeof value);
        if (xdr_operation_batch(&xdrs, &value)) {
            /* The bound of operations.x holds for whatever decoded. */
            if (value.operation_batch_len > OPLOG_MAX_BATCH) __builtin_trap();
        }
        xdr_free((xdrproc_t)xdr_operation_batch, (char *)&value);
        break;
    }
    case 2: {
        operation_result value;
        memset(&value, 0, sizeof value);
        (void)xdr_operation_result(&xdrs, &value);
        xdr_free((xdrproc_t)xdr_operation_result, (char *)&value);
        break;
    }
    default: {
        operation_result_batch value;
        memset(&value, 0, sizeof value);
        if (xdr_operation_result_batch(&xdrs, &value)) {
            if (value.operation_result_batch_len > OPLOG_MAX_BATCH) __builtin_trap();
        }
        xdr_free((xdrproc_t)xdr_operation_result_batch, (char *)&value);
        break;
    }
    }
    xdr_destroy(&xdrs);
    return 0;
}
