"""The CPU executor's after-block guard reports reviewed in hunt 166 (pagedattn_lab/cpu/
README.md, "Not supported, or not caught")."""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, RawKernel

# Thread 0 writes through a pointer the compiler does not trace (a call that stays a call)
# `off` elements from the start of the kernel's one static __shared__ array.
_PAST_SHARED = r"""
__device__ __noinline__ void put(float* p, int i, float v) { p[i] = v; }

extern "C" __global__ void past_shared(float* y, int off)
{
    __shared__ float a[32];
    a[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) put(a, off, 2.0f);
    __syncthreads();
    y[threadIdx.x] = a[threadIdx.x];
}
"""


@pytest.mark.parametrize("past", [0, 252, 256, 300, 380])
def test_a_write_past_the_last_static_shared_array_names_that_array_not_the_runtimes_guard(past):
    """Bytes 256 to 511 past the section's last array lie in a second guard (shim.h's or
    source.py's), just before runtime.cpp's pal_shared_guard. From hunt 159 to hunt 164,
    shared_guard_error took the runtime's guard for a learner's array and said "byte 112
    before the start of `pal_shared_guard`" (hunt 165's data_symbols leaves it out); the write
    is past the end of `a`, as it is."""
    kern = RawKernel(_PAST_SHARED, "past_shared")
    y = np.zeros(32, np.float32)
    with pytest.raises(KernelFault) as info:
        kern((1,), (32,), (y, np.int32(32 + past // 4)))
    e = info.value
    assert "pal_shared_guard" not in str(e), str(e)
    assert (e.region, e.variable, e.offset, e.thread) == ("static shared memory", "a",
                                                          128 + past, None), str(e)
    assert f"byte {past} past the end of `a` (128 bytes)" in str(e), str(e)
    assert not y.any()


# A template __device__ function's volatile __shared__ variables (a flag, a warp-reduction
# buffer): source.py puts shim.h's PAL_SPOISON after their declarations (first-use poison).
_TEMPLATE_VOLATILE = r"""
template <int N>
__device__ float rotate(const float* x)
{
    __shared__ volatile float s[N];
    volatile __shared__ int flag;
    if (threadIdx.x == 0) flag = 1;
    if (threadIdx.x != 5) s[threadIdx.x] = x[threadIdx.x];   // slot 5 left unwritten
    __syncthreads();
    return s[(threadIdx.x + 1) % N] + flag;
}

extern "C" __global__ void template_volatile(const float* x, float* y)
{
    y[blockIdx.x * 32 + threadIdx.x] = rotate<32>(x);
}
"""


def test_a_templates_volatile_shared_variables_compile():
    """Before: "invalid conversion from 'volatile void*' to 'void*'" in shim.h's PAL_SPOISON,
    so a right kernel did not compile. Now it runs, and gives the GPU's values; the slot no
    thread wrote reads the first-use poison (NaN) in each block, not .bss's zero (hunt 174:
    the test passed without the poison)."""
    x, y = np.arange(32, dtype=np.float32), np.zeros(64, np.float32)
    RawKernel(_TEMPLATE_VOLATILE, "template_volatile")((2,), (32,), (x, y), workers=1)
    rows = y.reshape(2, 32)
    for row in rows:
        assert np.isnan(row[4]), row.tolist()
        assert [v for t, v in enumerate(row.tolist()) if t != 4] == [
            float((t + 1) % 32) + 1.0 for t in range(32) if t != 4]


# A template's anonymous union in shared memory (one buffer reused for two phases, as CUB's
# TempStorage unions are): the variable is `u`, not the union's member `a`.
_TEMPLATE_UNION = r"""
template <int N>
__device__ float rotate(const float* x)
{
    __shared__ union { float a[N]; int b[N]; } u;
    u.a[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    return u.a[(threadIdx.x + 1) % N];
}

extern "C" __global__ void template_union(const float* x, float* y)
{
    y[blockIdx.x * 32 + threadIdx.x] = rotate<32>(x);
}
"""


def test_a_templates_shared_anonymous_union_is_poisoned_by_its_own_name():
    """Before: source.py read the union's first member for the variable's name and put
    `PAL_SPOISON(a)` after the declaration ("'a' was not declared in this scope"), so a right
    kernel did not compile. Now `PAL_SPOISON(u)`, and the kernel gives the GPU's values."""
    from pagedattn_lab.cpu.source import guard_static_shared
    line = next(l for l in guard_static_shared(_TEMPLATE_UNION).splitlines() if "union" in l)
    assert line.endswith("} u; PAL_SPOISON(u)"), line
    x, y = np.arange(32, dtype=np.float32), np.zeros(64, np.float32)
    RawKernel(_TEMPLATE_UNION, "template_union")((2,), (32,), (x, y), workers=1)
    assert y.tolist() == [float((t + 1) % 32) for t in range(32)] * 2


# A generic lambda (an `auto` parameter: its operator() is a template, and GCC drops the
# section attribute of its statics as of a template function's) in a kernel that is not a
# template: block b writes the first 4 + 8b slots of its `__shared__` array only.
_GENERIC_LAMBDA = r"""
extern "C" __global__ void generic_lambda(const float* x, float* y)
{
    auto load = [&](auto offset) {
        __shared__ float s[32];
        if ((int)threadIdx.x < 4 + 8 * (int)blockIdx.x) s[threadIdx.x] = x[threadIdx.x] + offset;
        __syncthreads();
        return s[threadIdx.x];
    };
    y[blockIdx.x * 32 + threadIdx.x] = load(0.0f);
}
"""


def test_a_generic_lambdas_shared_array_is_poisoned_before_each_block():
    """Before (GCC): source.py took only a `template <...>` head for a template, so the
    array got no first-use poison: block 0 read the zeros of .bss and block 1 what block 0
    left (on a GPU, garbage), and a kernel that forgot to load slots passed. Now every slot
    that its block did not write reads NaN."""
    x, y = np.arange(32, dtype=np.float32), np.zeros(64, np.float32)
    RawKernel(_GENERIC_LAMBDA, "generic_lambda")((2,), (32,), (x, y), workers=1)
    rows = y.reshape(2, 32)
    for b in range(2):
        written = 4 + 8 * b
        assert rows[b, :written].tolist() == list(range(written))
        assert np.isnan(rows[b, written:]).all(), (b, rows[b].tolist())


def test_the_first_use_poison_is_not_put_in_a_plain_lambda_or_a_comparisons_block():
    """The generic lambda's head is told from a plain lambda's and from `a[i] < b`."""
    from pagedattn_lab.cpu.source import guard_static_shared
    src = """__device__ void h(const int* a, int b) {
    auto f = [&](int r) {
        __shared__ float e[3];
    };
    if (a[0] < b) {
        __shared__ float g[3];
    }
    auto k = [&]<typename T>(T r) {
        __shared__ float t[3];
    };
}"""
    out = guard_static_shared(src)
    assert "PAL_SPOISON(e)" not in out and "PAL_SPOISON(g)" not in out, out
    assert "t[3]; PAL_SPOISON(t)" in out, out
