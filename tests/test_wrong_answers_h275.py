"""Wrong CUDA C answers to workbooks 03, 06 and 11, each the solution with one learner's
mistake, that the checks passed or failed with a hint naming another mistake (or none):

1. dequant_decode: a running max started at 0, not -inf, passed: no case had every logit far
   below 0, where e^(s - 0) underflows to 0 in float32 and out = 0 / 0 (a weight e^s with no
   max subtracted does the same there, so the hint names both).
2. decode_partition: part_out stored by lane 0 alone (or lanes 0-15) was told its dot product
   reached lane 0 alone through a __shfl_down_sync; the other lanes' dims were never written,
   and the dims stored were right.
3. puzzle_block_sum (and puzzle_warp_sum): the element index threadIdx.x alone, so every block
   summed block 0's elements, got no hint.
4. puzzle_block_sum: the second step reading warp_totals[warp] (warp 0's total, 8 times) got
   no hint.
5. naive_kernel, tiled_kernel: running_max set to new_max before the rescale is worked out (a
   rescale of 1: neither acc nor the sum rescaled) got only the recipe.
6. tc_tile_scores: tiles stored 16 floats apart, not 256, were told "the Q rows of kv head j
   are j * num_kv_heads + r" alone where with MHA that gives the same scores, and got no hint
   where the overlapping stores left scores that no variant gives (which tile's store wins
   depends on the order the blocks ran in).
"""
import pytest

from tests.check_helpers import _flat, assert_caught, mutate, run_check, solution_source

_NOTEBOOKS = {"dequant_decode": ("11_kv_compression.ipynb", "SOURCE_READ"),
              "decode_partition": ("06_decode_kernel.ipynb", "SOURCE_PARTITION"),
              "puzzle_block_sum": ("03_cuda_onramp.ipynb", "SOURCE_BLOCK_SUM"),
              "puzzle_warp_sum": ("03_cuda_onramp.ipynb", "SOURCE_WARP_SUM"),
              "naive_kernel": ("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
              "tiled_kernel": ("05_tiled_kernel.ipynb", "SOURCE_TILED"),
              "tc_tile_scores": ("09_tensor_core_decode.ipynb", "SOURCE_TILE")}

_PART_STORE = "if (d < head_dim) part_out[slot_out"
_LANE0 = "only lane 0 had the whole dot product"
_OWN_DIMS = "each lane stores its own dims d = lane, lane + 32"
_BLOCK0 = "every block summed block 0's elements"
_NO_RESCALE = "neither the accumulator nor the running sum was rescaled"
_RECIPE = "follow the prompt's recipe"
_OVERLAP = "tile (kv_head, tile) starts at scores + (kv_head * gridDim.x + tile) * 256, not * 16"
_MAX_FIRST = "        float new_max = fmaxf(running_max, score);\n"
_UNDERFLOW = "a running max started at 0 (not -inf), or a weight e^s with no max subtracted"

# (task, name, edits, phrase a failed case's message or hint holds, phrases no hint holds)
MISTAKES = [
    ("dequant_decode", "running max started at 0",
     [("float m = NEG_INF, l = 0.0f;", "float m = 0.0f, l = 0.0f;")], _UNDERFLOW, ()),
    ("decode_partition", "part_out stored by lane 0",
     [(_PART_STORE, "if (lane == 0 && d < head_dim) part_out[slot_out")],
     "lanes 1-31 stored none of their dims", (_LANE0, "__shfl_down_sync reduction")),
    ("decode_partition", "part_out stored by lanes 0-15",
     [(_PART_STORE, "if (lane < 16 && d < head_dim) part_out[slot_out")],
     "lanes 16-31 stored none of their dims", (_LANE0,)),
    ("puzzle_block_sum", "i = threadIdx.x",
     [("int i = blockIdx.x * blockDim.x + threadIdx.x;", "int i = threadIdx.x;")], _BLOCK0,
     ("compare your kernel with the spec",)),
    ("puzzle_warp_sum", "elements at threadIdx.x",
     [("float v = i < n ? a[i] : 0.0f;", "float v = threadIdx.x < n ? a[threadIdx.x] : 0.0f;")],
     _BLOCK0, ("compare your kernel with the spec",)),
    ("puzzle_block_sum", "warp_totals[warp] in the second step",
     [("? warp_totals[lane] :", "? warp_totals[warp] :")], "warp 0's total was added 8 times",
     ("compare your kernel with the spec",)),
    ("naive_kernel", "running_max set before the rescale",
     [(_MAX_FIRST, _MAX_FIRST + "        running_max = new_max;\n")], _NO_RESCALE, (_RECIPE,)),
    ("tiled_kernel", "running_max set before the rescale",
     [(" " * 8 + _MAX_FIRST, " " * 8 + _MAX_FIRST + " " * 16 + "running_max = new_max;\n")],
     _NO_RESCALE, ("the race check found no race",)),
    ("tc_tile_scores", "tiles stored 16 floats apart",
     [("+ tile) * 256", "+ tile) * 16")], _OVERLAP, ("S[r][c] = q[kv_head * group + r]",)),
]


@pytest.mark.parametrize("task, edits, phrase, not_phrases", [m[:1] + m[2:] for m in MISTAKES],
                         ids=[f"{m[0]}-{m[1]}" for m in MISTAKES])
def test_mistake_is_named(task, edits, phrase, not_phrases):
    source = mutate(solution_source(*_NOTEBOOKS[task]), edits)
    assert_caught(task, source, phrase, not_phrases=not_phrases, device="cpu")


def test_a_max_started_at_0_fails_where_every_logit_underflows():
    """The case that catches it: every logit far below 0 (and nothing else wrong there)."""
    source = mutate(solution_source(*_NOTEBOOKS["dequant_decode"]),
                    [("float m = NEG_INF, l = 0.0f;", "float m = 0.0f, l = 0.0f;")])
    result, printed = run_check("dequant_decode", source, device="cpu")
    failed = [c for c in result.cases if not c.passed]
    assert failed and all("below" in c.name for c in failed), printed
    assert all(_flat(_UNDERFLOW) in _flat(c.hint) for c in failed), printed


def test_tiles_16_apart_name_both_mistakes_where_mha_gives_the_same_scores():
    """With one query head per KV head, Q rows j * num_kv_heads + r give these scores too."""
    source = mutate(solution_source(*_NOTEBOOKS["tc_tile_scores"]),
                    [("+ tile) * 256", "+ tile) * 16")])
    result, printed = run_check("tc_tile_scores", source, device="cpu")
    mha = next(c for c in result.cases if "MHA" in c.name)
    assert not mha.passed and "check each" in mha.hint, printed
    assert _flat(_OVERLAP) in _flat(mha.hint) and "j * num_kv_heads + r" in mha.hint, printed


def test_the_shuffle_down_hint_still_names_lane_0():
    """A __shfl_down_sync reduction stores every dim, only lane 0's right: its own hint."""
    source = mutate(solution_source(*_NOTEBOOKS["decode_partition"]),
                    [("__shfl_xor_sync", "__shfl_down_sync")])
    assert_caught("decode_partition", source, _LANE0, not_phrases=(_OWN_DIMS,), device="cpu")


@pytest.mark.parametrize("task", sorted(_NOTEBOOKS))
def test_the_solution_still_passes(task):
    result, printed = run_check(task, solution_source(*_NOTEBOOKS[task]), device="cpu")
    assert result.passed, printed
