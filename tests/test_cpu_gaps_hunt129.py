"""CPU executor gaps (hunt 129).

With Clang (the compiler of a learner's Mac; `CXX=clang++`): the runtime did not compile
(`PAL_HIDDEN [[noreturn]]`, a narrowing in the seccomp filter), a static `__shared__` array
the kernel never writes read 0 (Clang folded the load to the static's initial zeros), an
index past an array was reported without the array's expression (Clang points at its
name, GCC at its closing bracket) and with Clang's type spelling, a kernel named like a C
library function got no hint (Clang's words differ from GCC's), and the compiler's caret
lines quoted the entry wrappers appended to the kernel's last line. These run where
clang++ is installed and skip otherwise.

Doubles: the flush-to-zero mode that gives float operations CuPy's -ftz=true flushes double
subnormals too, where the GPU keeps them (cpu/README.md documents it); pinned here.
"""
import shutil

import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, KernelFault, RawKernel

_CLANG = shutil.which("clang++")
needs_clang = pytest.mark.skipif(_CLANG is None, reason="clang++ is not installed "
                                 "(apt-get install clang)")


@pytest.fixture
def clang(monkeypatch):
    monkeypatch.setenv("CXX", _CLANG)
    monkeypatch.delenv("PAGEDATTN_LAB_GRADING_CXX", raising=False)


_PEEK = r"""
extern "C" __global__ void peek(const float* x, float* out)
{
    __shared__ float tile[32];      // never loaded: reads the garbage (NaN here)
    out[threadIdx.x] = tile[threadIdx.x] + x[threadIdx.x];
}
"""


@needs_clang
def test_clang_builds_the_runtime_and_an_unloaded_shared_tile_reads_the_poison(clang):
    x, out = np.ones(32, np.float32), np.zeros(32, np.float32)
    kern = RawKernel(_PEEK, "peek")
    kern((1,), (32,), (x, out))
    assert np.isnan(out).all(), out


_PAST = r"""
extern "C" __global__ void rows(const float* x, float* out, int j)
{
    __shared__ float s[4][32];
    float acc[8];
    for (int k = 0; k < 8; ++k) acc[k] = x[k];
    s[threadIdx.x % 4][threadIdx.x] = 0.0f;
    __syncthreads();
    out[threadIdx.x] = acc[j] + s[0][threadIdx.x + j];
}
"""


@needs_clang
@pytest.mark.parametrize("j, expr, type_name", [
    (9, "acc[j]", "float [8]"),
    (1, "s[0][threadIdx.x + j]", "float [32]"),
])
def test_clang_an_index_past_an_array_names_the_expression_in_gccs_spelling(
        clang, j, expr, type_name):
    x, out = np.ones(8, np.float32), np.zeros(32, np.float32)
    with pytest.raises(KernelFault) as info:
        RawKernel(_PAST, "rows")((1,), (32,), (x, out, np.int32(j)))
    fault = info.value
    assert (fault.array, fault.array_type, fault.line) == (expr, type_name, 9), str(fault)
    assert f"`{expr}`" in str(fault) and f"({type_name}:" in str(fault)


@needs_clang
def test_clang_a_kernel_named_like_a_c_library_function_gets_the_hint(clang):
    source = ('extern "C" __global__ void div(float *x, int n)\n'
              '{ int i = threadIdx.x; if (i < n) x[i] = x[i] * 0.5f; }\n')
    with pytest.raises(KernelCompileError) as info:
        RawKernel(source, "div", filename="div.cu").compile()
    assert "`div` is also a C library function" in str(info.value), str(info.value)


@needs_clang
def test_clang_a_compile_error_quotes_the_kernels_line_not_the_entry_wrappers(clang):
    source = ('extern "C" __global__ void halve(float *x, int n)\n'
              '{ int i = threadIdx.x; if (i < n) x[i] = x[i] * 0.5f + undeclared; }\n')
    with pytest.raises(KernelCompileError) as info:
        RawKernel(source, "halve", filename="halve.cu").compile()
    text = str(info.value)
    assert "clang" in text and info.value.lineno == 2, text   # (the compiler is named)
    assert "undeclared identifier 'undeclared'" in text, text
    assert "__pal" not in text and "PAL_EXPORT" not in text, text


@needs_clang
def test_clang_a_variable_length_array_is_refused_at_its_line(clang):
    source = ('extern "C" __global__ void sums(const float *x, float *out, int n)\n'
              '{\n    float acc[n];\n    acc[0] = x[0];\n    out[0] = acc[0];\n}\n')
    with pytest.raises(KernelCompileError) as info:
        RawKernel(source, "sums").compile()
    assert info.value.lineno == 3 and "variable-length array" in str(info.value)


_DOUBLES = r"""
extern "C" __global__ void doubles(const double* x, const float* f, double* out)
{
    const double tiny = x[0];              // 2^-1070, a double subnormal
    out[0] = tiny;                         // copied: kept
    out[1] = x[1] * x[2];                  // 2^-1000 * 2^-60: a subnormal result
    out[2] = tiny > 0.0 ? 1.0 : 0.0;       // compared
    out[3] = sqrt(tiny);                   // read by an operation
    out[4] = ldexp(1.0, -1070);            // built from integers by the library
    out[5] = (double)f[0];                 // a float subnormal, widened: 0 on the GPU too
}
"""


@pytest.mark.parametrize("checked", [True, False])
def test_double_subnormals_are_flushed_as_the_readme_says(checked):
    """cpu/README.md ("Floating-point results ..."): the CPU's flush-to-zero mode covers
    doubles, where the GPU keeps them (it would give 2^-1060, 1, 2^-535). If this fails
    because the CPU now keeps them, update the README."""
    x = np.array([2.0 ** -1070, 2.0 ** -1000, 2.0 ** -60])
    f = np.array([2.0 ** -140], np.float32)
    out = np.full(6, -1.0)
    RawKernel(_DOUBLES, "doubles")((1,), (1,), (x, f, out), checked=checked)
    assert out.tolist() == [2.0 ** -1070, 0.0, 0.0, 0.0, 2.0 ** -1070, 0.0]
    # the launching thread's own mode is restored (checked=False ran in it)
    assert np.float64(2.0 ** -1000) * np.float64(2.0 ** -60) == 2.0 ** -1060


_RMW = r"""
extern "C" __global__ void bump(float* x)
{
    __shared__ float acc;
    if (threadIdx.x == 0) acc = 0.0f;
    __syncthreads();
    x[threadIdx.x] += 1.0f;                // a read and a write of x
    acc += x[threadIdx.x];                 // a race: a read and a write of acc by every thread
}
"""


@needs_clang
def test_clang_counts_the_read_of_a_read_modify_write(clang):
    """Clang's thread sanitizer drops a read that a write to the same address follows."""
    from pagedattn_lab.cpu import count_accesses
    source = 'extern "C" __global__ void bump(float* x) { x[threadIdx.x] += 1.0f; }'
    x = np.zeros(32, np.float32)
    counts = count_accesses(RawKernel(source, "bump"), (1,), (32,), (x,))
    assert counts.by_buffer["x"].reads == 32 and counts.by_buffer["x"].writes == 32, counts
    assert (x == 1).all()


@needs_clang
def test_clang_a_read_modify_write_race_is_a_read_after_write(clang):
    from pagedattn_lab.cpu import SharedMemoryRace
    with pytest.raises(SharedMemoryRace) as info:
        RawKernel(_RMW, "bump")((1,), (32,), (np.zeros(32, np.float32),), racecheck=True)
    assert (info.value.kind, info.value.variable, info.value.line) == ("read after write",
                                                                       "acc", 8)


_TWO_TILES = r"""
// a pointer the compiler cannot trace to its array (GCC's object-size check stops a
// traced one at once, hunt 140): the guard after the array catches this one
__device__ __noinline__ float* opaque(float* p) { return p; }
extern "C" __global__ void two_tiles(const float* x, float* out, int past)
{
    __shared__ float a[32];
    __shared__ float b[32];
    a[threadIdx.x] = x[threadIdx.x];
    b[threadIdx.x] = 2.0f * x[threadIdx.x];
    __syncthreads();
    float *p = opaque(FIRST);
    if (threadIdx.x == 0 && past) p[32] = 5.0f;    // one past the end
    __syncthreads();
    out[threadIdx.x] = past ? 0.0f : p[32 + threadIdx.x % 4];
}
"""


@pytest.mark.parametrize("compiler", ["default", pytest.param("clang", marks=needs_clang)])
@pytest.mark.parametrize("first", ["a", "b"])
def test_a_pointer_past_a_static_shared_array_that_another_follows(compiler, first, request):
    """GCC lays the arrays out in reverse order, Clang in order: either way one of them is
    followed by the other, whose values a read past it got and whose first element a write
    past it overwrote unnoticed. Now a guard follows each: the read gets the poison (NaN),
    the write is found after the block and names the array."""
    if compiler == "clang":
        request.getfixturevalue("clang")
    kern = RawKernel(_TWO_TILES.replace("FIRST", first), "two_tiles")
    x, out = np.arange(1, 33, dtype=np.float32), np.zeros(32, np.float32)
    kern((1,), (32,), (x, out, np.int32(0)))
    assert np.isnan(out).all(), out
    out[:] = -1
    with pytest.raises(KernelFault) as info:
        kern((2,), (32,), (x, out, np.int32(1)))
    e = info.value
    # offset counts from the array's start (as a SharedMemoryRace's): its 128 bytes, then 0 past
    assert (e.region, e.variable, e.offset, e.thread) == ("static shared memory", first, 128,
                                                          None), str(e)
    assert f"past the end of `{first}` (128 bytes)" in str(e)
    assert (out == -1).all()
