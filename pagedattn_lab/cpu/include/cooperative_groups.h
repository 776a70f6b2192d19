// cooperative_groups.h: not supported by the CPU executor.
#error "cooperative groups are not supported by the pagedattn_lab CPU executor; use __syncthreads() and the __shfl_*_sync intrinsics"
