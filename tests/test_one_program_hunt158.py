"""Hunt 158: the gaps the one-program lint (grading/source_macros.py, source_builtins.py) left
last session, each a kernel that is two programs (one under NVRTC, another in the CPU
executor's build, where the race check runs) that passed, or a right kernel it refused:
a struct holding a float4 (32 bytes on the GPU, 20 on the CPU build: source_layout.py),
SFINAE on a name only the CPU build declares (source_overloads.py), STR(__CUDA_ARCH__) with a
direct #x refused with an untrue message, `(threadIdx).x` refused; and the attacks of this
hunt that got through (__PRETTY_FUNCTION__, __builtin_FILE(), __builtin_constant_p, long
double, a reference to a built-in variable bound past the old pattern, `return threadIdx`,
an overload, `T&&` or decltype told apart by threadIdx.x's value category, a pasted name or
a macro handed a stringifier made a string, quadratic scans of the new checks)."""
import contextlib

import numpy as np
import pytest

from pagedattn_lab.cpu.kernel import RawKernel
from pagedattn_lab.grading.kernel_lint import MAX_SOURCE, lint
from pagedattn_lab.grading.report import Mismatch
from pagedattn_lab.grading.source_macros import device_conditional

_KERNEL = r"""
%s
extern "C" __global__ void block_sum(const float* x, float* out)
{
    __shared__ float tile[64];
    tile[threadIdx.x] = x[threadIdx.x];
%s
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < 64; ++i) s += tile[i];
        out[0] = s;
    }
}
"""


def _refused(before: str, middle: str = "") -> Mismatch:
    with pytest.raises(Mismatch) as info:
        lint(_KERNEL % (before, middle), "block_sum")
    e = info.value
    assert "one program on both devices" in e.hint and "different" in e.message, e.message
    return e


def _passes(before: str, middle: str = "") -> None:
    lint(_KERNEL % (before, middle), "block_sum")


def test_the_cpu_build_is_what_the_refusals_say():
    """What each attack below sees on the CPU build (NVRTC: 0, 32, 14, 0): strlen is declared
    (SFINAE picks it), a struct's float4 is aligned to 4, GCC's pretty name has no space
    before the *, long double has 64 bits of mantissa; and `(threadIdx).x` is the index."""
    source = r"""
template <class T> __device__ auto pick(T t, int) -> decltype(strlen(t), 1) { return 1; }
template <class T> __device__ int pick(T, long) { return 0; }
struct KV { float k; float4 v; };
extern "C" __global__ void k(int* o) {
    const char* s = "ab";
    o[0] = pick(s, 0);
    o[1] = sizeof(KV);
    o[2] = sizeof(__PRETTY_FUNCTION__);
    o[3] = (1.0L + 1e-17L != 1.0L);
    o[4 + (threadIdx).x] = 7;
}
"""
    out = np.zeros(6, np.int32)
    RawKernel(source, "k")((1,), (2,), [out])
    # (Clang spells it "void k(int *)" as EDG does here, not in a template's "[with T = int]";
    # a long double is a double on macOS's ARM: then the CPU build agrees there)
    long_double_is_wider = bool(np.finfo(np.longdouble).eps < 1e-17)
    assert out[[0, 1, 3, 4, 5]].tolist() == [1, 20, long_double_is_wider, 7, 7], out
    assert out[2] in (len("void k(int*)") + 1, len("void k(int *)") + 1), out


# -- 1. a 16-byte vector in a struct ------------------------------------------------------------
@pytest.mark.parametrize("before, word", [
    ("struct KV { float k; float4 v; };", "float4"),
    ("struct __align__(8) P { int a; double2 d; };", "double2"),   # 16-aligned on the GPU
    ("struct __attribute__((aligned(4))) P { int a; double4 d; };", "double4"),
    ("__device__ void f(struct Q* q);\nstruct S { char c; ulonglong2 u; };", "ulonglong2"),
    ("union U { float4 v; float a[5]; };", "float4"),
    ("class C { public: int i; uint4 u; };", "uint4"),
    ("typedef float4 F4;\nstruct KV { float k; F4 v; };", "F4"),
    ("using Wide = longlong2;\nstruct S { char c; Wide w; };", "Wide"),
    ("#define VEC int4\nstruct S { char c; VEC v; };", "VEC"),
    ("struct alignas(float4) S { char c; };", "float4"),
    ("template <class A, class B> struct Pair { A a; B b; };\n"
     "__device__ Pair<char, float4> p;", "float4"),
])
def test_a_struct_holding_a_wide_vector_is_refused(before, word):
    e = _refused(before)
    line = 2 + before.count("\n")   # the struct's, alignas's or template's line
    assert e.got == word and f"line {line} " in e.message and "16 bytes" in e.message, \
        e.message
    assert f"keep `{word}` out of structs" in e.hint, e.hint


@pytest.mark.parametrize("before, middle", [
    ("struct P { float a; float2 b; int c; };", ""),   # aligned alike (8 bytes)
    ("struct S;\n__device__ float f(struct S* s) { float4 v = make_float4(0, 0, 0, 0); "
     "return v.x; }", ""),   # a parameter's `struct S*`, not a struct's body
    ("", "    float4 v = reinterpret_cast<const float4*>(x)[0];\n"
         "    __shared__ float4 t4[4]; t4[0] = v; float n = sizeof(float4) / sizeof(float);"),
    ("template <int TILE> struct Tile { float v[TILE]; };", "    Tile<4> t; t.v[0] = 1;"),
])
def test_vectors_outside_structs_and_structs_without_them_pass(before, middle):
    _passes(before, middle)


# -- 2. SFINAE on a name one build lacks --------------------------------------------------------
@pytest.mark.parametrize("before, word", [
    ("template <class T> __device__ auto pick(T t, int) -> decltype(strlen(t), 1) "
     "{ return 1; }", "decltype"),
    ("template <class T, class = decltype(rand(T()))> __device__ int pick(int) "
     "{ return 1; }", "decltype"),
    ("template <class T> __device__ int f(T x, char (*)[sizeof(qsort(x))] = 0) "
     "{ return 1; }", "sizeof"),
    ("template <class T> __device__ int f(typename T::shim_only* p) { return 1; }",
     "typename T::"),
    # whether __half's member is there and accessible (the shim's __half is its own)
    ("template <class T, unsigned short T::* = &T::__x> __device__ int f(int) { return 1; }",
     "T::*"),
    ("__device__ auto g = [](auto t) -> decltype(strlen(t), 1) { return 1; };", "decltype"),
])
def test_a_question_in_a_templates_signature_is_refused(before, word):
    e = _refused(before)
    assert e.got == word and "line 2" in e.message and "overload" in e.message, e.message


def test_plain_templates_pass():
    _passes("template <typename T> __device__ T twice(T v) { return v + v; }\n"
            "template <int N> __device__ float first(const float (&a)[N]) { return a[0]; }",
            "    float t = twice(1.0f) + sizeof(float);")


# -- 3. a string made of a macro without expanding it -------------------------------------------
@pytest.mark.parametrize("source", [
    '#define STR(x) #x\nconst char *s = STR(__CUDA_ARCH__);\n',
    '#define STR(x) %:x\n#define ARCH STR(__CUDA_ARCH__)\nconst char *s = ARCH;\n',
    '#define S(...) #__VA_ARGS__\nconst char *s = S(__GNUC__, __x86_64__);\n',
    '#define NAMED(a, b) #a b\nconst char *s = NAMED(__CUDA_ARCH__, "x");\n',
])
def test_a_string_of_a_macros_name_is_the_same_on_both_and_passes(source):
    assert device_conditional(source) is None, device_conditional(source).message


@pytest.mark.parametrize("source, word", [
    ('#define NAMED(a, b) #a b\nconst char *s = NAMED(__CUDA_ARCH__, __GNUC__);\n', "__GNUC__"),
    ('#define STR(x) #x\n#define XSTR(x) STR(x)\n#define GLUE(a, b) a ## b\n'
     'const char *s = XSTR(GLUE(__GNU, C__));\n', "GLUE"),   # "13" on the CPU build only
    # a macro that applies the stringifier it is given, after expanding the argument
    ('#define STR(x) #x\n#define CALL(m, a) m(a)\nconst char *s = CALL(STR, __GNUC__);\n',
     "__GNUC__"),
    # STR redefined to expand first: its first body does not speak for it
    ('#define STR(x) #x\n#undef STR\n#define XS(x) #x\n#define STR(x) XS(x)\n'
     'const char *s = STR(__GNUC__);\n', "__GNUC__"),
])
def test_an_expanded_argument_or_a_pasted_name_made_a_string_is_refused(source, word):
    refused = device_conditional(source)
    assert refused is not None and refused.got == word, refused and refused.message
    assert "makes a string" in refused.message


# -- 4. built-in variables -----------------------------------------------------------------------
@pytest.mark.parametrize("middle", [
    "    out[1 + (threadIdx).x] = 0.0f;",
    "    tile[((threadIdx)).x] += (blockIdx).x + ( blockDim ).x;",
    "    if (threadIdx.x < 2) { dim3 g(gridDim); uint3 t{blockIdx}; out[1] = g.x + t.x; }",
])
def test_member_reads_through_parentheses_and_copies_pass(middle):
    _passes("", middle)


@pytest.mark.parametrize("before, middle", [
    ("", "    out[f((threadIdx)).x] = 0;"),
    ("", "    const auto & __restrict__ t = threadIdx; out[1] = sizeof(t);"),
    ("", "    auto &t [[maybe_unused]] = threadIdx; out[1] = sizeof(t);"),
    ("", "    decltype(auto) t = (threadIdx); out[1] = sizeof(t);"),
    ("__device__ const auto& self() { return threadIdx; }", ""),
    ("__device__ const auto& self() { return (threadIdx); }", ""),
])
def test_a_built_in_variable_whole_elsewhere_is_refused(before, middle):
    assert _refused(before, middle).got in ("threadIdx",)


@pytest.mark.parametrize("before, middle, word", [
    # NVRTC's threadIdx.x is a property's prvalue, the executor's an lvalue: an overload on
    # the reference's kind, a forwarding reference's T, a decltype of it choose otherwise
    ("__device__ int f(unsigned&) { return 1; }\n__device__ int f(unsigned&&) { return 0; }",
     "    if (f(threadIdx.x)) __syncthreads();", "&&"),
    ("template <class T> struct R { enum { v = 0 }; };\n"
     "template <class T> struct R<T&> { enum { v = 1 }; };\n"
     "template <class T> __device__ int f(T&&) { return R<T>::v; }",
     "    if (f(threadIdx.x)) __syncthreads();", "&&"),
    ("typedef unsigned U;\n__device__ int f(U&& u) { return 0; }", "", "&&"),
    ("template <class T> struct R { enum { v = 0 }; };",
     "    if (R<decltype((threadIdx.x))>::v) __syncthreads();", "decltype"),
    ("", "    auto&& t = threadIdx.x; out[1] = t;", "&&"),
])
def test_what_tells_a_members_value_category_is_refused(before, middle, word):
    assert _refused(before, middle).got == word


def test_logical_ands_and_a_members_copy_pass():
    _passes("", "    int n = 64, i = threadIdx.x;\n    if (i < n && (i > 0) && x && n > 0 && i < 64)"
                " out[1] = sizeof(threadIdx.x) + (decltype(n))i;")


# -- this hunt's attacks -------------------------------------------------------------------------
@pytest.mark.parametrize("middle, word", [
    ("    if (sizeof(__PRETTY_FUNCTION__) == 28) __syncthreads();", "__PRETTY_FUNCTION__"),
    ("    if (__builtin_FILE()[0] == '<') __syncthreads();", "__builtin_FILE"),
    ("    if (__builtin_COLUMN() > 4) __syncthreads();", "__builtin_COLUMN"),
    ("    if (1.0L + 1e-17L != 1.0L) __syncthreads();", "1.0L"),
    ("    long double acc = x[0]; if (acc > 1) __syncthreads();", "long double"),
    # GCC's optimizer may prove it constant (after inlining, at -O1 or -O2), NVRTC's front end
    ("    int n = 64; if (__builtin_constant_p(n)) __syncthreads();", "__builtin_constant_p"),
])
def test_a_value_or_a_type_of_one_build_is_refused(middle, word):
    e = _refused("", middle)
    assert e.got == word and "line 7" in e.message, e.message


@pytest.mark.parametrize("before, middle", [
    ("", "    out[1] = 16L + 0x1fL + __LINE__;"),   # long integers; lines kept alike
    ("#line 40", "    out[1] = __LINE__;"),
])
def test_long_integers_and_line_numbers_pass(before, middle):
    _passes(before, middle)


def test_a_feature_test_through_a_macro_is_refused():
    refused = device_conditional("#define HAS(x) __has_include(x)\n#if HAS(<stdio.h>)\n#endif\n")
    assert refused is not None and refused.got == "__has_include", refused


@pytest.mark.parametrize("filler", [
    "(" * 16000 + "threadIdx" + ")" * 16000 + ".x;",   # each start walked to the name
    "template <" * 8000,                               # each signature read to the end
    "union { " * 8000,                                 # each body read to the end
    "( threadIdx ).x; " * 2000,
    "1'" * 8000,                                       # a long double literal's pattern
    "typedef " * 6000,                                 # each statement searched to the end
    "decltype(" * 8000,                                # each operand read to the end
    "x && " * 8000,
])
def test_the_new_checks_read_a_long_source_in_little_time(filler):
    import time
    source = (filler + '\nextern "C" __global__ void k(float* x) {}\n')[-MAX_SOURCE:]
    lint('extern "C" __global__ void k(float* x) {}\n', "k")   # (the compiler's macro list)
    start = time.perf_counter()
    with contextlib.suppress(Mismatch):
        lint(source, "k")
    # linear scans take ~0.1 s here; each quadratic one took 5 to 80 s
    assert time.perf_counter() - start < 2.0
