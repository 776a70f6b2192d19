// mma.h for the CPU executor: nvcuda::wmma (shim_mma.h). As in CUDA, it brings __half and
// __nv_bfloat16 along.
#include "../shim.h"
#include "../shim_bf16.h"
#include "../shim_mma.h"
