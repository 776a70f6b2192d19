// cuda_fp16.h for the CPU executor: __half and __half2 come from shim.h, always included.
#include "../shim.h"
