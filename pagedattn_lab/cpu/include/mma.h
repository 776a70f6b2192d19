// mma.h: not supported by the CPU executor.
#error "tensor-core WMMA (mma.h) is not supported by the pagedattn_lab CPU executor"
