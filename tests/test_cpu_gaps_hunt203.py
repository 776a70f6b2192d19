"""`__constant__` through macros: the gaps hunt 199 left (hunt 203).

GCC refuses `const const` ("duplicate 'const'"), which NVRTC accepts, so the CPU executor
blanks the `__constant__` (shim.h's `const`) of a declaration that says const itself:
(1) `#define TABLE CMEM const float t[2]` (CMEM a macro for __constant__) kept its CMEM: only
`__constant__` itself was blanked in a #define's body, and `TABLE = {...};` did not compile;
(2) a function-like macro for it (`-DCM(x)=__constant__`, `#define CM(x) __constant__`) was
not followed: `CM(1) const float h` did not compile;
(3) `-DCC="__constant__ const"`: an option's body is in no line of the source; compiler.py
now passes it on as `-DCC= const` (constant_options);
(4) the hint for a write to a __constant__ variable did not read the -D macros: a variable
declared through `-DCMEM=__constant__` got none.
"""
from pagedattn_lab.cpu.compile_errors import compile_error
from pagedattn_lab.cpu.constant_decl import constant_once


def test_a_define_whose_line_says_const_loses_its_macro_for_constant():
    """(a #define's lines are its continued ones too; its own name, and a #define whose lines
    say no const, are left as they are)"""
    source = ("#define CMEM __constant__\n#define CM2 CMEM\n"
              "#define TABLE CMEM const float t[2]\n#define DECL(T) CM2 constexpr T\n"
              "#define PLAIN CMEM float u\n#define LONG CMEM \\\n    const float w\n"
              "TABLE = {1, 2}; DECL(int) v = 3; PLAIN = 4; LONG = 5;\n")
    out = constant_once(source)
    assert out.splitlines() == [
        "#define CMEM __constant__", "#define CM2 CMEM",
        "#define TABLE      const float t[2]", "#define DECL(T)     constexpr T",
        "#define PLAIN CMEM float u", "#define LONG      \\", "    const float w",
        "TABLE = {1, 2}; DECL(int) v = 3; PLAIN = 4; LONG = 5;"]


def test_a_function_like_macro_for_constant_is_blanked_with_its_call():
    source = ("CM(1) const float h = 1; CM(2) float u = 2; const CM( (3) ) int v = 3;\n"
              "CM(4) float *p; CM const float w = 4;\n")
    assert constant_once(source, ["-DCM(x)=__constant__"]).splitlines() == [
        "      const float h = 1; CM(2) float u = 2; const " + " " * 9 + " int v = 3;",
        "      float * const p; CM const float w = 4;"]   # (a name alone calls nothing)
    defined = "#define CM(x) __constant__\n" + source
    assert constant_once(defined).splitlines()[1:] == constant_once(
        source, ["-DCM(x)=__constant__"]).splitlines()
    assert constant_once(source) == source
    assert constant_once(source, ["-DCM(x)=__constant__ const"]) == source


def test_a_define_option_that_says_const_loses_its_constant():
    from pagedattn_lab.cpu.constant_decl import constant_options   # noqa: PLC0415 - new here
    flags = ["-DCC=__constant__ const", "-DCD=CMEM constexpr", "-DCE=CM(1) const",
             "-DCM(x)=__constant__", "-DCF=__constant__ float", "-DN=1", "-UCC", "-Iinc"]
    assert constant_options(flags, "#define CMEM __constant__\n// CM2 const\n") == [
        "-DCC= const", "-DCD= constexpr", "-DCE= const", "-DCM(x)=__constant__",
        "-DCF=__constant__ float", "-DN=1", "-UCC", "-Iinc"]
    assert constant_options(["-DCD=CMEM constexpr"]) == ["-DCD=CMEM constexpr"]


def test_the_constant_write_hint_reads_the_define_options():
    source = ('CMEM float t[2] = {1, 2};\n'
              'extern "C" __global__ void k(float* y) { t[0] = 1; y[0] = t[1]; }\n')
    log = "k.cu:2:46: error: assignment of read-only location 't[0]'"
    hinted = compile_error("k", "k.cu", source, log, "gcc", ["-DCMEM=__constant__"])
    assert any("__constant__ variable is read-only" in h for h in hinted.hints), hinted.hints
    assert compile_error("k", "k.cu", source, log, "gcc").hints == []
