"""Hunt 38: wrong answers to workbooks 09 and 03 that the checks failed with a hint naming
another mistake (or none). Workbook 10's Python checks (chunk_mask, visible_keys, tile_work)
and the other kernels' mistakes tried for 09 were caught with a right or the generic hint.

tc_tile_scores: the "shifts and masks" hint was chosen from the source text alone, so a kernel
with a harmless shift (`tile << 4` for 16 * tile) and an unrelated fault got it on the first
case whose sizes are not powers of two. The hint now needs evidence: the same case with every
size raised to a power of two comes out right.
"""
import pytest

from tests.check_helpers import assert_caught, mutate, run_check, solution_source

TC = "09_tensor_core_decode.ipynb"
POW2 = "only when n is a power of two"
HARMLESS_SHIFT = ("int t = 16 * tile + r;", "int t = (tile << 4) + r;")


def _tile(*edits):
    return mutate(solution_source(TC, "SOURCE_TILE"), list(edits))


def test_a_harmless_shift_alone_passes():
    result, printed = run_check("tc_tile_scores", _tile(HARMLESS_SHIFT), device="cpu")
    assert result.passed, printed


# an unrelated mistake first seen on case 4 (head_dim 128, group 3, pages of 5)
@pytest.mark.parametrize("name, edit, phrase", [
    ("head_dim capped at 64", ("k0 < head_dim; k0 += 16", "k0 < head_dim && k0 < 64; k0 += 16"),
     "summed over all head_dim dimensions"),
])
def test_a_harmless_shift_does_not_earn_the_shift_hint(name, edit, phrase):
    assert_caught("tc_tile_scores", _tile(HARMLESS_SHIFT, edit), phrase, not_phrases=(POW2,),
                  device="cpu")


def test_a_shift_that_is_the_mistake_still_gets_the_hint():
    page_shift = ("block_table[t / page_size] * page_size + t % page_size",
                  "block_table[t / page_size] * page_size + (t & (page_size - 1))")
    assert_caught("tc_tile_scores", _tile(page_shift), POW2, device="cpu")


# -- puzzle_2d (workbook 03): a guard with the other side's bound --------------------------------
# With `col < rows` case 1 (5 x 19) wrote columns 0-4 only and got the generic hint, and case 3
# (8 x 16, where x and y exchanged writes the same elements) the hint that x and y are
# exchanged; with `row < cols` case 2 (37 x 21) wrote rows 0-20 and was told "only rows 0-7".

ONRAMP = "03_cuda_onramp.ipynb"


def _add_bias(*edits):
    return mutate(solution_source(ONRAMP, "SOURCE_2D"), list(edits))


@pytest.mark.parametrize("edit, phrase, not_phrases", [
    (("col < cols", "col < rows"), "the column guard uses rows", ("exchanged",)),
    (("row < rows && col < cols", "row < cols && col < cols"), "the row guard uses cols",
     ("only rows 0-7",)),
], ids=["col < rows", "row < cols"])
def test_a_guard_with_the_other_sides_bound_is_named(edit, phrase, not_phrases):
    assert_caught("puzzle_2d", _add_bias(edit), phrase, not_phrases=not_phrases, device="cpu")
