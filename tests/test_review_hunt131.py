"""Review of hunts 124-130 (hunt 131).

- cpu/source.py guard_static_shared put `PAL_SGUARD` between a class body and `__shared__`
  (`struct Stat { float m, l; } __shared__ st[32];`, which nvcc compiles): the guard's
  declarations then ended the struct's statement and the kernel no longer compiled for the
  CPU executor. The guard now goes before the `struct`. And the guard, inserted on the
  declaration's line, moved its columns: a compile error there (`s[BLOCK]`) gave a column
  11 too far, and an index past an array on that line lost the array's expression. The
  guard now ends the line before, where a statement ends there.
- grading: the pre-scaled-rows hint (checks_tc_rows._factor_hint) and the recomputed-scale
  hint (checks_tc_mask._factor_hint) fit rows or logits of 0 with a factor of 0, naming a
  scale the learner never applied; and the group's-last-head-missing variant is all zeros
  for a group of one, so tiles never written were told only that their slice stopped one
  short (now the hint says first that the tiles are all zeros).
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelCompileError, KernelFault, RawKernel
from pagedattn_lab.cpu.source import guard_static_shared
from pagedattn_lab.grading import checks_tc_mask, checks_tc_rows
from pagedattn_lab.grading.report import Mismatch

_STRUCT_SHARED = r"""
extern "C" __global__ void stats(const float* x, float* out, int past)
{
    struct Stat { float m; float l; } __shared__ st[32];
    st[threadIdx.x].m = x[threadIdx.x];
    st[threadIdx.x].l = 2.0f * x[threadIdx.x];
    __syncthreads();
    if (past && threadIdx.x == 0) { float *p = &st[0].m; p[64] = 1.0f; }
    out[threadIdx.x] = st[31 - threadIdx.x].m + st[threadIdx.x].l;
}
"""


@pytest.mark.parametrize("source, guarded", [
    ("  struct S { float m; } __shared__ s;", "  PAL_SGUARD struct S { float m; } __shared__ s;"),
    ("x = 1;\n  union {\n int i; float f; }\n  __shared__ u[4];",
     "x = 1; PAL_SGUARD\n  union {\n int i; float f; }\n  __shared__ u[4];"),
    ("if (x) { } __shared__ int k;", "if (x) { } PAL_SGUARD __shared__ int k;"),
    ("typedef struct { int a; } T; __shared__ T t;",
     "typedef struct { int a; } T; PAL_SGUARD __shared__ T t;"),
])
def test_the_guard_goes_before_a_class_body_that_a_shared_declaration_follows(source, guarded):
    assert guard_static_shared(source) == guarded


@pytest.mark.parametrize("source, guarded", [
    ("{  // c\n\n  __shared__ float a[2];\n  __shared__ float b[2]; b[0] = 1;\n}",
     "{ PAL_SGUARD  // c\n\n  __shared__ float a[2]; PAL_SGUARD\n  __shared__ float b[2]; "
     "b[0] = 1;\n}"),
    ("#define N 3;\n__shared__ int z;", "#define N 3;\nPAL_SGUARD __shared__ int z;"),
    ("#if A\n  __shared__ int z;\n#endif", "#if A\n  PAL_SGUARD __shared__ int z;\n#endif"),
    ("x = 1; \\\n  __shared__ int z;", "x = 1; \\\n  PAL_SGUARD __shared__ int z;"),
    ("#define M(a) \\\n    a = 1;\n__shared__ int z;",
     "#define M(a) \\\n    a = 1;\nPAL_SGUARD __shared__ int z;"),
])
def test_the_guard_ends_the_line_before_where_a_statement_ends_there(source, guarded):
    assert guard_static_shared(source) == guarded


_ONE_LINE = r"""
extern "C" __global__ void k(const float* x, float* out, int j)
{
    __shared__ float s[32]; s[threadIdx.x + j] = x[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}
"""


def test_an_index_past_an_array_on_its_declarations_line_names_the_expression():
    x, out = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    with pytest.raises(KernelFault) as info:
        RawKernel(_ONE_LINE, "k")((1,), (32,), (x, out, np.int32(1)))
    assert (info.value.array, info.value.line) == ("s[threadIdx.x + j]", 4), str(info.value)


def test_a_compile_error_on_a_shared_declaration_gives_its_own_column():
    source = 'extern "C" __global__ void k2(float* out)\n{\n    __shared__ float s[BLOCK];\n}\n'
    with pytest.raises(KernelCompileError) as info:
        RawKernel(source, "k2").compile()
    assert "k2.cu:3:24: error: 'BLOCK'" in str(info.value) or \
        "k2.cu:3:24: error: use of undeclared identifier 'BLOCK'" in str(info.value), \
        str(info.value)


def test_a_shared_array_of_a_struct_defined_in_its_declaration_compiles_and_is_guarded():
    x, out = np.arange(32, dtype=np.float32), np.zeros(32, np.float32)
    kern = RawKernel(_STRUCT_SHARED, "stats")
    kern((1,), (32,), (x, out, np.int32(0)))
    np.testing.assert_array_equal(out, x[::-1] + 2 * x)
    with pytest.raises(KernelFault) as info:   # byte 256: the first past st's 32 * 8 bytes
        kern((1,), (32,), (x, out, np.int32(1)))
    assert info.value.region == "static shared memory", str(info.value)


def _hint(case, fn, *args) -> str:
    with pytest.raises(Mismatch) as info:
        case(fn, *args)
    return info.value.hint


def _zero_tiles(q, kv_head, group):
    return np.zeros((-(-group // 16), 16, q.shape[1]), q.dtype)


def test_tiles_never_written_are_not_called_prescaled():
    hint = _hint(checks_tc_rows._group_case, _zero_tiles, 90, 32, 8, 16, 1, np.float16)
    assert "times 0" not in hint and "missing" not in hint, hint


def test_tiles_never_written_for_a_group_of_one_are_said_to_be_zeros():
    # one head short and never written give the same zeros here: the hint says what it sees
    hint = _hint(checks_tc_rows._group_case, _zero_tiles, 90, 4, 4, 16, 2, np.float16)
    assert "the tiles are all zeros (were they written?)" in hint, hint


def test_a_group_one_head_short_is_still_named():
    def short(q, kv_head, group):
        tiles = np.zeros((-(-group // 16) * 16, q.shape[1]), q.dtype)
        tiles[:group - 1] = q[kv_head * group:(kv_head + 1) * group - 1]
        return tiles.reshape(-1, 16, q.shape[1])
    assert "last head" in _hint(checks_tc_rows._group_case, short, 91, 32, 8, 32, 3,
                                np.float16)


def test_prescaled_rows_are_still_named():
    def scaled(q, kv_head, group):
        tiles = np.zeros((-(-group // 16) * 16, q.shape[1]), q.dtype)
        tiles[:group] = q[kv_head * group:(kv_head + 1) * group] * q.dtype.type(0.125)
        return tiles.reshape(-1, 16, q.shape[1])
    assert "times 0.125" in _hint(checks_tc_rows._group_case, scaled, 91, 32, 8, 32, 3,
                                  np.float16)


@pytest.mark.parametrize("factor", [0.0, -1.0])
def test_kept_logits_of_zero_or_negated_are_not_called_a_scale_of_ones_own(factor):
    def mask(s, tile, seq_len, scale):
        cols = 16 * tile + np.arange(16)
        return np.where(cols[None, :] >= seq_len, -np.inf, s * np.float32(factor * scale))
    hint = _hint(checks_tc_mask._mask_case, mask, 1, 1, 24, 0.125)
    assert "scale of your own" not in hint, hint


def test_a_scale_of_ones_own_is_still_named():
    def mask(s, tile, seq_len, scale):
        cols = 16 * tile + np.arange(16)
        return np.where(cols[None, :] >= seq_len, -np.inf, s * np.float32(0.25))
    assert "scale of your own" in _hint(checks_tc_mask._mask_case, mask, 1, 1, 24, 0.125)
