"""Mends of a reader's findings on the one-program lint (source_builtins.py, source_layout.py,
compare.py's wording): right kernels it refused, and the holes it left."""
import ast
import json
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab.grading.compare import describe_difference
from pagedattn_lab.grading.source_builtins import device_types
from pagedattn_lab.grading.source_layout import vector_layouts
from pagedattn_lab.grading.source_macros import device_conditional
from pagedattn_lab.grading.source_overloads import substitution_choices

REPO = Path(__file__).resolve().parents[1]
_TYPE_LINTS = (device_types, vector_layouts, substitution_choices)


def _notebook_kernels():
    """(where, source) of each kernel source string a workbook or solution cell assigns."""
    for folder in ("solutions", "exercises"):
        for notebook in sorted((REPO / folder).glob("*.ipynb")):
            for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
                text = "".join(cell["source"])
                if cell["cell_type"] != "code":
                    continue
                try:
                    tree = ast.parse(text)
                except SyntaxError:   # (a cell of IPython magics)
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                            and isinstance(node.value.value, str) \
                            and "__global__" in node.value.value:
                        name = ast.unparse(node.targets[0])
                        yield f"{folder}/{notebook.name}:{name}", node.value.value


_NOTEBOOK_KERNELS = dict(_notebook_kernels())
_PACKAGE_KERNELS = sorted((REPO / "pagedattn_lab" / "kernels").glob("*.cu"))


def test_the_sources_read_are_the_courses_kernels():
    # (a test over no source cannot fail: the lists are the ones the course has)
    assert len(_NOTEBOOK_KERNELS) >= 20 and any("solutions/" in w for w in _NOTEBOOK_KERNELS)
    assert {"decode_mma.cu", "decode_mma_rows.cu"} <= {p.name for p in _PACKAGE_KERNELS}


@pytest.mark.parametrize("where", sorted(_NOTEBOOK_KERNELS))
def test_no_workbook_kernel_is_refused(where):
    source = _NOTEBOOK_KERNELS[where]
    for lint in (device_conditional, *_TYPE_LINTS):
        refused = lint(source)
        assert refused is None, f"{where}: {lint.__name__}: {refused.message}"


@pytest.mark.parametrize("path", _PACKAGE_KERNELS, ids=lambda p: p.name)
def test_no_package_kernel_is_refused_by_the_type_lints(path):
    # (device_conditional is left out here: the package builds its kernels with -D options
    # that a graded kernel does not get, so their #if tests a name the source leaves undefined)
    source = path.read_text(encoding="utf-8")
    for lint in _TYPE_LINTS:
        refused = lint(source)
        assert refused is None, f"{path.name}: {lint.__name__}: {refused.message}"


_KERNEL = "#define {define}\n__global__ void k(const float* x, float* o, int n) {{\n{body}\n}}\n"


@pytest.mark.parametrize("define, body", [
    ("N 64", "int i = threadIdx.x; if (i < N && o[i] > 0) o[i] = 0;"),
    ("SCALE 2", "int i = threadIdx.x; if (i % SCALE && n) o[i] = 1;"),
    ("ON (1 && 1)", "if (ON && n) o[0] = 1;"),
    ("IDX threadIdx.x", "if (IDX && n) o[0] = 1;"),
])
def test_a_logical_and_after_a_macro_that_is_no_type_passes(define, body):
    assert device_types(_KERNEL.format(define=define, body=body)) is None


@pytest.mark.parametrize("define, body", [
    ("T unsigned int", "T&& r = 1u; o[0] = r;"),
    ("T2 T1\n#define T1 const int", "T2&& r = 1; o[0] = r;"),
    ("P float4", "P&& v = make_float4(0, 0, 0, 0); o[0] = v.x;"),
])
def test_an_rvalue_reference_through_a_type_macro_is_refused(define, body):
    refused = device_types(_KERNEL.format(define=define, body=body))
    assert refused is not None and refused.got == "&&"


@pytest.mark.parametrize("member", [
    "const float4* k; int n;",
    "float4* a; float4 const* b; float4& r;",
    "__device__ float4 load(int i) const { float4 v = k[i]; return v; } const float4* k;",
    "__device__ void store(float4 v) { *k = v; } float4* k;",
    "static const int n = 4; typedef float4 F; F* f;",
    "__device__ float4 operator=(const float4& o) { return o; } float4* k;",
])
def test_a_struct_with_float4_only_behind_a_pointer_or_in_a_function_passes(member):
    assert vector_layouts(f"struct Args {{ {member} }};\n__global__ void k(Args a) {{}}\n") \
        is None


@pytest.mark.parametrize("member", [
    "float4 v; int n;",
    "int n; float4 v[2];",
    "float4 *p, v;",
    "__device__ float4 load() const { return v; } float4 v;",
    "float4 v = make_float4(0, 0, 0, 0);",
    "public: alignas(16) float4 v;",
    "struct In { int4 q; } in;",
])
def test_a_struct_holding_float4_by_value_is_refused(member):
    refused = vector_layouts(f"struct Args {{ {member} }};\n__global__ void k(Args a) {{}}\n")
    assert refused is not None and refused.got in {"float4", "int4"}


def test_a_define_after_a_form_feed_is_followed_by_the_layout_lint():
    # (the layout lint read #define with a copy of the macro lint's pattern that missed \f\v)
    refused = vector_layouts("\f#define V float4\nstruct S { V v; };\n__global__ void k() {}\n")
    assert refused is not None and refused.got == "V" and "line 2" in refused.message


@pytest.mark.parametrize("pack", ["class... Ts", "typename ...Ts", "class ... Ts"])
def test_an_rvalue_reference_to_a_pack_is_refused(pack):
    source = (f"template <{pack}> __device__ void f(Ts&&... a) {{}}\n"
              "__global__ void k(int* o) { f(threadIdx.x); }\n")
    refused = device_types(source)
    assert refused is not None and refused.got == "&&"


def test_a_cast_before_grouping_parentheses_of_a_member_read_passes():
    assert device_types("__global__ void k(int* o) { o[0] = (int)(threadIdx).x; }") is None
    assert device_types("__global__ void k(int* o) { o[0] = (unsigned int)((blockIdx)).y; }") \
        is None


@pytest.mark.parametrize("call", ["(f)(threadIdx).x", "g()(threadIdx).x"])
def test_a_call_of_parenthesized_function_given_the_builtin_whole_is_refused(call):
    refused = device_types(f"__global__ void k(int* o) {{ o[0] = {call}; }}")
    assert refused is not None and refused.got == "threadIdx"


@pytest.mark.parametrize("literal", ["0x1p0L", "0x1.8p1L", "0X.8P-1l", "0x1ep+2L"])
def test_a_hex_float_long_double_literal_is_refused(literal):
    refused = device_types(f"__global__ void k(float* o) {{ if ({literal} != 1) o[0] = 1; }}")
    assert refused is not None and refused.got == literal


def test_a_hex_integer_long_literal_passes():
    assert device_types("__global__ void k(long* o) { o[0] = 0x1eL + 0x10L; }") is None


def test_the_rvalue_reference_refusal_says_every_one_is_refused_and_why():
    refused = device_types("__global__ void k(float* o) {\n  float a[2] = {1, 2};\n"
                           "  for (auto&& v : a) o[0] += v;\n}\n")
    assert refused is not None and "line 3" in refused.message
    assert "every" in refused.message and "prvalue on the GPU" in refused.message
    assert "binds to it" not in refused.message


def test_the_pattern_names_a_single_kv_head_without_underscore():
    expected = np.zeros((2, 3, 4))
    got = expected.copy()
    got[:, 2, :] = 1.0
    diff = describe_difference(got, expected, ("sequence", "kv_head", "dim"))
    assert "kv head 2 (right: 0-1)" in diff.pattern() and "kv_head" not in diff.pattern()
    got[:, 1, :] = 1.0
    diff = describe_difference(got, expected, ("sequence", "kv_head", "dim"))
    assert "kv heads 1-2 (right: 0)" in diff.pattern()


def test_one_entry_is_counted_in_the_singular():
    diff = describe_difference(np.array([1.0]), np.array([0.0]), ("slot",))
    assert "1 of 1 entry differs" in diff.message("entries")
    assert "1 of 1 value differs" in diff.message()
