"""Hunt 216: wrong answers to the least-tested checks that passed, or failed with a hint that
blamed another mistake, and right answers written differently that must still pass.

Kernels are the solution notebooks' sources with one edit (tests/check_helpers.mutate), so they
reuse the sources those checks already compile where the edit leaves them alike.
"""
import numpy as np
import pytest

from tests.check_helpers import assert_caught, mutate, run_check, solution_source
from tests.serve_loops import serve_loop, spec_admission

ONRAMP, DECODE = "03_cuda_onramp.ipynb", "06_decode_kernel.ipynb"
MISPLACED = "values landed on the wrong elements"

GRID_2D = [
    ("bias[0] for every column", [("bias[col]", "bias[0]")], "every element adds bias[0]"),
    ("no bias", [(" + bias[col]", "")], "bias was never added"),
    ("bias by threadIdx.x", [("bias[col]", "bias[threadIdx.x]")],
     "columns 16 and up add bias[c % 16]"),
    ("bias subtracted", [("+ bias[col]", "- bias[col]")], "the bias is subtracted"),
]


@pytest.mark.parametrize("name, edits, phrase", GRID_2D, ids=[m[0] for m in GRID_2D])
def test_a_misread_bias_is_named_not_a_misplaced_element(name, edits, phrase):
    source = mutate(solution_source(ONRAMP, "SOURCE_2D"), edits)
    assert_caught("puzzle_2d", source, phrase, not_phrases=[MISPLACED], device="cpu")


@pytest.mark.parametrize("edit, phrase", [
    (("col < cols", "col < cols - 1"), "only the last column, 18, was never written"),
    (("row < rows", "row < rows - 1"), "only the last row, 4, was never written"),
])
def test_a_2d_guard_one_short_is_named(edit, phrase):
    source = mutate(solution_source(ONRAMP, "SOURCE_2D"), [edit])
    assert_caught("puzzle_2d", source, phrase, device="cpu")


def test_a_fixed_size_shared_array_fails_and_is_named():
    """A __shared__ float[128] holds q for every head_dim the check used to try (up to 48)."""
    source = mutate(solution_source(ONRAMP, "SOURCE_SHARED"), [(
        "extern __shared__ float q_shared[];", "__shared__ float q_shared[128];")])
    assert_caught("puzzle_shared", source, "holds 128 floats, fewer than head_dim = 160",
                  device="cpu")


GENERIC = "compare your kernel with the spec above"
NAMED_AT_LAST = [   # each used to get only the generic hint
    ("puzzle_guard", "SOURCE_GUARD", ("if (i < n)", "if (i > 0 && i < n)"),
     "only element 0 was never written"),
    ("puzzle_guard", "SOURCE_GUARD", ("threadIdx.x;", "threadIdx.x + 1;"),
     "only element 0 was never written"),
    ("puzzle_guard", "SOURCE_GUARD", ("if (i < n)", "if (i < n / 32 * 32)"),
     "elements 96-99, in the last, partly filled block"),
    ("puzzle_shared", "SOURCE_SHARED", ("if (t < n)", "if (t < n - 1)"),
     "only the last key, 44, got no score"),
    ("puzzle_shared", "SOURCE_SHARED", ("k[t * head_dim + d]", "k[threadIdx.x * head_dim + d]"),
     "keys 32 and up got the score of key t % 32"),
    ("puzzle_shared", "SOURCE_SHARED", ("for (int d = 0; d < head_dim; ++d) dot",
                                        "for (int d = 0; d < head_dim - 1; ++d) dot"),
     "the dot product skips d = head_dim - 1"),
]


@pytest.mark.parametrize("task, variable, edit, phrase", NAMED_AT_LAST,
                         ids=[f"{m[0]}: {m[2][1]}" for m in NAMED_AT_LAST])
def test_a_puzzle_mistake_is_named_not_left_to_the_generic_hint(task, variable, edit, phrase):
    source = mutate(solution_source(ONRAMP, variable), [edit])
    assert_caught(task, source, phrase, not_phrases=[GENERIC], device="cpu")


@pytest.mark.parametrize("task, variable, edits", [
    ("puzzle_2d", "SOURCE_2D", [("blockIdx.x * blockDim.x", "blockIdx.x * 16"),
                                ("blockIdx.y * blockDim.y", "blockIdx.y * 8")]),
    ("puzzle_2d", "SOURCE_2D", [(
        "    if (row < rows && col < cols) out[row * cols + col] = x[row * cols + col] + "
        "bias[col];", "    if (row >= rows || col >= cols) return;\n"
                      "    out[row * cols + col] = x[row * cols + col] + bias[col];")]),
    ("puzzle_shared", "SOURCE_SHARED", [("    if (t < n) {", "    if (t >= n) return;\n    {")]),
], ids=["2d hard-coded block", "2d early return", "shared early return after the barrier"])
def test_right_puzzle_kernels_written_differently_pass(task, variable, edits):
    result, printed = run_check(task, mutate(solution_source(ONRAMP, variable), edits),
                                device="cpu")
    assert result.passed, printed


@pytest.mark.parametrize("fn", [
    lambda g, w, b, h, d: np.concatenate([p.reshape(b, h // w, d) for p in np.split(g, w)],
                                         axis=1),
    lambda g, w, b, h, d: g.reshape(w, b, h // w, d).transpose(1, 0, 2, 3)
    .reshape(b, h, d).tolist(),
], ids=["split and concatenate", "a nested list"])
def test_right_gather_heads_pass(fn):
    result, printed = run_check("gather_heads", fn)
    assert result.passed, printed


def _split(divide):
    def head_split(rank, world_size, num_heads, num_kv_heads):
        if num_kv_heads % world_size:
            raise ValueError(f"world_size {world_size} does not divide {num_kv_heads}")
        kv, q = divide(num_kv_heads, world_size), divide(num_heads, world_size)
        return ((rank * kv, (rank + 1) * kv), (rank * q, (rank + 1) * q))
    return head_split


def test_head_split_by_a_shift_names_the_power_of_two():
    assert_caught("head_split", _split(lambda a, w: a >> (w.bit_length() - 1)),
                  "world_size = 3 here is not")


def test_head_split_by_group_passes():
    def head_split(rank, world_size, num_heads, num_kv_heads):
        if num_kv_heads % world_size:
            raise ValueError("world_size")
        kv, group = num_kv_heads // world_size, num_heads // num_kv_heads
        return [[rank * kv, rank * kv + kv], [rank * kv * group, (rank + 1) * kv * group]]
    result, printed = run_check("head_split", head_split)
    assert result.passed, printed


def test_merge_shifted_by_the_mean_fails():
    """exp(m_p - mean(m)) stays finite while the m_p lie at most ~1400 apart in two halves."""
    def merge(m, l, o):
        w = l * np.exp(m - m.mean())
        return w @ o / w.sum()
    assert_caught("merge_partitions", merge, "or their mean")


def test_merge_with_a_float32_step_is_named():
    def merge(m, l, o):
        w = l * np.exp((m - m.max()).astype(np.float32))
        return w @ o / w.sum()
    assert_caught("merge_partitions", merge, "rounds to float32")


@pytest.mark.parametrize("merge", [
    lambda m, l, o: (lambda w: w @ o)(np.exp(m + np.log(l) - (m + np.log(l)).max())
                                      / np.exp(m + np.log(l) - (m + np.log(l)).max()).sum()),
    lambda m, l, o: (lambda w: o.T @ w / w.sum())(l * np.exp(m - m.max())),
], ids=["log-sum-exp weights", "o transposed"])
def test_right_merges_written_differently_pass(merge):
    result, printed = run_check("merge_partitions", merge)
    assert result.passed, printed


def test_merge_kernel_row_strided_by_its_partition_count_is_named():
    source = mutate(solution_source(DECODE, "SOURCE_MERGE"), [
        ("part_ml + row * max_parts * 2", "part_ml + row * n_parts * 2"),
        ("part_out[(row * max_parts + p)", "part_out[(row * n_parts + p)")])
    assert_caught("decode_merge", source, "it reads another row's states",
                  not_phrases=["one partition past its last"], device="cpu")


def test_merge_kernel_storing_to_another_row_is_named():
    source = mutate(solution_source(DECODE, "SOURCE_MERGE"), [
        ("out[row * head_dim + d]", "out[((long long)h * gridDim.y + b) * head_dim + d]")])
    assert_caught("decode_merge", source, "its store is in the wrong row", device="cpu")


def _serve(admit_one_per_step):
    """Workbook 07's loop, admitting at most one request a step when `admit_one_per_step`."""
    return serve_loop(lambda a: spec_admission(a) and not (admit_one_per_step and a.admitted))


def test_serve_admitting_one_request_a_step_is_named():
    """The hint used to be the generic steps' one (room for everyone), or blamed promised
    counting whole totals alone (a small pool)."""
    result, printed = assert_caught("serve", _serve(True), "yours admitted one in this step")
    first = next(c for c in result.cases if not c.passed)
    assert "admitted one in this step" in first.hint, printed


def test_serve_admitting_every_request_that_fits_passes():
    result, printed = run_check("serve", _serve(False))
    assert result.passed, printed
