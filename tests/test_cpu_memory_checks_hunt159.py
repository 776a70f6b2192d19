"""The CPU executor's memory checks mended in hunt 159 (pagedattn_lab/cpu/README.md, "Not
supported, or not caught"): a read past a local array that is deferred to the thread's next
barrier is reported first when a fault or a time-out stops the thread before it gets there
(host.cpp's handlers, ubsan.cpp's pal_record_deferred_read); ..."""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, KernelTimeout, RawKernel
from pagedattn_lab.cpu.compiler import compiler

GCC = not compiler()[2]
gcc_only = pytest.mark.skipif(not GCC, reason="GCC's object-size check (Clang builds go "
                              "without it: its counterpart is a bare trap)")

# Thread 1 reads p[i] (i = 4: past `a`), then, with `then` 1, writes through the value it read
# as an index far past `out` (a fault), or with `then` 2 spins on it (a time-out).
_READ_THEN = r"""
extern "C" __global__ void read_then(const float* x, float* out, int i, int then)
{
    float a[4];
    for (int j = 0; j < 4; ++j) a[j] = x[j] * threadIdx.x;
    const float *p = a;
    const float v = threadIdx.x == 1 ? p[i] : 0.0f;
    if (then == 1 && threadIdx.x == 1) out[(1 << 26) + (int)(v * 0.0f)] = v;
    if (then == 2 && threadIdx.x == 1) for (volatile float s = v; s == s || s != s;) s += 1.0f;
    __syncthreads();
    out[threadIdx.x] = v + a[0];
}
"""


@gcc_only
@pytest.mark.parametrize("then, timeout", [(1, None), (2, 1.0)])
def test_a_deferred_read_past_an_array_is_reported_before_a_later_fault_or_time_out(then, timeout):
    """Before: the fault (an out-of-bounds write of `out`) or the KernelTimeout came out, and
    the read that came first, and fed the bad index, was never named."""
    kern = RawKernel(_READ_THEN, "read_then", timeout=timeout)
    x, out = np.arange(1, 5, dtype=np.float32), np.zeros(2, np.float32)
    kern((1,), (2,), (x, out, np.int32(3), np.int32(0)))
    assert out.tolist() == [0.0, 5.0]
    with pytest.raises(KernelFault) as info:
        kern((1,), (2,), (x, out, np.int32(4), np.int32(then)))
    e = info.value
    assert not isinstance(e, KernelTimeout)
    assert (e.thread, e.block, e.line, e.array, e.access) == ((1, 0, 0), (0, 0, 0), 7, "p[i]",
                                                            "read")
    assert "out-of-bounds read of a const float through `p[i]` past the end of a local array" \
        in str(e), str(e)
    assert out.tolist() == [0.0, 5.0]   # a failed launch changes nothing


# A template __device__ function's __shared__ array (GCC drops the section attribute of a
# template's statics, so runtime.cpp's poison of the section missed it): block b writes the
# first `b` slots only, so every other slot read is unwritten in this block.
_TEMPLATE_SHARED = r"""
template <int N>
__device__ float first_use(int b)
{
    __shared__ float s[N];
    if ((int)threadIdx.x < b) s[threadIdx.x] = 1.0f + threadIdx.x;
    __syncthreads();
    return s[threadIdx.x];
}

extern "C" __global__ void template_shared(float* out)
{
    out[blockIdx.x * 32 + threadIdx.x] = first_use<32>(blockIdx.x);
}
"""


def test_a_template_device_functions_shared_array_is_poisoned_before_each_block():
    """Before (GCC): block 0 read the zeros of .bss, block 1 the values block 0 left
    (nothing written there: on a GPU, garbage), so a kernel that forgot to load a tile passed.
    Now each block starts with the poison (NaN), as the kernel's own arrays do."""
    out = np.zeros(3 * 32, np.float32)
    RawKernel(_TEMPLATE_SHARED, "template_shared")((3,), (32,), (out,), workers=1)
    rows = out.reshape(3, 32)
    for b in range(3):
        assert rows[b, :b].tolist() == [1.0 + t for t in range(b)]
        assert np.isnan(rows[b, b:]).all(), (b, rows[b].tolist())


_BEFORE_START = r"""
extern "C" __global__ void before_start(float* x, int atomic)
{
    const int i = threadIdx.x;
    if (atomic) atomicAdd(x - 1 + i * 0, 1.0f);
    else x[i - 1] += 1.0f;
}
"""


@pytest.mark.parametrize("atomic", [0, 1])
def test_arithmetic_on_the_element_before_a_float_array_is_reported(atomic):
    """`x[i - 1] += 1` at i = 0, or atomicAdd(x - 1, ...), lands in the bytes before the array
    (under a page: no guard can sit there). Before: they held all-ones NaNs, and NaN + 1 gave
    the same bits back, so the launch passed; now a signalling NaN there is quieted, and the
    write is reported after the launch, with the argument and the element."""
    x = np.zeros(100, np.float32)
    with pytest.raises(KernelFault) as info:
        RawKernel(_BEFORE_START, "before_start")((1,), (4,), (x, np.int32(atomic)))
    e = info.value
    assert (e.buffer, e.index, e.access, e.region) == ("x", -1, "write", "argument")
    assert "element -1, before the array's start" in str(e), str(e)
    assert not x.any()   # a failed launch changes nothing


_DYN_BEFORE = r"""
extern "C" __global__ void dyn_before(float* out, int write)
{
    extern __shared__ float d[];
    const int i = threadIdx.x;
    if (write) d[i - 1] = 1.0f;
    else d[i] = 2.0f;
    __syncthreads();
    out[i] = write ? d[i] : d[i - 1];
}
"""


def test_dynamic_shared_memory_before_its_start_reads_poison_and_a_write_is_reported():
    """`d[i - 1]` at i = 0. Before: a read got the mapping's zeros (a plausible value) and a
    write passed unseen; now the bytes before the buffer are a guard of poison (NaN), and a
    write there is reported after the block, with the block and the byte offset."""
    kern = RawKernel(_DYN_BEFORE, "dyn_before")
    out = np.zeros(8, np.float32)
    kern((1,), (8,), (out, np.int32(0)), shared_mem=32)
    assert np.isnan(out[0]) and out[1:].tolist() == [2.0] * 7
    out[:] = 0
    with pytest.raises(KernelFault) as info:
        kern((2,), (8,), (out, np.int32(1)), shared_mem=32)
    e = info.value
    assert (e.region, e.index, e.access, e.block, e.thread) == (
        "dynamic shared memory", -4, "write", (0, 0, 0), None)
    assert "at byte offset -4, before its start" in str(e), str(e)
    assert not out.any()


# A pointer the compiler does not trace (through calls that stay calls) to one of two static
# __shared__ arrays, one element before its start.
_SHARED_BEFORE = r"""
__device__ __noinline__ void put(float* p, int i, float v) { p[i] = v; }
__device__ __noinline__ float get(const float* p, int i) { return p[i]; }

extern "C" __global__ void shared_before(float* y, int write, int which)
{
    __shared__ float a[32];
    __shared__ float s[32];
    const int i = threadIdx.x;
    if (write) put(which ? a : s, i - 1, 1.0f);
    else { a[i] = 7.0f; s[i] = i; }
    __syncthreads();
    y[i] = write ? 0.0f : get(which ? a : s, i - 1);
}
"""


@pytest.mark.parametrize("which, name", [(0, "s"), (1, "a")])
def test_an_access_before_a_static_shared_arrays_start_reads_poison_and_a_write_is_named(
        which, name):
    """Before: the array laid out first in the section (GCC: the last declared) had the
    runtime's variables before it (its `p[-1]` read pal_sandbox_level, 1, and a write there
    changed it unseen), and a write before the other was reported as far past the end of its
    neighbour. Now a guard of poison precedes every array (shim.h's before the section's first
    under Clang, source.py's at the unit's end under GCC): a read gets NaN, and a write is
    reported after the block as before the start of the array it precedes."""
    kern = RawKernel(_SHARED_BEFORE, "shared_before")
    y = np.zeros(32, np.float32)
    kern((1,), (32,), (y, np.int32(0), np.int32(which)))
    assert np.isnan(y[0]) and y[1:].tolist() == ([7.0] * 31 if which else list(range(31)))
    y[:] = 0
    with pytest.raises(KernelFault) as info:
        kern((1,), (32,), (y, np.int32(1), np.int32(which)))
    e = info.value
    assert (e.region, e.variable, e.offset, e.access, e.thread) == (
        "static shared memory", name, -4, "write", None)
    assert f"byte 4 before the start of `{name}`" in str(e), str(e)


def test_the_first_use_poison_goes_only_after_a_templates_declarations_it_can_read():
    """source.py's PAL_SPOISON: each name of a template's `__shared__` declaration (template
    arguments with commas, several declarators, `__align__`), just past its `;`; none outside
    a template (the section poisons those), or with code after the `;` on its line (a column
    would move); a `<` inside brackets is a comparison."""
    from pagedattn_lab.cpu.source import guard_static_shared
    src = """#include <cuda_fp16.h>
template <typename T, int N> struct X { __device__ void f() {
    __shared__ __align__(16) Pair<T, int> a[N][N + 1], b;
    __shared__ float c[4]; c[0] = 1;
    __shared__ float d[N < 4 ? 4 : N];
} };
__device__ void h() {
    __shared__ float e[3];
}"""
    lines = guard_static_shared(src).splitlines()[1:]
    assert lines[1].endswith("a[N][N + 1], b; PAL_SGUARD PAL_SPOISON(a) PAL_SPOISON(b)")
    assert "PAL_SPOISON" not in lines[2] and "PAL_SPOISON" not in "".join(lines[4:])
    assert lines[3].endswith("d[N < 4 ? 4 : N]; PAL_SPOISON(d)")


def test_an_unsigned_index_below_zero_is_named_as_a_wrapped_element_of_its_argument():
    """`y[i - 1u]` at i = 0 is element 2^32 - 1, 16 GiB past the array (in launch.WRAP_GUARD,
    or past the array's own guard where that is not reserved).
    Before: "invalid write ... outside every array argument (a wild pointer ...)", naming no
    array; now the argument, the element and the negative index it came from."""
    src = r"""
extern "C" __global__ void wraps(float* y, int k)
{
    const unsigned i = threadIdx.x;
    y[i - (unsigned)k] = 1.0f;
}
"""
    y = np.zeros(32, np.float32)
    with pytest.raises(KernelFault) as info:
        RawKernel(src, "wraps")((1,), (32,), (y, np.int32(2)))
    e = info.value
    assert (e.buffer, e.arg_index, e.index, e.size, e.access, e.thread) == (
        "y", 0, (1 << 32) - 2, 32, "write", (0, 0, 0))
    assert "element 4294967294, which is -2 wrapped around as an unsigned 32-bit index" \
        in str(e), str(e)
    assert not y.any()
