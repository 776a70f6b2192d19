"""Where the CPU executor let a kernel pass that the GPU would treat otherwise (hunt 113).

- Float subnormals: CuPy compiles every kernel with -ftz=true (cupy/cuda/compiler.py appends
  it to the NVRTC options unconditionally), so on the GPU a float operation reads a subnormal
  input as 0 and flushes a subnormal result to 0. The CPU kept them.
- A write through a pointer past the last static __shared__ array (`float *p = tile;
  p[32] = x`) changed the poisoned guard after the section unnoticed (only an index on the
  array itself is checked): now reported after the block, naming the block and the array.
- A variable-length array (`float acc[n];`) compiled, where NVRTC refuses it ("expression
  must have a constant value"): -Werror=vla was silenced by the build's -w.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, KernelFault, RawKernel
from pagedattn_lab.grading.faults import describe_kernel_exception

_ARITH = r"""
extern "C" __global__ void tiny(const float* a, const float* b, float* prod, float* inv,
                                float* same)
{
    int i = threadIdx.x;
    prod[i] = a[i] * b[i];            // 1e-20 * 1e-20: a subnormal result
    inv[i] = 1.0f / (a[i] * b[i]);    // infinity once it is flushed
    same[i] = b[i] * 1.0f + 0.0f;     // a subnormal input read as 0
}
"""


@pytest.mark.parametrize("checked", [True, False])
def test_float_subnormals_are_flushed_to_zero_as_cupy_compiles_with_ftz(checked):
    kern = RawKernel(_ARITH, "tiny")
    a = np.full(4, 1e-20, np.float32)
    b = np.array([1e-20, 1e-40, 1e-20, 2e-45], np.float32)
    prod, inv, same = (np.full(4, -1, np.float32) for _ in range(3))
    kern((1,), (4,), (a, b, prod, inv, same), checked=checked)
    assert prod.tolist() == [0.0] * 4
    assert np.isinf(inv).all() and (inv > 0).all()
    assert same.tolist() == [float(np.float32(1e-20)), 0.0] * 2
    # the launching process's own float mode is as it was (checked=False runs in it)
    assert np.float32(1e-20) * np.float32(1e-20) > 0


_SHARED_PTR = r"""
// a pointer the compiler cannot trace to its array (GCC's object-size check stops a
// traced one at once, hunt 140): the guard after the array catches this one
__device__ __noinline__ float* opaque(float* p) { return p; }
extern "C" __global__ void tile_sums(const float* x, float* out, int shift)
{
    __shared__ float tile[32];
    float* p = opaque(tile);
    p[threadIdx.x + shift] = x[threadIdx.x];   // through a pointer: the index check misses it
    __syncthreads();
    out[threadIdx.x] = tile[threadIdx.x % 32];
}
"""


def test_a_write_through_a_pointer_past_the_static_shared_memory_names_variable_and_block():
    kern = RawKernel(_SHARED_PTR, "tile_sums")
    x = np.arange(32, dtype=np.float32)
    out = np.zeros(64, np.float32)
    kern((2,), (32,), (x, out[:32], np.int32(0)))   # in bounds: runs
    out[:] = -1
    with pytest.raises(KernelFault) as info:
        kern((2,), (32,), (x, out, np.int32(8)))
    e = info.value
    assert e.region == "static shared memory" and e.access == "write"
    assert e.block == (0, 0, 0) and e.thread is None
    # tile[32] is the first byte past it: byte 128 of `tile` (float[32]), as a race counts
    assert (e.variable, e.offset) == ("tile", 128)
    for part in ("past the end of `tile`", "128 bytes", "block (0,0,0)", "pointer"):
        assert part in str(e), (part, str(e))
    assert out.tolist() == [-1.0] * 64   # a failed launch changes nothing
    message, hint = describe_kernel_exception(e)
    assert message.startswith("out-of-bounds write past a static __shared__ array: byte 0 "
                              "past the end of `tile`")
    assert "the static __shared__ array `tile`" in hint and "ran past" in hint


_VLA = r"""
#define TILE 4
extern "C" __global__ void row_sums(const float* x, float* out, int n)
{
    const int N = 8;              // a constant expression in C++: NVRTC takes these
    constexpr int M = 2;
    float a[N], b[M], c[TILE];
    float acc[n];                 // a variable-length array: NVRTC refuses it
    for (int k = 0; k < n; ++k) acc[k] = x[k];
    a[0] = b[0] = c[0] = 0.0f;
    out[threadIdx.x] = acc[n - 1] + a[0] + b[0] + c[0];
}
"""


def test_a_variable_length_array_is_refused_at_its_line_as_nvrtc_refuses_it():
    with pytest.raises(KernelCompileError) as info:
        RawKernel(_VLA, "row_sums").compile()
    e = info.value
    assert e.lineno == 8
    assert [line for _, line, _, _ in e.errors] == [8]   # the constant sizes pass
    assert "variable length array" in str(e) and "constant value" in str(e)
    assert "warning" not in str(e)
    constant = _VLA.replace("float acc[n];", "float acc[N];")
    kern = RawKernel(constant, "row_sums")
    out = np.zeros(1, np.float32)
    kern((1,), (1,), (np.arange(8, dtype=np.float32), out, np.int32(8)))
    assert out.tolist() == [7.0]


def test_a_failed_build_leaves_the_kernels_warnings_out_of_its_message():
    src = _VLA.replace("float acc[n];", "float acc[N]; int unused = 1 << 40;")
    src = src.replace("a[0] = b[0]", "undeclared_name = b[0]")
    with pytest.raises(KernelCompileError) as info:
        RawKernel(src, "row_sums").compile()
    assert "warning" not in str(info.value) and "undeclared_name" in str(info.value)
    assert "warning" in info.value.log   # (the shift: -Wshift-count-overflow, on by default)
