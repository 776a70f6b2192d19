"""Review of hunts 182 and 184's CPU-executor changes (hunt 187): what a legitimate kernel got.

(a) `__constant__` was shim.h's empty macro: a `__constant__ float` with its values in the
source lay in .data, which device_data.py (hunt 184) took for the kernel's global memory,
so every read of it counted as a global read. A GPU reads constant memory through the
constant cache, not as global loads: puzzle_map's `out[i] = a[i] + kTen` failed its budget
of one global read per thread. `__constant__` is `const` now (read-only data, which the
counts leave out), and a write to it from kernel code does not compile, as under NVRTC
(it compiled and ran before).
(b) gridDim and blockDim are const to kernel code now (hunt 184): every read-only use of
them still compiles (a guard: they all did).
(c) Only `__device__` variables forced one worker process: a `__managed__` variable or a
function's `static` one had a copy per worker, so a ticket that picks the last block to
finish (CUDA's threadFenceReduction) never reached its last value and the sum was never
written. Both force one worker now.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, RawKernel, count_accesses
from tests.check_helpers import run_check

MAP_CONSTANT = r"""
__constant__ float kTen = 10.0f;
extern "C" __global__ void map_add_10(const float* a, float* out)
{
    int i = threadIdx.x;
    out[i] = a[i] + kTen;
}
"""


def test_a_constant_read_is_not_a_global_read_under_a_puzzle_budget():
    """Before: 'made 2 global reads; the budget is 1 per thread' in every case."""
    result, printed = run_check("puzzle_map", MAP_CONSTANT, device="cpu")
    assert result.status == "passed", printed


CONSTANTS = r"""
__constant__ float table[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
__constant__ const float a2[2] = {1, 2};
const __constant__ float b2[2] = {3, 4};
__constant__ constexpr float c = 5;
static __constant__ float d2[2] = {6, 7};
struct P { float x; int y; };
__constant__ P p = {8, 9};
extern "C" __constant__ float e2[2] = {10, 11};
__device__ float at(const float* t, int i) { return t[i]; }
extern "C" __global__ void k(const float* a, float* out)
{
    int i = threadIdx.x;
    out[i] = a[i] * at(table, i % 16) + a2[i % 2] + b2[i % 2] + c + d2[i % 2] + p.x + p.y
             + e2[i % 2];
}
"""


def test_constant_variables_of_every_form_compile_and_are_not_counted():
    """Before: each __constant__ variable but c a "__device__" buffer, 6 global reads per
    thread (a, table, a2... folded where the compiler could)."""
    a, out = np.arange(40, dtype=np.float32), np.zeros(40, np.float32)
    counts = count_accesses(RawKernel(CONSTANTS, "k"), (1,), (40,), (a, out))
    i = np.arange(40)
    odd = i % 2
    expected = (a.astype(np.float64) * (i % 16) + (1 + odd) + (3 + odd) + 5 + (6 + odd) + 8 + 9
                + (10 + odd))
    np.testing.assert_array_equal(out, expected)
    assert sorted(counts.by_buffer) == ["a", "out"]
    np.testing.assert_array_equal(counts.global_reads[0], 1)


@pytest.mark.parametrize("source, error, hint", [
    ("__constant__ float t[4] = {1, 2, 3, 4};\n"
     'extern "C" __global__ void k(float* out) { t[threadIdx.x] = 2; out[threadIdx.x] = t[0]; }',
     None, "a __constant__ variable is read-only to kernel code (NVRTC refuses the write too)"),
    ("struct P { float x; int y; };\n__constant__ P p = {1, 2};\n"
     'extern "C" __global__ void k(float* out) { p.x += 1; out[threadIdx.x] = p.x; }',
     None, "a __constant__ variable is read-only to kernel code (NVRTC refuses the write too)"),
    ("__constant__ float t[4] = {1, 2, 3, 4};\n"
     'extern "C" __global__ void k(float* out) { float* p = t; out[threadIdx.x] = p[0]; }',
     None, "is a pointer to const (const float *p)"),
    ("__constant__ float t[4] = {1, 2, 3, 4};\n"
     "__device__ float get(float* p, int i) { return p[i]; }\n"
     'extern "C" __global__ void k(float* out) { out[threadIdx.x] = get(t, threadIdx.x); }',
     None, "is a pointer to const (const float *p)"),
    ("__constant__ float t[4];\n"
     'extern "C" __global__ void k(float* out) { out[threadIdx.x] = t[threadIdx.x]; }',
     None, "cannot set __constant__ memory from the host"),
])
def test_what_constant_memory_cannot_do_does_not_compile(source, error, hint):
    """Before: all five compiled (the first two wrote constant memory, which NVRTC refuses;
    GCC's words, then Clang's: `CXX=clang++`)."""
    with pytest.raises(KernelCompileError) as info:
        RawKernel(source, "k")((1,), (4,), (np.zeros(4, np.float32),))
    assert info.value.lineno in (1, 2, 3)
    assert any(hint in h for h in info.value.hints), info.value.hints
    assert error is None or error in str(info.value)


def test_constant_hints_name_only_constant_variables():
    """A write through a const argument is no __constant__ variable's: no such hint."""
    source = ("__constant__ float t[4] = {1, 2, 3, 4};\n"
              'extern "C" __global__ void k(const float* a) { a[threadIdx.x] = t[0]; }')
    with pytest.raises(KernelCompileError) as info:
        RawKernel(source, "k")((1,), (4,), (np.zeros(4, np.float32),))
    assert not any("__constant__" in h for h in info.value.hints), info.value.hints


def test_constant_once_blanks_only_where_the_declaration_says_const():
    from pagedattn_lab.cpu.constant_decl import constant_once   # noqa: PLC0415 - new in hunt 187
    source = ("__constant__ float a[2] = {1, 2};  // __constant__ const in a comment\n"
              "__constant__ const float b = 1; const __constant__ int c[1] = {2};\n"
              "__constant__ constexpr float d = 3; __constant__ float *const e = nullptr;\n"
              "__constant__ float f = 2, g[const_len];\n"
              "#define READ_ONLY const\n__constant__ float h = 1;\n")
    out = constant_once(source)
    assert len(out) == len(source)   # (columns do not move)
    assert out.splitlines() == [
        "__constant__ float a[2] = {1, 2};  // __constant__ const in a comment",
        "/*constant*/ const float b = 1; const /*constant*/ int c[1] = {2};",
        "/*constant*/ constexpr float d = 3; /*constant*/ float *const e = nullptr;",
        "__constant__ float f = 2, g[const_len];",
        "#define READ_ONLY const", "__constant__ float h = 1;"]


DIMS = r"""
struct Geo { dim3 g; dim3 b; };
__device__ unsigned volume(const dim3* d) { return d->x * d->y * d->z; }
__device__ unsigned xs(const dim3& d) { return d.x; }
template <typename T> __device__ unsigned by_value(T d) { return d.x; }
template <typename T> __device__ unsigned by_ref(T& d) { return d.y; }
template <typename T> __device__ unsigned by_const_ref(const T& d) { return d.z; }
extern "C" __global__ void k(unsigned* out)
{
    dim3 g = gridDim;
    const dim3 &b = blockDim;
    auto d = blockDim.x * gridDim.x;
    uint3 u = gridDim;
    Geo geo{gridDim, blockDim};
    dim3 g2(gridDim.x, gridDim.y);
    g.x += 1;
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    out[t] = g.x + b.x + d + u.y + geo.b.x + g2.y + volume(&blockDim) + xs(gridDim)
             + by_value(gridDim) + by_ref(gridDim) + by_const_ref(blockDim)
             + max(gridDim.x, 1u) + min(blockDim.x, 64u);
}
"""


def test_read_only_uses_of_grid_and_block_dims_compile():
    out = np.zeros(8, np.uint32)
    RawKernel(DIMS, "k")((2,), (4,), (out,))
    # 3 + 4 + 8 + 1 + 4 + 1 + 4 + 2 + 2 + 1 + 1 + 2 + 4
    np.testing.assert_array_equal(out, 37)


TICKET = r"""
DECLARE_TICKET
extern "C" __global__ void k(const float* a, float* partial, float* total, int n)
{
    LOCAL_TICKET
    __shared__ bool last;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (threadIdx.x == 0) partial[blockIdx.x] = 0;
    __syncthreads();
    if (i < n) atomicAdd(&partial[blockIdx.x], a[i]);
    for (int r = 0; r < 64; ++r) __syncthreads();   // (slow blocks: every worker takes some)
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicInc(&ticket, gridDim.x) == gridDim.x - 1;
    __syncthreads();
    if (last && threadIdx.x == 0) {
        float s = 0;
        for (int b = 0; b < gridDim.x; ++b) s += partial[b];
        total[0] = s;
        ticket = 0;   // (for the next launch)
    }
}
"""


@pytest.mark.parametrize("outside, inside", [("__managed__ unsigned int ticket = 0;", ""),
                                             ("", "static unsigned int ticket = 0;")])
def test_a_ticket_in_managed_or_function_static_memory_finds_the_last_block(outside, inside):
    """The threadFenceReduction pattern: the block that takes the last ticket sums the
    partials. Before: each worker process counted its own tickets (only __device__ variables
    forced one process), no block was last, and total was never written (unless one worker
    happened to take every block: the source check below fails before whatever the timing)."""
    source = TICKET.replace("DECLARE_TICKET", outside).replace("LOCAL_TICKET", inside)
    n = 63 * 128 + 7
    a = np.random.default_rng(187).standard_normal(n).astype(np.float32)
    partial, total = np.zeros(64, np.float32), np.full(1, np.nan, np.float32)
    kern = RawKernel(source, "k")
    for _ in range(2):
        total[:] = np.nan
        kern((64,), (128,), (a, partial, total, np.int32(n)), workers=4)
        assert total[0] == pytest.approx(a.astype(np.float64).sum(), abs=1e-3)


def test_which_sources_hold_writable_global_memory():
    from pagedattn_lab.cpu.source import has_device_variables   # noqa: PLC0415
    assert has_device_variables("__managed__ int m;")
    assert has_device_variables("__device__ int f() { static int calls = 0; return ++calls; }")
    for source in ("static __shared__ float t[4];", "static const float t[2] = {1, 2};",
                   "static constexpr int N = 4;", "static float f(float x);",
                   "static_assert(sizeof(int) == 4, \"\");", "int x = static_cast<int>(y);",
                   "// static int commented;"):
        assert not has_device_variables(source), source
