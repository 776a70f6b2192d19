"""The CPU executor: run the course's CUDA C kernels without a GPU.

`RawKernel(code, name)` compiles the unmodified kernel source with the system C++ compiler
plus a CUDA shim (shim.h) and runs each CUDA thread as a fiber; call it exactly like
`cupy.RawKernel`: `kern(grid, block, args, shared_mem=0)` with NumPy arrays and scalars.
By default a launch is checked: it runs in worker processes, and an out-of-bounds access, a
barrier deadlock, a crash or an endless loop becomes a Python exception naming the kernel,
the argument, the index and the thread/block. See README.md in this folder.
"""
from .errors import (CompilerNotFoundError, ExecutorUnavailableError, KernelAssertionError,
                     KernelCompileError, KernelDeadlock, KernelError, KernelFault, KernelTimeout,
                     SharedMemoryRace, UncountedWrite, WarpSyncError)
from .counts import AccessCounts, count_accesses
from .kernel import RawKernel
from .toolchain import cache_dir

__all__ = ["RawKernel", "cache_dir", "count_accesses", "AccessCounts", "KernelError",
           "KernelFault", "SharedMemoryRace", "KernelDeadlock",
           "WarpSyncError", "KernelTimeout", "KernelAssertionError", "KernelCompileError",
           "CompilerNotFoundError", "ExecutorUnavailableError", "UncountedWrite"]
