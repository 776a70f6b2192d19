"""Attacks on the grader's refusal of a kernel that is not one program on both devices
(grading/source_macros.py, hunt 140): a `__syncthreads()` kept on the CPU build only, where
the race check runs, spelled so that the check did not see the conditional (a digraph, a
CRLF or spaced line splice, a lone CR, a raw string or a digit separator that made the
comment stripper blank the directive), or saw it testing only the source's own macros
(a name pasted with ##, a guard `#ifndef EOF / #define EOF 0` on a macro the CPU build's
headers already define), or with no conditional at all: a value that differs between the
builds in the code (__FILE__, __COUNTER__, __TIME__), a compiler's macro made a string
(XSTR(__PAGEDATTN_LAB_CPU__) is "1" on the CPU build only), a type that differs
(sizeof(threadIdx) is 12 on the CPU build, 1 on NVRTC; alignof(float4); grading/
source_builtins.py). Each passed the lint before; and the right kernels the task named
(include guards, #pragma unroll, #ifndef TILE, #if 0, ...) still pass.
"""
import pytest

from pagedattn_lab.cpu.prelude import prelude_macros
from pagedattn_lab.cuda_text import strip_comments
from pagedattn_lab.grading.kernel_lint import MAX_SOURCE, lint
from pagedattn_lab.grading.report import Mismatch
from pagedattn_lab.grading.source_builtins import device_types
from pagedattn_lab.grading.source_macros import device_conditional

_KERNEL = r"""
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


def _kernel(middle: str) -> str:
    return _KERNEL % middle


@pytest.mark.parametrize("middle, word", [
    # a digraph: %: is # in C++ (both compilers)
    ("%:ifdef __PAGEDATTN_LAB_CPU__\n    __syncthreads();\n%:endif", "__PAGEDATTN_LAB_CPU__"),
    # a line splice of a CRLF file, and one with spaces after the backslash (both compilers
    # splice it, with a warning)
    ("#if \\\r\n __PAGEDATTN_LAB_CPU__\r\n    __syncthreads();\r\n#endif", "__PAGEDATTN_LAB_CPU__"),
    ("#if \\  \n __PAGEDATTN_LAB_CPU__\n    __syncthreads();\n#endif", "__PAGEDATTN_LAB_CPU__"),
    # a lone CR ends a line for both compilers
    ("int a = 0;\r#ifdef __PAGEDATTN_LAB_CPU__\r    __syncthreads();\r#endif",
     "__PAGEDATTN_LAB_CPU__"),
    # a raw string whose '"' the stripper took for the string's end, then a /* it took for a
    # comment's start, closed by a // comment's */ on a later line
    ('const char *s = R"(" /* )";\n#ifdef __PAGEDATTN_LAB_CPU__\n    __syncthreads();\n'
     '#endif\n// */', "__PAGEDATTN_LAB_CPU__"),
    # a digit separator the stripper took for a char literal's quote
    ("int a = 1'0; const char *s = \"'/*\";\n#ifdef __PAGEDATTN_LAB_CPU__\n"
     "    __syncthreads();\n#endif\n// */", "__PAGEDATTN_LAB_CPU__"),
])
def test_a_cpu_only_barrier_spelled_past_the_check_is_refused(middle, word):
    with pytest.raises(Mismatch) as info:
        lint(_kernel(middle), "block_sum")
    assert info.value.got == word, info.value.message


def test_a_name_pasted_with_hashes_in_a_conditional_is_refused():
    # every word is the source's own macro; CAT pastes __PAGEDATTN_LAB_CPU__ together
    middle = ("#define __PAGEDATTN 1\n#define _LAB_CPU__ 1\n#define CAT(a, b) a##b\n"
              "#if CAT(__PAGEDATTN, _LAB_CPU__)\n    __syncthreads();\n#endif")
    with pytest.raises(Mismatch) as info:
        lint(_kernel(middle), "block_sum")
    e = info.value
    assert e.got == "CAT" and "## " in e.message and "line 9" in e.message, e.message


@pytest.mark.parametrize("name", [
    "__PAGEDATTN_LAB_CPU__", "EOF", "__CUDA_ARCH__", "PAL_SHARED_GUARD",
    "PAGEDATTN_LAB_SHIM_BF16_H",   # (the executor's <cuda_bf16.h>)
])
def test_a_guard_on_a_macro_a_compiler_defines_is_refused(name):
    # `#ifndef EOF / #define EOF 0`: the CPU build's <stdio.h> keeps EOF at -1, the GPU's
    # takes the source's 0; all the check saw was the source's own macro
    middle = (f"#ifndef {name}\n#define {name} 0\n#endif\n#if {name}\n"
              f"    __syncthreads();\n#endif")
    with pytest.raises(Mismatch) as info:
        lint(_kernel(middle), "block_sum")
    e = info.value
    assert e.got == name and "before the source" in e.message, e.message
    assert "line 6" in e.message, e.message   # the #ifndef, the first to test it


def test_push_and_pop_of_a_predefined_macro_is_refused():
    middle = ('#pragma push_macro("EOF")\n#undef EOF\n#define EOF 0\n#pragma pop_macro("EOF")\n'
              "#ifdef EOF\n    __syncthreads();\n#endif")
    with pytest.raises(Mismatch, match="tests `EOF`"):
        lint(_kernel(middle), "block_sum")


@pytest.mark.parametrize("word", ["__FILE__", "__COUNTER__", "__TIME__", "__TIMESTAMP__"])
def test_a_value_that_differs_between_the_builds_is_refused_in_code(word):
    # __FILE__ is the CPU build's file name and NVRTC's program path; the CPU build's shim
    # counts __COUNTER__ up before the kernel's code; the two builds compile at other times
    middle = f"    if (sizeof({word}) > 1 || {word}) __syncthreads();"
    with pytest.raises(Mismatch) as info:
        lint(_kernel(middle), "block_sum")
    e = info.value
    assert e.got == word and "line 6" in e.message and "differs" in e.message, e.message
    assert "take" in e.hint


@pytest.mark.parametrize("source", [
    "#pragma unroll\nfor (int i = 0; i < 4; ++i) {}\n",
    "#ifndef MY_KERNEL_H\n#define MY_KERNEL_H\n#endif\n",
    "#ifndef __MY_KERNEL_H__\n#define __MY_KERNEL_H__\n#endif\n",   # a reserved-name guard
    "#ifndef TILE\n#define TILE 64\n#endif\n#if TILE % 32 == 0\n#endif\n",
    "#if 0\n#endif\n",
    "#define X\n#if 1 && defined(X)\n#endif\n",
    "#define LOAD(n) float v##n = x[n];\n",   # pasting in code, not in a conditional
    "#define TILE 32\r\n#if TILE > 16\r\n#endif\r\n",   # a CRLF file
    "#define TILE \\\n  32\n#if TILE > 16\n#endif\n",
    "%:define TILE 32\n%:if TILE > 16\n%:endif\n",
    'const char *s = R"x(#ifdef __CUDA_ARCH__ )" /* )x";\nint n = 1\'000\'000;\n',
    "int line = __LINE__;\n",
])
def test_right_conditionals_still_pass(source):
    assert device_conditional(source) is None, device_conditional(source).message


def test_the_refusal_names_the_line_past_splices_and_crs():
    refused = device_conditional("#define A \\\n 1\r\n#if A\r#endif\r\n#if \\\n B\n#endif\n")
    assert refused.got == "B" and "line 5" in refused.message, refused.message


def test_the_stripper_reads_raw_strings_and_digit_separators():
    raw = 'a = R"d(x " /* y\n)d"; b = 0x1\'F\'; c = u8\'c\'; // z\n'
    out = strip_comments(raw)
    assert len(out) == len(raw) and out.count("\n") == 2
    assert "/*" not in out and "0x1'F'" in out and "z" not in out and "b =" in out, out


@pytest.mark.parametrize("macros, use, word", [
    # XSTR expands its argument first: "1" on the CPU build, "__PAGEDATTN_LAB_CPU__" on NVRTC
    ("#define STR(x) #x\n#define XSTR(x) STR(x)", "XSTR(__PAGEDATTN_LAB_CPU__)",
     "__PAGEDATTN_LAB_CPU__"),
    # (STR(__CUDA_ARCH__) itself is "__CUDA_ARCH__" on both: # does not expand; hunt 158)
    ("#define STR(x) %:x\n#define XSTR(x) STR(x)\n#define ARCH XSTR(__CUDA_ARCH__)", "ARCH",
     "__CUDA_ARCH__"),
    ("#define STR(x) #x\n#define XSTR(x) STR(x)\n#define PI M_PI", "XSTR(PI)", "M_PI"),
])
def test_a_compilers_macro_made_a_string_is_refused(macros, use, word):
    middle = f"{macros}\n    if ({use}[0] == '1') __syncthreads();"
    with pytest.raises(Mismatch) as info:
        lint(_kernel(middle), "block_sum")
    e = info.value
    assert e.got == word and "makes a string" in e.message, e.message


@pytest.mark.parametrize("source", [
    '#define STR(x) #x\n#define XSTR(x) STR(x)\nconst char *s = XSTR(TILE * 2);\n',
    '#define CHECK(c) if (!(c)) printf("%s failed\\n", #c)\nCHECK(i < n);\n',
    "#define CAT(a, b) a##b\nint CAT(tile, 0) = 1;\n",
])
def test_strings_and_pastes_of_the_kernels_own_words_pass(source):
    assert device_conditional(source) is None, device_conditional(source).message


@pytest.mark.parametrize("middle, word", [
    # NVRTC's threadIdx is one byte, the executor's a uint3 of 12
    ("    if (sizeof(threadIdx) == 12) __syncthreads();", "threadIdx"),
    ("    if (sizeof blockDim > 1) __syncthreads();", "blockDim"),
    ("    if (sizeof(" + " " * 60 + "gridDim) > 1) __syncthreads();", "gridDim"),
    ("    if (std_like<decltype(::threadIdx)>()) __syncthreads();", "threadIdx"),
    # an overload on uint3 the CPU build picks, the template NVRTC picks
    ("    if (on_cpu(0, threadIdx)) __syncthreads();", "threadIdx"),
    ("    if (on_cpu(c ? threadIdx : blockIdx)) __syncthreads();", "threadIdx"),
    # the executor aligns float4 to 4 bytes, NVRTC to 16
    ("    if (alignof(float4) == 4) __syncthreads();", "alignof"),
])
def test_a_question_to_a_type_that_differs_between_the_builds_is_refused(middle, word):
    with pytest.raises(Mismatch) as info:
        lint(_kernel(middle), "block_sum")
    e = info.value
    assert e.got == word and "line 6" in e.message and "different kernels" in e.message, \
        e.message


@pytest.mark.parametrize("middle", [
    "    uint3 t = threadIdx; dim3 g = gridDim;",
    "    int i = blockIdx.x * blockDim.x + threadIdx . x;",
    "    float4 __align__(16) v; alignas(16) float w[4];",
    "    // sizeof(threadIdx) in a comment\n    int n = sizeof(tile) / sizeof(tile[0]);",
])
def test_member_reads_and_copies_of_the_builtins_pass(middle):
    src = _kernel(middle)
    lint(src, "block_sum")


def test_a_type_question_split_by_a_line_splice_is_refused():
    with pytest.raises(Mismatch, match="line 7 uses `threadIdx`"):   # where it is
        lint(_kernel("    if (sizeof(\\\n threadIdx) == 12) __syncthreads();"), "block_sum")


@pytest.mark.parametrize("filler", [
    "1'" * 8000,                                   # digit separators, each after the others
    "XSTR(" * 5000,                                # calls never closed
    "XSTR(" * 2500 + ")" * 2500,                   # calls in calls
    "\\\n" * 8000,                                 # line splices
    "#if A\n#endif\n" * 1200,                      # conditionals on a chain of macros
])
def test_the_checks_read_a_long_source_in_little_time(filler):
    import time
    head = "#define STR(x) #x\n#define XSTR(x) STR(x)\n" + "".join(
        f"#define A{i} A{i + 1}\n" for i in range(40)) + "#define A A0\n#define A40 1\n"
    source = (head + filler)[:MAX_SOURCE]
    prelude_macros()   # (its one compiler run per process, ~0.6 s, is not the scan's time)
    start = time.perf_counter()
    device_conditional(source)
    device_types(source)
    # linear scans take ~0.1 s here; a quadratic one takes minutes (a loaded CI core: margin)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("conditional, word", [
    ("#if __has_include(<stdio.h>)", "__has_include"),   # not `stdio`
    ("#if __has_builtin(__builtin_expect)", "__has_builtin"),
])
def test_the_first_foreign_word_of_a_conditional_is_named(conditional, word):
    refused = device_conditional(conditional + "\n#endif\n")
    assert refused is not None and refused.got == word, refused and refused.message


def test_without_the_compilers_list_every_reserved_name_counts_as_a_compilers(monkeypatch):
    from pagedattn_lab.grading import source_macros
    monkeypatch.setattr(source_macros, "prelude_macros", lambda: None)
    guard = "#ifndef {0}\n#define {0} 1\n#endif\n"
    assert device_conditional(guard.format("__MY_KERNEL_H__")).got == "__MY_KERNEL_H__"
    assert device_conditional(guard.format("TILE")) is None


@pytest.mark.parametrize("middle", [
    # a comment is one space to the compilers: the directive goes on past its line end
    "#/*\n*/ifdef __PAGEDATTN_LAB_CPU__\n    __syncthreads();\n#endif",
    "#if 1 /*\n*/ && defined(__PAGEDATTN_LAB_CPU__)\n    __syncthreads();\n#endif",
])
def test_a_directive_continued_past_a_comments_line_end_is_read_whole(middle):
    with pytest.raises(Mismatch) as info:
        lint(_kernel(middle), "block_sum")
    e = info.value
    assert e.got == "__PAGEDATTN_LAB_CPU__" and "line 6" in e.message, e.message
    assert device_conditional("/*\n\n*/\n#if B\n#endif\n").message.count("line 4") == 1


def test_a_macro_body_continued_past_a_comments_line_end_is_read_whole():
    middle = "#define ON /*\n*/ __PAGEDATTN_LAB_CPU__\n#if ON\n    __syncthreads();\n#endif"
    with pytest.raises(Mismatch) as info:
        lint(_kernel(middle), "block_sum")
    assert info.value.got == "__PAGEDATTN_LAB_CPU__" and "#if at line 8" in info.value.message


def test_a_macro_both_define_alike_redefined_by_the_source_is_followed():
    middle = ("#undef __CUDACC__\n#define __CUDACC__ __PAGEDATTN_LAB_CPU__\n#if __CUDACC__\n"
              "    __syncthreads();\n#endif")
    with pytest.raises(Mismatch) as info:
        lint(_kernel(middle), "block_sum")
    assert info.value.got == "__CUDACC__" and "#if at line 8" in info.value.message, \
        info.value.message
