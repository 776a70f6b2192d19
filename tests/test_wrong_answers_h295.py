"""Wrong answers that the checks passed, or failed with a hint naming another mistake or
none (helpers 289 and 290 found them).

1. quantize_write: a store (or amax) loop over a fixed 3 or 4 dims per lane passed: the largest
   head_dim was 80. A case of head_dim 256, the largest models use, leaves its dims unwritten.
2. group_rows: the group copied into one tile of 16 rows (or group // 16 tiles) raised NumPy's
   broadcast error, hinted only "read the error above".
3. puzzle_block_sum: __syncthreads() inside `if (lane == 0)` was told "no __syncthreads()
   between" while one stands there, in a branch the other threads skip.
4. tc_tile_scores: tile and kv_head read from swapped block axes were told only that "the Q
   rows are j * group + r" (which fits the first case too: both are named now).
5. decode_merge: the row index h * num_heads + b was blamed on reading one partition past the
   end.
6. Generic hints only: quantize_write's amax assigned (amax = fabsf(x), amax = __shfl_xor_sync)
   instead of kept with fmaxf; decode_partition with its head from blockIdx.x (part and head
   swapped); puzzle_map reading a[blockIdx.x].
7. quantize_write storing amax as the per-token scale got the generic scale hint.
8. tc_tile_scores with its K rows at token tile + c (for 16 * tile + c) got the generic hint.
"""
import numpy as np
import pytest

from pagedattn_lab.grading.branch_barriers import barrier_in_branch
from tests.check_helpers import as_params, assert_caught, kernel_mutant, run_check, \
    solution_of


def _fixed_dims(n):
    """quantize_write's store loop over n dims per lane, whatever head_dim is."""
    return [("    for (int d = lane; d < head_dim; d += 32)\n        dst[d]",
             f"    for (int j = 0; j < {n}; j++) {{ int d = lane + 32 * j; if (d < head_dim)\n"
             "        dst[d]"),
            ("127.0f);\n    // ###", "127.0f); }\n    // ###")]


def _group_in_tiles(n_tiles_of):
    """group_rows with the group copied into n_tiles_of(group) tiles of 16 rows (the
    solution's count is ceil(group / 16))."""
    def group_rows(q, kv_head, group):
        n_tiles = n_tiles_of(group)
        tiles = np.zeros((n_tiles * 16, q.shape[1]), dtype=q.dtype)
        tiles[:group] = q[kv_head * group:(kv_head + 1) * group]
        return tiles.reshape(n_tiles, 16, q.shape[1])
    return group_rows


_UNWRITTEN = "some codes were never written"
_BRANCH = "the __syncthreads() at line 12 sits inside an if"
_STORE = ("    if (lane == 0) warp_totals[warp] = v;\n    __syncthreads();")
_SWAPPED_TC = [("int tile = blockIdx.x;", "int tile = blockIdx.y;"),
               ("int kv_head = blockIdx.y;", "int kv_head = blockIdx.x;")]

MISTAKES = [
    ("quantize_write", kernel_mutant("quantize_write", _fixed_dims(3)), _UNWRITTEN),
    ("quantize_write", kernel_mutant("quantize_write", _fixed_dims(4)), _UNWRITTEN),
    ("group_rows", _group_in_tiles(lambda group: 1),
     "copied into an array of 16 rows (one tile", ["read the error above"]),
    ("group_rows", _group_in_tiles(lambda group: group // 16), "rounded down",
     ["read the error above"]),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [(_STORE, (
        "    if (lane == 0) { warp_totals[warp] = v;\n    __syncthreads(); }"))]),
     _BRANCH, ["put a barrier between the stores and the loads"]),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [(_STORE, (
        "    if (lane == 0) warp_totals[warp] = v;\n    if (lane == 0) __syncthreads();"))]),
     _BRANCH, ["put a barrier between the stores and the loads"]),
    ("tc_tile_scores", kernel_mutant("tc_tile_scores", _SWAPPED_TC),
     "with the two block axes swapped"),
    ("decode_merge", kernel_mutant("decode_merge", [("(long long)b * num_heads + h;",
                                                     "(long long)h * num_heads + b;")]),
     "the row index is h * num_heads + b: b and h are swapped",
     ["one partition past its last"]),
    ("quantize_write", kernel_mutant("quantize_write", [(
        "d += 32) amax = fmaxf(amax, fabsf(row[d]));", "d += 32) amax = fabsf(row[d]);")]),
     "each lane's amax is its last element's magnitude", ["scale = max |x| over the row's"]),
    ("quantize_write", kernel_mutant("quantize_write", [(
        "amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));",
        "amax = __shfl_xor_sync(0xffffffffu, amax, offset);")]),
     "lane L ends with lane L ^ 31's own amax", ["scale = max |x| over the row's"]),
    ("decode_partition", kernel_mutant("decode_partition", [
        ("int part = blockIdx.x;", "int part = blockIdx.y;"),
        ("int h = blockIdx.y;", "int h = blockIdx.x;")]),
     "yours took the head from blockIdx.x", ["must be softmax(scores of partition p)"]),
    ("puzzle_map", kernel_mutant("puzzle_map", [("a[i] + 10.0f", "a[blockIdx.x] + 10.0f")]),
     "every thread read the same element a[0]", ["compare your kernel with the spec"]),
    ("puzzle_map", kernel_mutant("puzzle_map", [("a[i] + 10.0f", "a[3] + 10.0f")]),
     "every element is a[3] + 10", ["compare your kernel with the spec"]),
    # found on the way (7, 8)
    ("quantize_write", kernel_mutant("quantize_write", [(
        "k_scale[slot * num_kv_heads + head] = scale",
        "k_scale[slot * num_kv_heads + head] = amax")]),
     "store the scale, amax / 127, not the amax itself", ["scale = max |x| over the row's"]),
    ("tc_tile_scores", kernel_mutant("tc_tile_scores", [("int t = 16 * tile + r;",
                                                         "int t = tile + r;")]),
     "is token 16 * tile + c, not tile + c", ["S[r][c] = q[kv_head * group + r]"]),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


def test_both_fits_of_the_swapped_tc_axes_are_named():
    """On case 1 (2 kv heads, one tile) the Q rows j * num_kv_heads + r give the same scores
    as the swapped axes: the hint names both."""
    assert_caught("tc_tile_scores", kernel_mutant("tc_tile_scores", _SWAPPED_TC),
                  "these mistakes give the same scores here")


RIGHTS = [
    ("quantize_write", kernel_mutant("quantize_write", [])),
    ("quantize_write", kernel_mutant("quantize_write", _fixed_dims(8))),   # head_dim up to 256
    ("group_rows", solution_of("09", "group_rows")),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [])),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [(_STORE, (
        "    if (lane == 0) {\n        warp_totals[warp] = v;\n    }\n    __syncthreads();"))])),
    ("tc_tile_scores", kernel_mutant("tc_tile_scores", [])),
    ("decode_merge", kernel_mutant("decode_merge", [])),
    ("decode_partition", kernel_mutant("decode_partition", [])),
    ("puzzle_map", kernel_mutant("puzzle_map", [])),
]


@pytest.mark.parametrize("task, impl", RIGHTS)
def test_right_answer_passes(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed


def test_a_branch_both_lines_are_in_is_no_missed_barrier():
    """A barrier in an if that holds both racing lines was passed by both threads (the
    race is elsewhere); a barrier outside any branch is not named either."""
    source = ("if (warp == 0) {\n  s[lane] = v;\n  __syncthreads();\n  v = s[lane + 1];\n}\n"
              "s[lane] = v;\n__syncthreads();\nv = s[0];\n")
    assert barrier_in_branch(source, 2, 4) is None
    assert barrier_in_branch(source, 6, 8) is None
    assert barrier_in_branch("if (lane == 0) {\n  s[0] = v;\n  __syncthreads();\n}\n"
                             "v = s[0];\n", 2, 5) == 3
