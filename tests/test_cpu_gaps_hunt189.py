"""The CPU executor's one-program gaps left by hunt 187's review (hunt 189).

(1) `#define CMEM __constant__` then `CMEM const float t[2]` did not compile ("duplicate
const"; NVRTC accepts it): constant_once blanked the macro's body where the statement after
the #define said const (every other use lost its const), and not the use. A macro that
stands for `__constant__` alone is now judged at each use.
(2) `__constant__ float* p` made the pointee const (`const float* p`): `p[i] = x`, which
the GPU compiles (the pointer lives in constant memory, not what it points at), did not
compile. The const now goes after the declarator's `*`.
(3) uses_printf missed `#define LOG printf`: such a launch ran its blocks out of order and on
several workers, so its output came out of block order.
(4) a write to a `__constant__ dim3` got the gridDim/blockDim hint (the errors' words name
only the type); the hint now goes by what the error's line writes.
(5) `threadIdx.x = 0` compiled (NVRTC refuses it): kernel code now reads threadIdx and
blockIdx through a reference to const (shim_types.h), which the compiler reloads after the
call that switches fibers, as it did the variables.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, RawKernel
from pagedattn_lab.cpu.compile_errors import compile_error
from pagedattn_lab.cpu.constant_decl import constant_once
from pagedattn_lab.cpu.source import uses_printf


def test_constant_once_sees_a_macro_that_stands_for_constant():
    source = ("#define CMEM __constant__\n#define CM2 CMEM\n__device__ int x;\n"
              "CMEM const float t[2] = {1, 2}; CM2 float u = 1; const CM2 int v = 2;\n"
              "#define CC __constant__ const\n")
    out = constant_once(source)
    assert len(out) == len(source)
    assert out.splitlines() == [
        "#define CMEM __constant__", "#define CM2 CMEM", "__device__ int x;",
        "     const float t[2] = {1, 2}; CM2 float u = 1; const     int v = 2;",
        "#define CC /*constant*/ const"]


def test_a_constant_pointer_is_const_itself_not_its_pointee():
    source = ("__constant__ float *a, **b; static __constant__ float* p = buf;\n"
              "__constant__ float * const c = buf; __constant__ float d[2] = {1, 2};\n")
    assert constant_once(source).splitlines() == [
        "/*constant*/ float * const a, ** const b; static /*constant*/ float* const  p = buf;",
        "/*constant*/ float * const c = buf; __constant__ float d[2] = {1, 2};"]


# (hunt 194's test launches `take` of this build: a -D macro for __constant__ and two
# __device__ variables that the source check missed, one spelled through a -D macro; hunt
# 203's forms of __constant__ through macros: a #define that says const, a function-like -D
# macro for it, a -D option that says const)
CONSTANTS = r"""
#define CMEM __constant__
#define TABLE CMEM const float table[2]
__device__ __align__(16) float buf[64];
CMEM const float t[2] = {1, 2};
__constant__ float* p = buf;
LAB_CONSTANT const float one_half = 0.5f;
LAB_DEVICE unsigned int tickets;
TABLE = {3, 4};
LAB_CM(1) const float quarter = 0.25f;
LAB_CC float eighth = 0.125f;
extern "C" __global__ void k(const float* a, float* out)
{
    int i = threadIdx.x;
    p[i] = a[i] * 2;
    out[i] = p[i] + t[i % 2] + table[i % 2] * quarter + eighth;
}
extern "C" __global__ void take(float* taken)
{
    for (int r = 0; r < 64; ++r) __syncthreads();   // (slow blocks: every worker takes some)
    if (threadIdx.x == 0) taken[blockIdx.x] = one_half * atomicAdd(&tickets, 1u);
}
"""
CONSTANT_OPTIONS = ("-DLAB_CONSTANT=__constant__", "-DLAB_DEVICE=__device__",
                    "-DLAB_CM(x)=__constant__", "-DLAB_CC=__constant__ const")


def test_a_macro_for_constant_and_a_constant_pointer_compile_and_run():
    """Before: "duplicate 'const'" at line 5, and `p[i] = ...` assigned a read-only location
    (hunt 203's: "duplicate 'const'" at line 3, TABLE's #define, at line 10, and for
    -DLAB_CC)."""
    a, out = np.arange(40, dtype=np.float32), np.zeros(40, np.float32)
    RawKernel(CONSTANTS, "k", CONSTANT_OPTIONS)((1,), (40,), (a, out))
    i = np.arange(40) % 2
    np.testing.assert_array_equal(out, a.astype(np.float64) * 2 + 1 + i + (3 + i) / 4 + 0.125)


def test_uses_printf_sees_a_macro_that_names_printf():
    assert uses_printf('#define LOG printf\n#define SAY LOG\nvoid f() { SAY("%d", 1); }')
    assert uses_printf('#define LOG(...) printf(__VA_ARGS__)\nvoid f() { LOG("x"); }')
    assert not uses_printf('#define LOG printf\nvoid f() { }   // LOG("x")')
    assert not uses_printf('void f() { const char* s = "printf(x)"; }')


CONSTANT_DIM = ('__constant__ dim3 c = {1, 2, 3};\n'
                'extern "C" __global__ void k(float* y)\n'
                '{\n    if (threadIdx.x == 0) c.x = 1;\n    y[threadIdx.x] = c.x;\n}\n')


@pytest.mark.parametrize("log", [
    "k.cu:4:33: error: assignment of member 'dim3::x' in read-only object",          # GCC
    "k.cu:4:33: error: cannot assign to variable 'c' with const-qualified type 'const dim3'",
])
def test_a_write_to_a_constant_dim3_gets_the_constant_hint_only(log):
    """Before: the gridDim/blockDim hint too (its pattern matched the type's words)."""
    e = compile_error("k", "k.cu", CONSTANT_DIM, log, "gcc")
    assert any("__constant__ variable is read-only" in h for h in e.hints), e.hints
    assert not any("built-ins" in h for h in e.hints), e.hints


def test_a_write_to_a_constant_declared_through_a_macro_gets_the_constant_hint():
    source = ('#define CMEM __constant__\nCMEM float t[2] = {1, 2};\n'
              'extern "C" __global__ void k(float* y) { t[0] = 1; y[0] = t[1]; }\n')
    log = "k.cu:3:46: error: assignment of read-only location 't[0]'"
    e = compile_error("k", "k.cu", source, log, "gcc")
    assert any("__constant__ variable is read-only" in h for h in e.hints), e.hints


BUILTIN_WRITES = ('extern "C" __global__ void w(float* y)\n{\n'
                  '    threadIdx.x = 0;\n    ++blockIdx.y;\n    y[threadIdx.x] = blockIdx.y;\n}\n')


def test_a_write_to_threadidx_or_blockidx_does_not_compile():
    """NVRTC: "expression must be a modifiable lvalue". Before: it compiled and ran."""
    with pytest.raises(KernelCompileError) as info:
        RawKernel(BUILTIN_WRITES, "w")((1,), (4,), (np.zeros(4, np.float32),))
    e = info.value
    assert e.lineno == 3, str(e)
    assert {line for _, line, _, _ in e.errors} >= {3, 4}, str(e)
    assert any("threadIdx, blockIdx" in h and "modifiable lvalue" in h for h in e.hints), str(e)
    assert not any("__constant__" in h for h in e.hints), e.hints


@pytest.mark.parametrize("log, hinted", [
    ("w.cu:4:5: error: cannot assign to variable 'blockIdx' with const-qualified type "
     "'const uint3 &'", True),                                                        # Clang
    ("w.cu:3:17: error: assignment of member 'uint3::x' in read-only object", True),  # GCC
    ("w.cu:5:5: error: assignment of read-only location 'y'", False),   # not a built-in's
])
def test_the_builtin_hint_goes_by_the_line_written(log, hinted):
    e = compile_error("w", "w.cu", BUILTIN_WRITES, log, "gcc")
    assert any("read-only built-ins" in h for h in e.hints) == hinted, e.hints
