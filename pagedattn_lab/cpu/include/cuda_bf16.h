// cuda_bf16.h for the CPU executor: __nv_bfloat16 and __nv_bfloat162 (shim_bf16.h).
#include "../shim.h"
#include "../shim_bf16.h"
