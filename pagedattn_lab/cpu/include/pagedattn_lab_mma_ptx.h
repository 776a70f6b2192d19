// The CPU executor's emulation of the PTX instructions of pagedattn_lab/kernels/mma_ptx.cuh
// (shim_mma_ptx.h), which includes this header on the CPU only. No CUDA header has this name.
#include "../shim.h"
#include "../shim_bf16.h"
#include "../shim_fp8.h"
#include "../shim_mma_ptx.h"
