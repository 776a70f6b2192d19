"""Where the CPU executor and a GPU disagreed on a learner's kernel: intrinsics the GPU has that
did not compile here (or, for __half2int_*, did not saturate); a shuffle of a float2, which
the GPU has no overload for, and a `__shared__` initializer, which the GPU's compiler refuses,
that ran here (the latter reading the poison); a shift past the operand's width that the two devices compute apart; and
__activemask(), which cannot know a branch here.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, KernelFault, RawKernel, WarpSyncError

_HALF_ATOMIC_AND_NAN_MINMAX = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
extern "C" __global__ void half_sum(const __half* x, __half* total, float* out)
{
    atomicAdd(total, x[threadIdx.x]);   // sm_70+: 16-bit atomicAdd on __half
    if (threadIdx.x == 0) {
        const __half nan = __ushort_as_half(0x7e00);
        const __half2 m = __hmin2_nan(__halves2half2(x[1], nan), __halves2half2(x[2], x[2]));
        out[0] = __half2float(__hmax_nan(x[1], nan));
        out[1] = __half2float(__hmax(x[1], nan));       // the plain form skips the NaN
        out[2] = __half2float(m.x);
        out[3] = __half2float(m.y);
        const __nv_bfloat16 b = __float2bfloat16(1.0f), bnan = __ushort_as_bfloat16(0x7fc0);
        out[4] = __bfloat162float(__hmin_nan(b, bnan));
        out[5] = __bfloat162float(__hmax2_nan(__halves2bfloat162(b, b), __halves2bfloat162(b, b)).y);
    }
}
"""


def test_atomic_add_on_half_and_the_nan_forms_of_min_and_max_compile_and_compute():
    x = (np.arange(32) / 4).astype(np.float16)
    total, out = np.zeros(1, np.float16), np.zeros(6, np.float32)
    RawKernel(_HALF_ATOMIC_AND_NAN_MINMAX, "half_sum")((1,), (32,), (x, total, out))
    assert total[0] == x.astype(np.float32).sum() == 124.0   # exact in half: every order agrees
    assert np.isnan(out[0]) and out[1] == 0.25
    assert out[2] == 0.25 and np.isnan(out[3])
    assert np.isnan(out[4]) and out[5] == 1.0



_MORE_HALF = r"""
#include <cuda_fp16.h>
extern "C" __global__ void more_half(const float* x, float* out)
{
    const __half inf = __ushort_as_half(0x7c00), nan = __ushort_as_half(0x7e00);
    const __half h = __float2half(x[0]);
    const __half2 p = __halves2half2(h, __float2half(-x[0]));
    int k = 0;
    out[k++] = __half2int_rz(inf) == 2147483647;   // cvt.rzi saturates (x86's cast: INT_MIN)
    out[k++] = __half2int_rn(nan);                 // and gives 0 for NaN
    out[k++] = __half2float(__float2half_rz(x[1]));
    out[k++] = __half2float(__float2half_ru(x[1]));
    out[k++] = __half2float(__float2half_rd(-x[1]));
    out[k++] = __half2float(__float2half_rz(70000.0f));
    out[k++] = __half2float(hrcp(h)) + __half2float(hceil(h)) + __half2float(h2sqrt(p).x);
    out[k++] = __half2float(__hadd_sat(h, h)) + __half2float(__hfma_relu(h, h, __hneg(h)));
    out[k++] = __half2float(__hgt2(p, __half2half2(__float2half(0.0f))).y) + __hbge2(p, p);
    out[k++] = __half2float(__lowhigh2highlow(p).x) + __half2float(__hisnan2(p).x);
}
"""


def test_the_rest_of_cuda_fp16s_intrinsics_compile_and_round_as_the_gpu_does():
    x = np.array([4.0, 1 + 2**-11 + 2**-20], np.float32)   # just above a half tie
    out = np.zeros(10, np.float32)
    RawKernel(_MORE_HALF, "more_half")((1,), (1,), (x, out))
    ulp_up = 1 + 2**-10
    assert out.tolist() == [1, 0, 1, ulp_up, -ulp_up, 65504, 0.25 + 4 + 2, 1 + 12, 0 + 1, -4 + 0]


def _refused(src: str, name: str) -> KernelCompileError:
    """The compile error of kernel `name` of `src`, launched on one warp's 32 floats."""
    with pytest.raises(KernelCompileError) as info:
        RawKernel(src, name)((1,), (32,), (np.zeros(32, np.float32),))
    return info.value


def test_a_shared_variable_with_an_initializer_is_refused_as_nvrtc_refuses_it():
    e = _refused('extern "C" __global__ void count(float* out)\n{\n'
                 "    __shared__ float total = 0.0f;   // NVRTC: initializer not allowed\n"
                 "    atomicAdd(&total, 1.0f);\n    __syncthreads();\n"
                 "    out[threadIdx.x] = total;\n}\n", "count")
    assert e.lineno == 3
    assert "initializer not allowed for __shared__" in str(e) and "line 3" in str(e)
    assert any("threadIdx.x == 0" in h and "__syncthreads()" in h for h in e.hints)


def test_shared_declarations_without_an_initializer_are_not_refused():
    from pagedattn_lab.cpu.source import shared_initializer_lines
    assert shared_initializer_lines(
        "__shared__ float s[N == 4 ? 4 : 8];\n__shared__ int a, b; // = 0\n"
        "extern __shared__ float dyn[];\nfloat x = 0; __shared__ T<(1 <= 2)> t;\n") == []
    assert shared_initializer_lines("\n__shared__ int a[2] = {1, 2};") == [2]


_MASK = r"""
extern "C" __global__ void low_mask(unsigned* out, int n)
{
    out[threadIdx.x] = (1u << (n + (int)threadIdx.x)) - 1u;   // lanes below n + threadIdx.x
}
"""


def test_a_shift_by_the_operands_width_stops_the_thread_instead_of_wrapping():
    kern = RawKernel(_MASK, "low_mask")
    out = np.zeros(2, np.uint32)
    kern((1,), (2,), (out, np.int32(30)))
    assert out.tolist() == [2**30 - 1, 2**31 - 1]
    with pytest.raises(KernelFault) as info:   # GPU: 1u << 32 is 0, so 0xffffffff; x86: 0
        kern((1,), (2,), (out, np.int32(31)))
    e = info.value
    assert e.thread == (1, 0, 0) and e.block == (0, 0, 0)
    assert "1u << 32" in str(e) and "clamps" in str(e)
    assert out.tolist() == [2**30 - 1, 2**31 - 1]   # a failed launch changes nothing



_ACTIVEMASK = r"""
extern "C" __global__ void half_warp_sum(float* out)
{
    float v = threadIdx.x;
    if (threadIdx.x < 16) {   // GPU: __activemask() is (usually) 0x0000ffff here
        v += __shfl_down_sync(__activemask(), v, 1);
        out[threadIdx.x] = v;
    }
}
"""


def test_a_shuffle_with_activemask_inside_a_branch_says_the_cpu_mask_is_every_lane():
    with pytest.raises(WarpSyncError) as info:
        RawKernel(_ACTIVEMASK, "half_warp_sum")((1,), (32,), (np.zeros(32, np.float32),))
    msg = str(info.value)
    assert "lanes 16..31" in msg and "__activemask()" in msg and "__ballot_sync" in msg


def test_shuffling_a_vector_type_does_not_compile_as_on_the_gpu():
    text = str(_refused('extern "C" __global__ void pairs(float* out)\n{\n'
                        "    float2 v = make_float2(threadIdx.x, 1.0f);\n"
                        "    v = __shfl_down_sync(0xffffffffu, v, 1);   // CUDA: no overload for "
                        "float2\n    out[threadIdx.x] = v.x + v.y;\n}\n", "pairs"))
    assert "member by member" in text and "pairs.cu:4" in text


_ROUND_ONCE = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
extern "C" __global__ void round_once(const double* d, float* out)
{
    out[0] = __half2float(__double2half(d[0]));
    out[1] = __half2float(__half(d[0]));
    out[2] = __bfloat162float(__double2bfloat16(d[1]));
    out[3] = __bfloat162float(__nv_bfloat16(d[1]));
    out[4] = __bfloat162float(__int2bfloat16_rn(16842753));   // 2^24 + 2^16 + 1
    // 1.75 * 0.859375 = 1 + 129 * 2^-8, a bfloat16 midpoint; + 2^-30 is past it
    out[5] = __bfloat162float(__hfma(__float2bfloat16(1.75f), __float2bfloat16(0.859375f),
                                     __float2bfloat16((float)d[2])));
}
"""


def test_a_double_or_an_int_rounds_once_to_half_and_bfloat16():
    """Each value lies just past the midpoint of two neighbours of the 16-bit format, by less
    than a float's step: through a float it rounded twice, to the even neighbour below, where
    the GPU's one rounding goes up (so does the fused multiply-add's)."""
    past_half = 1 + 2**-11 + 2**-40     # half's step at 1 is 2^-10
    past_bf16 = 1 + 2**-8 + 2**-40      # bfloat16's step at 1 is 2^-7
    out = np.zeros(6, np.float32)
    RawKernel(_ROUND_ONCE, "round_once")((1,), (1,), (
        np.array([past_half, past_bf16, 2**-30]), out))
    assert out.tolist() == [1 + 2**-10, 1 + 2**-10, 1 + 2**-7, 1 + 2**-7,
                            2**24 + 2**17, 1 + 130 * 2**-8]
