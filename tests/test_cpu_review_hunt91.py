"""Review of hunt 88's CPU executor entries (hunt 91): a kernel's __launch_bounds__ maximum is
read where the kernel is, so a macro the source #undef's or redefines after the kernel (which
NVRTC takes) neither breaks the build nor changes the bound; and the rounding-mode arithmetic
gives an exact zero the sign IEEE 754 gives it (-0 when rounding down), as a GPU's add.rm does.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel
from pagedattn_lab.cpu.source import translation_unit

_BOUNDED = r"""
#define NT 64
extern "C" __global__ void __launch_bounds__(NT) bounded(int* out)
{ out[threadIdx.x] = threadIdx.x; }   // the bound is exported just past this brace
#undef NT
{redefine}
"""


@pytest.mark.parametrize("redefine", ["", "#define NT 2048"])
def test_a_launch_bounds_macro_undefined_or_redefined_after_the_kernel_keeps_the_kernels_bound(
        redefine):
    kern = RawKernel(_BOUNDED.replace("{redefine}", redefine), "bounded")
    out = np.zeros(128, np.int32)
    kern((1,), (64,), (out,))
    assert kern.max_threads_per_block == 64 and out[63] == 63
    with pytest.raises(ValueError, match=r"128 threads per block is over the kernel's "
                                         r"__launch_bounds__ maximum of 64"):
        kern((1,), (128,), (out,))


def test_the_exported_bound_keeps_every_later_line_at_its_number():
    """A bound written over several lines is exported on the kernel's last line: the lines
    after it keep the numbers that compile errors, printf and the race check report."""
    source = ('#define NT 64\nextern "C" __global__ void __launch_bounds__(\n    NT\n    * 1)\n'
              'k(int* out) { out[threadIdx.x] = 1; }\n#undef NT\n__device__ int after;\n')
    unit = translation_unit(source, ["k"], "k.cu", "shim.h")
    body = unit.split('#line 1 "k.cu"\n', 1)[1].split('#line 1 "<pagedattn_lab', 1)[0]
    assert body.splitlines()[5:] == source.splitlines()[5:]
    assert "__pal_max_threads_k = (long long)(NT * 1);" in body.splitlines()[4]


_ZERO_SUMS = r"""
extern "C" __global__ void zero_sums(const float* a, float* o)
{
    const float x = a[0], z = a[1];   // 1.5 and +0
    o[0] = __fadd_rd(x, -x);  o[1] = __fsub_rd(x, x);   o[2] = __fmaf_rd(x, x, -x * x);
    o[3] = __fadd_rd(z, z);   o[4] = __fadd_rd(z, -z);  o[5] = __fmaf_rd(x, -z, z);
    o[6] = __fsub_rd(-z, -z); o[7] = __fmaf_rd(x, z, z);
    o[8] = __fadd_ru(x, -x);  o[9] = __fadd_rz(x, -x);  o[10] = __fmaf_ru(x, x, -x * x);
    o[11] = __fadd_ru(-z, -z); o[12] = __fadd_rz(-z, -z); o[13] = __fmaf_rz(-x, z, -z);
}
"""


def test_an_exact_zero_sum_is_minus_zero_rounding_down_and_plus_zero_otherwise_as_ieee_754_says():
    out = np.full(14, 7.0, np.float32)
    RawKernel(_ZERO_SUMS, "zero_sums")((1,), (1,), (np.array([1.5, 0.0], np.float32), out))
    assert (out == 0).all()
    # rounding down, an exact zero is -0 unless both terms are +0 (x - x, +0 + -0, the
    # product -0 plus +0); rounding up or toward zero it is +0 unless both terms are -0
    want = [1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]
    assert np.signbit(out).astype(int).tolist() == want


_MIN_MACRO = r"""
#define min(a, b) ((a) < (b) ? (a) : (b))
#define max(a, b) ((a) > (b) ? (a) : (b))
extern "C" __global__ void lane_extremes(int* out)
{
    const int v = (int)threadIdx.x * 3 - 40;
    out[threadIdx.x] = max(__reduce_min_sync(0xffffffffu, v), -100) +
                       1000 * min(__reduce_max_sync(0xffffffffu, (unsigned)threadIdx.x), 99u);
}
"""


def test_warp_reduce_min_and_max_compile_beside_a_kernels_own_min_and_max_macros():
    """NVRTC's __reduce_min_sync is a function, which a kernel's `min` macro leaves alone; the
    executor's is a macro naming a member, which a member called min would let it expand."""
    out = np.zeros(32, np.int32)
    RawKernel(_MIN_MACRO, "lane_extremes")((1,), (32,), (out,))
    assert (out == -40 + 1000 * 31).all()


_EVERY_ATOMIC = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
extern "C" __global__ void every_atomic(float* f, double* d, __half* h, __half2* h2,
    unsigned long long* u, long long* l, unsigned short* us, unsigned* ui, int* i,
    __nv_bfloat16* b, __nv_bfloat162* b2)
{
    atomicAdd(f, 1.0f); atomicExch(f, 2.0f); atomicAdd(f, 1.0f); atomicAdd_block(f, 1.0f);
    atomicAdd(d, 1.0); atomicAdd_system(d, 1.0);
    atomicAdd(h, __float2half(1.0f)); atomicAdd(h2, __floats2half2_rn(1.0f, 2.0f));
    atomicAdd(b, __float2bfloat16(1.0f)); atomicAdd(b2, __floats2bfloat162_rn(1.0f, 2.0f));
    atomicAdd(u, 1ull); atomicMax(u, 5ull); atomicMin(u, 2ull); atomicAnd(u, 3ull);
    atomicOr(u, 4ull); atomicXor(u, 1ull); atomicExch(u, 9ull); atomicCAS(u, 9ull, 8ull);
    atomicMax(l, -5ll); atomicMin(l, -7ll);
    atomicCAS(us, (unsigned short)0, (unsigned short)3);
    atomicInc(ui, 10u); atomicInc(ui, 10u); atomicDec(ui, 10u); atomicSub(ui, 1u);
    atomicSub(ui, 1u); atomicSub(i, 1); atomicMax(i, -3); atomicMin(i, -4); atomicCAS(i, -4, 6);
}
"""


def test_every_atomic_cuda_declares_compiles_and_computes_its_result():
    """The other side of hunt 88's refusals: each overload CUDA 12 declares (sm_70+) is kept."""
    arrays = [np.zeros(n, dt) for dt, n in [(np.float32, 1), (np.float64, 1), (np.float16, 1),
                                            (np.float16, 2), (np.uint64, 1), (np.int64, 1),
                                            (np.uint16, 1), (np.uint32, 1), (np.int32, 1),
                                            (np.uint16, 1), (np.uint16, 2)]]
    RawKernel(_EVERY_ATOMIC, "every_atomic")((1,), (1,), tuple(arrays))
    f, d, h, h2, u, l, us, ui, i, b, b2 = (a.tolist() for a in arrays)
    one, two = 0x3F80, 0x4000   # bfloat16 bits of 1.0 and 2.0
    assert (f, d, h, h2, u, l, us) == ([4.0], [2.0], [1.0], [1.0, 2.0], [8], [-7], [3])
    assert (ui, i, b, b2) == ([2 ** 32 - 1], [6], [one], [one, two])


_WORD_MACROS = r"""
#define any(x) ((x) != 0)
#define all(x) ((x) != 0)
#define add(a, b) ((a) + (b))
#define any_line 7
extern "C" __global__ void lane_words(int* out)
{
    const int v = (int)threadIdx.x % 2;
    int pred = 0;
    const unsigned same = __match_any_sync(0xffffffffu, v);
    const unsigned whole = __match_all_sync(0xffffffffu, 5, &pred);
    out[threadIdx.x] = add(__reduce_add_sync(0xffffffffu, v), any_line) + any(same == 0x55555555u
        || same == 0xaaaaaaaau) * 100 + all(whole == 0xffffffffu && pred) * 1000;
}
"""


def test_warp_match_and_reduce_compile_beside_a_kernels_own_word_macros():
    """Failed before: a kernel's own `any`, `all` or `add` macro expanded the names the
    executor's __match_*_sync and __reduce_*_sync macros bring into its text."""
    out = np.zeros(32, np.int32)
    RawKernel(_WORD_MACROS, "lane_words")((1,), (32,), (out,))
    assert (out == 16 + 7 + 100 + 1000).all()
