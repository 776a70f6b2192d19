"""Review of helpers 275, 276 and 279's kernel-check changes (helper 283): the mistakes they
named, widened to the class they belong to.

1. tc_tile_scores: tiles stored 16 floats apart were named (helper 275), but a stride of 32
   or 128 (any stride below a tile's 256 floats overlaps the tiles the same way) was told
   "the Q rows of kv head j are j * num_kv_heads + r" alone on the MHA case and got the
   recipe on the others.
2. naive_kernel, tiled_kernel: acc or the running sum set to 0 at every key got the recipe;
   helper 279 named the same mistake in decode_partition only.
3. naive_kernel, tiled_kernel: q or out at (t * num_heads + h) * head_dim, a row of the
   learner's own without the sequence, got the recipe; helper 279 named the rows without the
   head only.
"""
import pytest

from tests.check_helpers import assert_caught, mutate, run_check, solution_source

_TILE = ("09_tensor_core_decode.ipynb", "SOURCE_TILE")
_NAIVE = ("04_naive_kernel.ipynb", "SOURCE_NAIVE")
_TILED = ("05_tiled_kernel.ipynb", "SOURCE_TILED")
_NAIVE_LOOP = "    for (int j = 0; j <= t; ++j) {                   // causal: keys 0..t\n"
_TILED_LOOP = "            for (int j = 0; j < last; ++j) {\n"
_RECIPE = ("follow the prompt's recipe", "the race check found no race")
_ACC = "the accumulator is set to 0 at every key"
_SUM = "the running sum is set to 0 at every key"


@pytest.mark.parametrize("stride", [32, 128])
def test_tiles_stored_less_than_256_floats_apart_are_named_in_every_case(stride):
    source = mutate(solution_source(*_TILE), [("+ tile) * 256", f"+ tile) * {stride}")])
    result, printed = run_check("tc_tile_scores", source, device="cpu")
    failed = [c for c in result.cases if not c.passed]
    assert failed, printed
    named = f"(kv_head * gridDim.x + tile) * 256, not * {stride} (there the tiles overlap"
    assert all(named in " ".join(c.hint.split()) for c in failed), printed


@pytest.mark.parametrize("notebook, loop, reset, phrase", [
    (_NAIVE, _NAIVE_LOOP, "        for (int d = 0; d < head_dim; ++d) acc[d] = 0.0f;\n", _ACC),
    (_NAIVE, _NAIVE_LOOP, "        running_sum = 0.0f;\n", _SUM),
    (_TILED, _TILED_LOOP, "                for (int d = 0; d < head_dim; ++d) acc[d] = 0.0f;\n",
     _ACC),
    (_TILED, _TILED_LOOP, "                running_sum = 0.0f;\n", _SUM),
], ids=["naive-acc", "naive-sum", "tiled-acc", "tiled-sum"])
def test_a_state_reset_at_every_key_is_named(notebook, loop, reset, phrase):
    task = "naive_kernel" if notebook == _NAIVE else "tiled_kernel"
    source = mutate(solution_source(*notebook), [(loop, loop + reset)])
    assert_caught(task, source, phrase, not_phrases=_RECIPE, device="cpu")


def test_a_state_reset_per_page_is_not_told_it_is_reset_per_key():
    """Zeroed once per page (declared in the page loop): the recipe's 'never reset per page'."""
    page = "    for (int p = 0; p < pages; ++p) {\n"
    source = mutate(solution_source(*_TILED), [(page, page + "        running_sum = 0.0f;\n")])
    result, printed = run_check("tiled_kernel", source, device="cpu")
    assert not result.passed and _SUM not in printed, printed


_NO_BATCH = "((long long)t * num_heads + h) * head_dim"


@pytest.mark.parametrize("task, edits, phrase", [
    ("naive_kernel", [("q[row + d]", f"q[{_NO_BATCH} + d]")],
     "q's row is read at (t * num_heads + h) * head_dim, sequence 0's row"),
    ("naive_kernel", [("out[row + d] = acc[d]", f"out[{_NO_BATCH} + d] = acc[d]")],
     "yours stores at (t * num_heads + h) * head_dim, sequence 0's row"),
    ("tiled_kernel", [("q[row + d] * scale", f"q[{_NO_BATCH} + d] * scale")],
     "q's row is read at (t * num_heads + h) * head_dim, sequence 0's row"),
    ("tiled_kernel", [("out[row + d] = active", f"out[{_NO_BATCH} + d] = active")],
     "yours stores at (t * num_heads + h) * head_dim, sequence 0's row"),
], ids=["naive-q", "naive-out", "tiled-q", "tiled-out"])
def test_a_row_without_the_sequence_is_named(task, edits, phrase):
    notebook = _NAIVE if task == "naive_kernel" else _TILED
    assert_caught(task, mutate(solution_source(*notebook), edits), phrase,
                  not_phrases=_RECIPE, device="cpu")
