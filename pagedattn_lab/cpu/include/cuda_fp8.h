// cuda_fp8.h for the CPU executor: __nv_fp8_e4m3, __nv_fp8_e5m2 and the __nv_cvt_*
// conversions in software (shim_fp8.h). As in CUDA, it brings __half and __nv_bfloat16 along.
#include "../shim.h"
#include "../shim_bf16.h"
#include "../shim_fp8.h"
