"""Hints that must stand on what the learner's kernel computed: an element it never wrote
still holds the check's fill (a NaN of the poison's bit pattern), which a known-wrong variant
that is NaN there must not "match" (the "never written" report names those elements); and the
rounding hint, given only where the output is what a narrower type gives, not to any answer
that is merely near the expected."""
import numpy as np
import pytest

from pagedattn_lab.grading.compare import diagnose, fitting_hints
from pagedattn_lab.grading.kernel_runner import poisoned
from tests.check_helpers import assert_caught, mutate, solution_source

_STORE = "if (d < head_dim) part_out[slot_out * head_dim + d] = acc[i] / l;"


def test_a_nan_variant_does_not_match_an_output_never_written():
    """Row 1 never written: a variant right on row 0 and NaN on row 1 is wrong only where
    the output holds the check's fill, and a NaN-everywhere one is wrong on row 0."""
    got = poisoned((2, 3))
    expected = np.arange(6.0).reshape(2, 3)
    got[0] = expected[0]
    nan_where_unwritten = np.where([[True], [False]], expected, np.nan)
    assert diagnose(got, expected, [("a hint", nan_where_unwritten)]) is None
    assert list(fitting_hints(got, expected, [("a hint", np.full((2, 3), np.nan))])) == []
    assert diagnose(poisoned((2, 3)), expected, [("a hint", np.full((2, 3), np.nan))]) is None


def test_a_store_at_the_wrong_place_still_matches_its_variant():
    """Wrong where it wrote, and unwritten where the variant stores nothing: the variant
    shows on the written elements (a scale stored at the token's index, not the slot's)."""
    got = poisoned((2, 3))
    expected = np.arange(6.0).reshape(2, 3)
    got[0] = expected[1]
    misplaced = np.where([[True], [False]], expected[1], np.nan)
    assert diagnose(got, expected, [("a hint", misplaced)]) == "a hint"


def test_a_computed_nan_still_matches_a_nan_variant():
    got = np.full((2, 3), np.nan, np.float32)
    expected = np.arange(6.0).reshape(2, 3)
    assert diagnose(got, expected, [("a hint", np.full((2, 3), np.nan))]) == "a hint"


def test_a_slot_rightly_left_alone_does_not_spoil_a_match():
    got = poisoned((2, 3))
    got[0] = [2.0, 3.0, 4.0]
    expected = np.array([[1.0, 2.0, 3.0], [np.nan] * 3])
    assert diagnose(got, expected, [("a hint", expected + 1)]) == "a hint"


@pytest.mark.parametrize("store", ["", "if (part > 0 && d < head_dim) part_out[slot_out * "
                                       "head_dim + d] = acc[i] / l;"],
                         ids=["no store", "store guarded by part > 0"])
def test_a_partition_output_never_stored_is_told_so(store):
    source = mutate(solution_source("06_decode_kernel.ipynb", "SOURCE_PARTITION"),
                    [(_STORE, store)])
    assert_caught("decode_partition", source, "were never written", device="cpu",
                  not_phrases=("NaN your code computed", "another partition's slot",
                               "page", "sequence b", "rounds down"))


def test_a_scale_off_by_a_little_is_not_told_it_rounds():
    """Off by a systematic 1%: near the expected, yet no rounding's result."""
    source = mutate(solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
                    [("score *= scale;", "score *= scale * 1.01f;")])
    assert_caught("naive_kernel", source, "differ", device="cpu",
                  not_phrases=("narrower type",))


def test_a_dot_product_summed_in_half_is_told_it_rounds():
    """(the source test_wrong_answers_h265.py builds: no new compile)"""
    from tests.test_wrong_answers_h265 import MISTAKES
    edits = next(m[2] for m in MISTAKES if m[1] == "__half dot product")
    source = mutate(solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"), edits)
    assert_caught("naive_kernel", source, "q . k computed in __half", device="cpu")


def test_a_variant_of_the_answers_shape_not_the_expected_ones_still_matches():
    """A mistake that changes the output's shape (a transposed store) is compared with the
    answer alone: it has no place-by-place difference from the expected output."""
    got, expected = np.ones((2, 3), np.float32), np.zeros((3, 2))
    assert list(fitting_hints(got, expected, [("transposed", lambda: np.ones((2, 3)))])) == \
        ["transposed"]
