// cuda_bf16.h: not supported by the CPU executor.
#error "bfloat16 (cuda_bf16.h) is not supported by the pagedattn_lab CPU executor; use __half or float"
