"""`static __shared__` (as NVIDIA's samples write it, and nvcc takes it) on the CPU executor:
shim.h's `__shared__` is static already, so the source's own `static` is blanked, column for
column (cpu/source.py); before, the compiler refused `static static`."""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, RawKernel

BLOCK_SUM = r"""
extern "C" __global__ void block_sum(const float* x, float* out, int n)
{
    static __shared__ float partial[32];
    float v = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        v += x[i];
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, offset);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int w = 0; w < (int)(blockDim.x + 31) / 32; ++w) total += partial[w];
        out[blockIdx.x] = total;
    }
}
"""


@pytest.mark.parametrize("n,blocks,threads", [(1, 1, 32), (1000, 3, 96), (4099, 9, 1024)])
def test_a_static_shared_array_compiles_and_sums_like_numpy(n, blocks, threads):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    out = np.full(blocks, np.nan, np.float32)
    RawKernel(BLOCK_SUM, "block_sum")((blocks,), (threads,), (x, out, np.int32(n)))
    per_block = [x[np.arange(n) % (blocks * threads) // threads == b].astype(np.float64).sum()
                 for b in range(blocks)]
    np.testing.assert_allclose(out, per_block, rtol=1e-5, atol=1e-5)


def test_an_error_on_a_static_shared_line_keeps_its_column():
    src = ('extern "C" __global__ void k(float* y)\n{\n'
           "    static __shared__ float s[4]; s[0] = undefined_name;\n}\n")
    with pytest.raises(KernelCompileError) as info:
        RawKernel(src, "k")((1,), (1,), (np.zeros(1, np.float32),))
    column = src.splitlines()[2].index("undefined_name") + 1
    assert f":3:{column}" in str(info.value), str(info.value)


@pytest.mark.parametrize("body", [
    "l: static __shared__ float t[32]; t[threadIdx.x] = 1.0f; __syncthreads(); y[0] = t[0];",
    "switch (1) { case 1: static __shared__ float t[32]; t[threadIdx.x] = 1.0f; "
    "__syncthreads(); y[0] = t[0]; }",
    "DECL t[threadIdx.x] = 1.0f; __syncthreads(); y[0] = t[0];"])
def test_static_shared_after_a_label_a_case_or_in_a_macro_compiles(body):
    """Read-through: the blanking followed the guard's pattern, which stops at `:` and macro
    bodies, so these still read `static static`."""
    src = ('#define DECL static __shared__ float t[32];\n'
           'extern "C" __global__ void k(float* y)\n{\n    ' + body + "\n}\n")
    y = np.zeros(1, np.float32)
    RawKernel(src, "k")((1,), (32,), (y,))
    assert y[0] == 1.0
