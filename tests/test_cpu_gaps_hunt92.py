"""Where the CPU executor passed a kernel that a GPU gets wrong, or refused one CuPy takes
(hunt 92): a local array read before it is written (the CPU stack held zeros, the GPU's
registers hold garbage); a shuffle from a lane outside its mask (undefined in CUDA, the
caller's own value here); a kernel declared extern "C" inside a namespace (CuPy finds it by
its plain name; the executor did not compile it), and one declared in a namespace without
extern "C" (CuPy cannot find its mangled name).
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, RawKernel

_UNZEROED = r"""
extern "C" __global__ void row_sums(const float* x, float* out, int n)
{
    float acc[8];                                  // never zeroed
    for (int j = 0; j < n; ++j) acc[j % 8] += x[8 * threadIdx.x + j % 8];
    float s = 0.0f;
    for (int j = 0; j < 8; ++j) s += acc[j];
    out[threadIdx.x] = s;
}
"""


def test_a_local_array_read_before_written_gives_a_wrong_result():
    from pagedattn_lab.cpu import compiler
    cmd, ident, _ = compiler.compiler()
    if "-ftrivial-auto-var-init=pattern" not in compiler._supported_flags(cmd, ident):
        pytest.skip("this compiler has no -ftrivial-auto-var-init (GCC 11 and older)")
    x = np.ones(8 * 32, np.float32)
    out = np.zeros(32, np.float32)
    RawKernel(_UNZEROED, "row_sums")((1,), (32,), (x, out, np.int32(8)))
    # a zeroed acc gives 8; the pattern the compiler fills locals with gives no finite
    # value near it (GCC: 0xfe bytes, -1.7e38 each, -inf in the sum; Clang: NaN)
    assert not np.isclose(out, 8.0).any(), out


_SHUFFLE_OUTSIDE = r"""
extern "C" __global__ void from_outside(const float* x, float* f, int* i, double* d)
{
    const int l = threadIdx.x;
    if (l < 16) {                    // the low half only: lane 16 is outside the mask
        const unsigned m = 0xffffu;
        f[4 * l + 0] = __shfl_sync(m, x[l], 16);
        f[4 * l + 1] = __shfl_down_sync(m, x[l], 8);   // lanes 8-15 read lanes 16-23
        f[4 * l + 2] = __shfl_xor_sync(m, x[l], 16);
        f[4 * l + 3] = __shfl_up_sync(m, x[l], 4);      // all sources inside: defined
        i[l] = __shfl_sync(m, l, 20);
        d[l] = __shfl_xor_sync(m, (double)x[l], 24);
    }
}
"""


def test_a_shuffle_from_a_lane_outside_the_mask_gives_the_poison():
    x = np.arange(32, dtype=np.float32) + 1
    f, i, d = np.zeros(64, np.float32), np.zeros(16, np.int32), np.zeros(16, np.float64)
    RawKernel(_SHUFFLE_OUTSIDE, "from_outside")((1,), (32,), (x, f, i, d))
    f = f.reshape(16, 4)
    lanes = np.arange(16)
    assert np.isnan(f[:, 0]).all() and np.isnan(f[:, 2]).all()
    assert (f[:8, 1] == x[8:16]).all() and np.isnan(f[8:, 1]).all()
    # shfl_up below the segment's start keeps the caller's own value: defined by CUDA
    assert (f[:, 3] == np.where(lanes >= 4, x[lanes - 4], x[lanes])).all()
    assert (i == -1).all() and np.isnan(d).all()


def _run(src, name="k"):
    a = np.zeros(32, np.float32)
    RawKernel(src, name)((1,), (32,), (a,))
    return a


@pytest.mark.parametrize("src", [
    'namespace lab { namespace inner {\n'
    'extern "C" __global__ void k(float* a) { a[threadIdx.x] = 2.0f; }\n}}\n',
    # C linkage from a declaration before the definition, or from a block around it
    'namespace lab {\nextern "C" __global__ void k(float* a);\n'
    '__global__ void k(float* a) { a[threadIdx.x] = 2.0f; }\n}\n',
    'extern "C" {\nnamespace lab {\n__global__ void k(float* a) { a[threadIdx.x] = 2.0f; }\n}}\n',
], ids=["nested", "declared", "block"])
def test_an_extern_c_kernel_inside_a_namespace_runs(src):
    assert (_run(src) == 2).all()


def test_a_kernel_defined_in_each_branch_of_an_if_runs_the_branch_compiled():
    src = ('#ifdef FAST\nextern "C" __global__ void k(float* a) { a[threadIdx.x] = 1.0f; }\n'
           '#else\nextern "C" __global__ void k(float* a) { a[threadIdx.x] = 2.0f; }\n#endif\n')
    assert (_run(src) == 2).all()


def test_a_namespaced_kernels_launch_bounds_are_its_own():
    src = ('#define LIMIT 64\nnamespace lab {\n'
           'extern "C" __global__ void __launch_bounds__(LIMIT)\n'
           'k(float* a) { a[threadIdx.x] = 2.0f; }\n}\n#undef LIMIT\n')
    kern, a = RawKernel(src, "k"), np.zeros(128, np.float32)
    kern((1,), (64,), (a,))
    assert (a[:64] == 2).all()
    assert kern.max_threads_per_block == 64
    with pytest.raises(ValueError, match="__launch_bounds__ maximum of 64"):
        kern((1,), (128,), (a,))


def test_a_kernel_in_a_namespace_without_extern_c_is_refused_as_cupy_would():
    src = 'namespace lab {\n__global__ void k(float* a) { a[threadIdx.x] = 2.0f; }\n}\n'
    with pytest.raises(KernelCompileError, match=r'namespace without extern "C" \(lab::k\)') as e:
        _run(src)
    assert "entry points" not in str(e.value)
