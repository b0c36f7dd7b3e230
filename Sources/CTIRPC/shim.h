#include <rpc/rpc.h>
