"""The CPU executor's gaps closed in hunt 140 (pagedattn_lab/cpu/README.md, "Not supported,
or not caught"): an access through a pointer past a local array (GCC's object-size check,
cpu/ubsan.cpp) stops the thread with its line and expression; an ldmatrix row address inside
the poison guard that follows a static `__shared__` array (source.py's PAL_SGUARD) is refused
as past the array, and the bytes the message counts are the kernel's own, not the guards';
an inline `__device__` function's `__shared__` array beside the kernel's compiles under GCC."""
import re
import shutil

import numpy as np
import pytest

from pagedattn_lab.cpu import KernelAssertionError, KernelFault, RawKernel
from pagedattn_lab.cpu.compiler import compiler
from pagedattn_lab.kernels import KERNEL_DIR

GCC = not compiler()[2]
gcc_only = pytest.mark.skipif(not GCC, reason="GCC's object-size check (Clang builds go "
                              "without it: its counterpart is a bare trap)")

# Two local arrays side by side: `p[i]` for i = 4..7 lands in `b` or the saved registers (the
# launch passed, or crashed through a clobbered pointer, before the check).
_POINTER = r"""
extern "C" __global__ void through_pointer(const float* x, float* out, int i, int write)
{
    float a[4];
    float b[4];
    for (int j = 0; j < 4; ++j) { a[j] = x[j]; b[j] = 2.0f * x[j]; }
    float *p = a;
    if (write && threadIdx.x == 2) p[i] = 7.0f;
    const float r = threadIdx.x == 2 ? p[3 - i] : 0.0f;
    __syncthreads();
    out[threadIdx.x] = a[0] + a[3] + b[0] + b[3] + r;
}
"""


@gcc_only
@pytest.mark.parametrize("i", [4, 5, 6, 7])
def test_a_write_through_a_pointer_past_a_local_array_names_thread_line_and_expression(i):
    kern = RawKernel(_POINTER, "through_pointer")
    x, out = np.arange(1, 5, dtype=np.float32), np.zeros(4, np.float32)
    kern((1,), (4,), (x, out, np.int32(3), np.int32(1)))   # p[3] = 7, then r = p[0]
    assert out.tolist() == [15.0, 15.0, 19.0, 15.0]   # thread 2: a[3] = 7, r = a[0]
    out[:] = -1
    with pytest.raises(KernelFault) as info:
        kern((1,), (4,), (x, out, np.int32(i), np.int32(1)))
    e = info.value
    assert (e.thread, e.block, e.line, e.array, e.access) == ((2, 0, 0), (0, 0, 0), 8, "p[i]",
                                                            "write")
    for part in ("out-of-bounds write of a float through `p[i]` past the end of a local array",
                 "at line 8", "if (write && threadIdx.x == 2) p[i] = 7.0f;",
                 "thread (2,0,0) of block (0,0,0)"):
        assert part in str(e), (part, str(e))
    assert out.tolist() == [-1.0] * 4   # a failed launch changes nothing


@gcc_only
@pytest.mark.parametrize("i", [-1, -4])
def test_a_read_through_a_pointer_past_a_local_array_is_reported_at_its_line(i):
    """The read is reported when its thread reaches the barrier (an index check of the same
    access would have come first and said more), with the read's line, not the barrier's."""
    kern = RawKernel(_POINTER, "through_pointer")
    x, out = np.arange(1, 5, dtype=np.float32), np.zeros(4, np.float32)
    with pytest.raises(KernelFault) as info:
        kern((1,), (4,), (x, out, np.int32(i), np.int32(0)))   # p[4], p[7]
    e = info.value
    assert (e.thread, e.line, e.array, e.access) == ((2, 0, 0), 9, "p[3 - i]", "read")
    assert "out-of-bounds read of a float through `p[3 - i]` past the end of a local array" \
        in str(e), str(e)


@gcc_only
def test_a_read_past_an_array_at_the_threads_end_is_reported_and_an_index_check_still_wins():
    """A thread that reads past an array and returns without meeting a barrier is reported
    as it exits; in `acc[k] += x` (GCC checks the load first) the index check's report, with
    the index and the array's size, still comes out."""
    src = r"""
extern "C" __global__ void tail(const float* x, float* out, int i)
{
    float a[4] = {x[0], x[1], x[2], x[3]};
    const float *p = a + 2;
    out[threadIdx.x] = p[i];
}
"""
    kern = RawKernel(src, "tail")
    x, out = np.arange(4, dtype=np.float32), np.zeros(2, np.float32)
    kern((1,), (2,), (x, out, np.int32(1)))
    assert out.tolist() == [3.0, 3.0]
    with pytest.raises(KernelFault) as info:
        kern((1,), (2,), (x, out, np.int32(2)))
    assert (info.value.thread, info.value.line, info.value.array) == ((0, 0, 0), 6, "p[i]")
    acc = r"""
extern "C" __global__ void sums(const float* x, float* out, int n)
{
    float acc[8];
    for (int k = 0; k < 8; ++k) acc[k] = 0.0f;
    for (int k = 0; k < n; ++k) acc[k] += x[threadIdx.x];
    out[threadIdx.x] = acc[0] + acc[7];
}
"""
    with pytest.raises(KernelFault) as info:
        RawKernel(acc, "sums")((1,), (2,), (x, out, np.int32(9)))
    assert (info.value.index, info.value.size, info.value.array) == (8, 8, "acc[k]")

# two static arrays of 8 rows of 16 bytes each, declared apart: a guard goes before each
_ROWS = r"""
#include "mma_ptx.cuh"
extern "C" __global__ void rows_of_a(const unsigned short* in, unsigned* out, int shift,
                                     int second)
{
    __shared__ __align__(16) unsigned short a[64];
    __shared__ __align__(16) unsigned short b[64];
    a[threadIdx.x] = in[threadIdx.x];
    a[threadIdx.x + 32] = in[threadIdx.x + 32];
    b[threadIdx.x] = in[threadIdx.x + 64];
    b[threadIdx.x + 32] = in[threadIdx.x + 96];
    __syncthreads();
    unsigned r[1];
    const unsigned short *base = second ? b : a;
    ldmatrix_x1(r, base + ((threadIdx.x & 7) + shift) * 8);
    out[threadIdx.x] = r[0];
}
"""


def _rows_kernel():
    return RawKernel(_ROWS, "rows_of_a", options=(f"-I{KERNEL_DIR}",))


@pytest.mark.parametrize("second", [0, 1])
def test_an_ldmatrix_row_in_the_guard_past_a_static_shared_array_is_refused(second):
    kern = _rows_kernel()
    tile = np.arange(128, dtype=np.uint16)
    out = np.zeros(32, np.uint32)
    kern((1,), (32,), (tile, out, np.int32(0), np.int32(second)))   # rows 0..7: fine
    rows = tile[64 * second:64 * second + 64].reshape(8, 8)
    lane = np.arange(32)
    want = rows[lane // 4, 2 * (lane % 4)] | (rows[lane // 4, 2 * (lane % 4) + 1].astype(
        np.uint32) << 16)
    np.testing.assert_array_equal(out, want)
    with pytest.raises(KernelAssertionError) as info:   # lane 7 names row 8: past the array
        kern((1,), (32,), (tile, out, np.int32(1), np.int32(second)))
    e = info.value
    assert e.thread == (7, 0, 0) and "lane 7" in str(e), str(e)
    assert "of a static __shared__ array, into the guard" in str(e), str(e)


def test_the_ldmatrix_message_counts_the_kernels_static_shared_bytes_not_the_guards():
    """Row 0 of `b` misaligned by 2 bytes: its byte offset among the 256 bytes of `a` and `b`
    (GCC lays `b` out first, Clang `a`), with no guard's 256 bytes counted."""
    src = _ROWS.replace("((threadIdx.x & 7) + shift) * 8", "((threadIdx.x & 7) * 8 + shift)")
    kern = RawKernel(src, "rows_of_a", options=(f"-I{KERNEL_DIR}",))
    tile, out = np.arange(128, dtype=np.uint16), np.zeros(32, np.uint32)
    with pytest.raises(KernelAssertionError) as info:
        kern((1,), (32,), (tile, out, np.int32(1), np.int32(1)))
    m = re.search(r"\(byte (\d+) of the (\d+) bytes of static __shared__ variables\)",
                  str(info.value))
    assert m, str(info.value)
    assert int(m.group(2)) == 256 and int(m.group(1)) in (2, 130), str(info.value)


# An inline __device__ function with its own __shared__ array, beside the kernel's: under GCC
# the function's statics went into a COMDAT group of their own, and the build failed with
# "section type conflict" (kernel_checks.py: -fno-weak); its array is poisoned before each
# block as the kernel's is (an unwritten slot reads NaN).
_INLINE_SHARED = r"""
__device__ __forceinline__ float block_sum(float v)
{
    __shared__ float partial[64];
    partial[threadIdx.x] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < 64; ++i) s += partial[i];
    __syncthreads();
    return s;
}
extern "C" __global__ void normalise(const float* x, float* out, int n)
{
    __shared__ float own[64];
    own[threadIdx.x] = x[blockIdx.x * 64 + threadIdx.x];
    __syncthreads();
    const float v = threadIdx.x < n ? own[threadIdx.x] : 0.0f;
    out[blockIdx.x * 64 + threadIdx.x] = v / block_sum(v);
}
"""


def test_an_inline_device_functions_shared_array_beside_the_kernels_compiles_and_runs():
    kern = RawKernel(_INLINE_SHARED, "normalise")
    x = np.arange(1, 129, dtype=np.float32)
    out = np.zeros(128, np.float32)
    kern((2,), (64,), (x, out, np.int32(64)))
    want = x.reshape(2, 64).astype(np.float64)
    np.testing.assert_allclose(out, (want / want.sum(axis=1, keepdims=True)).ravel(),
                               rtol=1e-6)
    out[:] = 0
    kern((1,), (32,), (x, out, np.int32(32)))   # slots 32..63 unwritten: the poison, NaN
    assert np.isnan(out[:32]).all(), out[:32]


@gcc_only
def test_a_write_through_a_pointer_past_a_static_shared_array_stops_the_thread_that_made_it():
    """Before, the guard after the array found it after the block, without the thread; a
    pointer the compiler cannot trace still is (tests/test_cpu_gpu_parity_hunt113.py)."""
    src = r"""
extern "C" __global__ void tile_sums(const float* x, float* out, int shift)
{
    __shared__ float tile[32];
    float* p = tile;
    p[threadIdx.x + shift] = x[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = tile[threadIdx.x % 32];
}
"""
    kern = RawKernel(src, "tile_sums")
    x, out = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    kern((1,), (32,), (x, out, np.int32(0)))
    assert out.tolist() == x.tolist()
    with pytest.raises(KernelFault) as info:
        kern((1,), (32,), (x, out, np.int32(8)))
    e = info.value
    assert (e.thread, e.line, e.array, e.access, e.region) == (
        (24, 0, 0), 6, "p[threadIdx.x + shift]", "write", "static shared memory")
    assert (e.variable, e.offset) == ("tile", 128)   # byte 0 past its 128: counted from its start
    assert "past the end of static __shared__ array `tile` (128 bytes; byte 0 past its end)" \
        in str(e), str(e)


@gcc_only
def test_the_graders_words_for_an_access_through_a_pointer_past_an_array():
    from pagedattn_lab.grading.faults import describe_kernel_exception
    kern = RawKernel(_POINTER, "through_pointer")
    x, out = np.arange(1, 5, dtype=np.float32), np.zeros(4, np.float32)
    with pytest.raises(KernelFault) as info:
        kern((1,), (4,), (x, out, np.int32(-2), np.int32(0)))   # a read of p[5]
    message, hint = describe_kernel_exception(info.value)
    assert message.startswith("out-of-bounds read of a float through `p[3 - i]`"), message
    assert hint.startswith("p[3 - i] at line 9 reads or writes through a pointer past the end "
                           "of the array it points into"), hint
