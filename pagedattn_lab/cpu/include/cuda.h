// cuda.h for the CPU executor: everything comes from shim.h, always included.
#include "../shim.h"
