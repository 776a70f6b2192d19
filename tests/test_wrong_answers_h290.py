"""Wrong answers of the CUDA tasks, each the solution with one mistake of parallel code (a
shuffle's mask, width or kind, a lane that skips a warp-wide call, a loop's stride), that the
checks passed, or failed with a hint naming another mistake or none.

1. decode_partition: a shuffle mask that leaves out the calling lanes (0x0000ffff) was told
   "lanes none wait at a different shuffle"; quantize_write's was told only the generic rule.
2. decode_merge: a dims loop stepping by gridDim.x instead of blockDim.x passed: no case had
   more heads (blocks in x) than a warp has lanes, where it skips dims (with fewer, the lanes'
   dims overlap and every one is stored with its right value: a loop stepping by 1 does that
   too, and passes, as does a merge that accumulates in out itself).
3. tc_tile_scores: wmma::mma_sync inside `if (lane < 16)` was told "read through a null
   pointer: check how that buffer's index is computed" (the CPU executor let a warp-wide call
   complete with lanes at another one, which then read fragments never published).
4. decode_partition: the dot reduced with __shfl_up_sync, with width 16, or assigned (dot =
   __shfl_*) was told only "part_out[b, h, p] must be softmax(scores of partition p) @ its
   values".
5. puzzle_warp_sum / puzzle_block_sum: a shuffle with width 16, `v = __shfl_*` for `v +=`,
   `__shfl_sync(v, offset)` for a partner shuffle, a warp's total stored by thread 0 of the
   block only, the second step leaving warp 0's total out or re-reducing warp 0's own sum got
   "compare your kernel with the spec above"; several lanes storing one total was told "only
   1 of its 1 elements holds a value".
"""
import numpy as np
import pytest

from pagedattn_lab.grading.warp_trees import tree
from tests.check_helpers import as_params, assert_caught, kernel_mutant, run_check

_SECOND_TREE = ("        for (int offset = 16; offset > 0; offset /= 2)\n"
                "            v += __shfl_xor_sync(0xffffffffu, v, offset);\n"
                "        if (lane == 0) out")
_MASK_LEFT_OUT = "the mask 0x0000ffff leaves out lanes 16-31"
_STEP = "the lanes' loop over dims steps by gridDim.x (40 here)"

MISTAKES = [
    ("decode_partition", kernel_mutant("decode_partition", [("0xffffffffu", "0x0000ffffu")]),
     _MASK_LEFT_OUT, ["lanes none"]),
    ("decode_partition", kernel_mutant("decode_partition", [("__shfl_xor_sync", "__shfl_up_sync")]),
     "with __shfl_up_sync only lane 31 ends with the whole dot product",
     ["must be softmax(scores of partition p)"]),
    ("decode_partition", kernel_mutant("decode_partition", [("dot, offset)", "dot, offset, 16)")]),
     "the shuffle's width argument (16) splits the warp", ["must be softmax(scores"]),
    ("decode_partition", kernel_mutant("decode_partition", [("dot += __shfl_xor_sync",
                                                             "dot = __shfl_xor_sync")]),
     "replaced the dot with the partner lane's", ["must be softmax(scores"]),
    ("decode_partition", kernel_mutant("decode_partition", [("dot += __shfl_xor_sync",
                                                             "dot = __shfl_down_sync")]),
     "replaced the dot with the partner lane's", ["must be softmax(scores"]),
    ("quantize_write", kernel_mutant("quantize_write", [("0xffffffffu", "0x0000ffffu")]),
     _MASK_LEFT_OUT),
    ("decode_merge", kernel_mutant("decode_merge", [("d += blockDim.x)", "d += gridDim.x)")]),
     _STEP, ["out[b, h] = sum_p"]),
    ("tc_tile_scores", kernel_mutant("tc_tile_scores", [(
        "        wmma::mma_sync(s, a, b, s);",
        "        if (lane < 16) wmma::mma_sync(s, a, b, s);")]),
     "lanes 0-15 were at another WMMA call", ["check how that buffer's index"]),
    ("tc_tile_scores", kernel_mutant("tc_tile_scores", [(
        "        wmma::load_matrix_sync(b, k_tile + k0, head_dim);",
        "        if (lane % 2 == 0) wmma::load_matrix_sync(b, k_tile + k0, head_dim);")]),
     "were at another WMMA call", ["check how that buffer's index"]),
    ("puzzle_warp_sum", kernel_mutant("puzzle_warp_sum", [("v, offset)", "v, offset, 16)")]),
     "the shuffle's width argument (16) splits the warp"),
    ("puzzle_warp_sum", kernel_mutant("puzzle_warp_sum", [("__shfl_xor_sync", "__shfl_down_sync"),
                                                          ("v, offset)", "v, offset, 16)")]),
     "the shuffle's width argument (16) splits the warp"),
    ("puzzle_warp_sum", kernel_mutant("puzzle_warp_sum", [("v += __shfl_xor_sync",
                                                           "v = __shfl_xor_sync")]),
     "replaced v with the partner's value instead of adding it"),
    ("puzzle_warp_sum", kernel_mutant("puzzle_warp_sum", [("v += __shfl_xor_sync",
                                                           "v = __shfl_down_sync")]),
     "replaced v with the partner's value instead of adding it"),
    ("puzzle_warp_sum", kernel_mutant("puzzle_warp_sum", [("__shfl_xor_sync", "__shfl_sync")]),
     "__shfl_sync(mask, v, offset) reads lane `offset` itself"),
    ("puzzle_warp_sum", kernel_mutant("puzzle_warp_sum", [
        ("if (i % 32 == 0 && warp * 32 < n)", "if (threadIdx.x == 0 && warp * 32 < n)")]),
     "only each block's first warp stored its total"),
    ("puzzle_warp_sum", kernel_mutant("puzzle_warp_sum", [
        ("__shfl_xor_sync", "__shfl_down_sync"),
        ("if (i % 32 == 0 && warp * 32 < n)", "if (warp * 32 < n)")]),
     "out was written 32 times for its 1 element", ["but only 1 of its 1"]),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [(
        "v = lane < blockDim.x / 32 ? warp_totals[lane]",
        "v = lane < blockDim.x / 32 && lane > 0 ? warp_totals[lane]")]),
     "warp 0's total was left out of the block's"),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [(
        "        v = lane < blockDim.x / 32 ? warp_totals[lane] : 0.0f;\n", "")]),
     "the block's total is 32 times warp 0's"),
    ("puzzle_block_sum", kernel_mutant("puzzle_block_sum", [(
        "    for (int offset = 16; offset > 0; offset /= 2)\n"
        "        v += __shfl_xor_sync(0xffffffffu, v, offset);\n    if (lane == 0) warp",
        "    for (int offset = 16; offset > 0; offset /= 2)\n"
        "        v += __shfl_xor_sync(0xffffffffu, v, offset, 16);\n    if (lane == 0) warp")]),
     "the shuffle's width argument (16) splits the warp"),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


RIGHTS = [
    ("decode_partition", []),
    # every lane holds m and l after the xor tree: all storing the same values is no race
    ("decode_partition", [("    if (lane == 0) {\n        part_ml", "    {\n        part_ml")]),
    ("decode_merge", []),
    # every lane storing all of a row's dims stores each with its right value: no race
    ("decode_merge", [("d += blockDim.x)", "d += 1)")]),
    # out used as the accumulator: each dim stored n_parts + 2 times, by its own lane
    ("decode_merge", [("float total = 0.0f, o = 0.0f;",
                       "float total = 0.0f;\n        out[row * head_dim + d] = 0.0f;"),
                      ("o += w * part_out", "out[row * head_dim + d] += w * part_out"),
                      ("out[row * head_dim + d] = o / total;",
                       "out[row * head_dim + d] /= total;")]),
    ("quantize_write", []),
    ("quantize_write", [("if (lane == 0) k_scale[", "k_scale[")]),
    ("tc_tile_scores", []),
    ("puzzle_warp_sum", []),
    # lane 0 ends with the sum under __shfl_down_sync, and with the offsets counting up
    ("puzzle_warp_sum", [("__shfl_xor_sync", "__shfl_down_sync")]),
    ("puzzle_warp_sum", [("offset = 16; offset > 0; offset /= 2",
                          "offset = 1; offset < 32; offset *= 2")]),
    ("puzzle_block_sum", []),
    ("puzzle_block_sum", [("__shfl_xor_sync", "__shfl_down_sync")]),
]


@pytest.mark.parametrize("task, edits", RIGHTS)
def test_right_answer_passes(task, edits):
    result, printed = run_check(task, kernel_mutant(task, edits))
    assert result.passed, printed


def test_the_trees_follow_the_shuffles_rules():
    """Lane 0 holds the sum after xor and down trees (offsets either way), lane 31 after an
    up tree, where lane 0 doubles its own value 5 times; with width 16 the offset-16 step
    hands lanes 0-15 their own values back (a later group's lanes), while lanes 16-31 read
    lanes 0-15; assigning leaves lane 0 lane 31's element."""
    a = np.random.default_rng(290).standard_normal((3, 32))
    for op in ("xor", "down"):
        for offsets in ((16, 8, 4, 2, 1), (1, 2, 4, 8, 16)):
            np.testing.assert_allclose(tree(a, op, offsets=offsets)[:, 0], a.sum(axis=1))
    np.testing.assert_allclose(tree(a, "up")[:, 31], a.sum(axis=1))
    np.testing.assert_allclose(tree(a, "up")[:, 0], 32 * a[:, 0])
    np.testing.assert_allclose(tree(a, width=16)[:, 0], 2 * a[:, :16].sum(axis=1))
    # (an earlier group may be read: lane 16 gets lane 0's values and ends with the sum)
    np.testing.assert_allclose(tree(a, width=16)[:, 16], a.sum(axis=1))
    np.testing.assert_allclose(tree(a, add=False)[:, 0], a[:, 31])
