"""What the attention wrappers share: where arrays live, alignment, and output checks."""
from __future__ import annotations

import numpy as np

from .backend import is_cupy_array, to_numpy
from .validate import check_array

LOG2E = 1.4426950408889634
THREADS = 128          # every kernel of this module runs 128-thread blocks
MAX_GRID_YZ = 65535    # CUDA's limit on gridDim.y and gridDim.z


def data_pointer(x) -> int:
    return int(x.data.ptr) if is_cupy_array(x) else int(x.ctypes.data)


def aligned16(x, xp):
    """x itself when its data starts on a 16-byte boundary (the kernels load 16 bytes at a
    time), else a fresh, aligned copy. Fresh NumPy and CuPy allocations are always aligned."""
    if data_pointer(x) % 16 == 0:
        return x
    fresh = xp.empty(x.shape, dtype=x.dtype)
    fresh[...] = x
    return fresh


def same_place(x, xp):
    """A small index array (block table, lengths) moved to where the computation runs."""
    return to_numpy(x) if xp is np else xp.asarray(x)


def page_shift(page_size: int) -> int:
    """log2(page_size) for a power of two (the kernels then shift instead of divide), else -1."""
    return page_size.bit_length() - 1 if page_size & (page_size - 1) == 0 else -1


def prepare_out(out, shape, dtype, xp):
    """The output array: a new one, or the caller's `out=` after checking it fits exactly."""
    if out is None:
        return xp.empty(shape, dtype=dtype)
    check_array(out, "out", ndim=len(shape), dtypes=[dtype])
    if (xp is np) == is_cupy_array(out):
        place = "a CuPy (GPU)" if xp is not np else "a NumPy (CPU)"
        raise TypeError(f"out: expected {place} array like q, got {type(out).__module__}.ndarray")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out: expected shape {tuple(shape)}, got {tuple(out.shape)}")
    if data_pointer(out) % 16:
        raise ValueError("out: expected an array whose data starts on a 16-byte boundary "
                         "(a fresh allocation, not an offset view)")
    return out


def check_grid(batch: int, num_heads: int):
    if batch > MAX_GRID_YZ:
        raise ValueError(f"q: batch {batch} exceeds {MAX_GRID_YZ} sequences per launch "
                         "(CUDA's grid limit); split the batch")
    if num_heads > MAX_GRID_YZ:
        raise ValueError(f"q: {num_heads} heads exceed {MAX_GRID_YZ} per launch")


def fast_path(kern, on_gpu: bool):
    """For a plan that runs on the GPU: the cupy.RawKernel inside the course's checked
    `RawKernel` (its `gpu` attribute). Launching it skips the per-launch argument check,
    tens of microseconds of Python; only for plans whose arguments were checked at their
    first launch and never change. Otherwise `kern` itself."""
    return getattr(kern, "gpu", kern) if on_gpu else kern


def allow_shared_memory(kern, nbytes: int) -> None:
    """Let a kernel use more than the default 48 KB of dynamic shared memory (the CUDA
    attribute cudaFuncAttributeMaxDynamicSharedMemorySize, as cupy.RawKernel names it)."""
    if nbytes > 48 * 1024 and kern.max_dynamic_shared_size_bytes < nbytes:
        kern.max_dynamic_shared_size_bytes = nbytes
