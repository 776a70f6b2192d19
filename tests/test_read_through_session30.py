"""Findings of session 30's read-through of its whole change, each shown failing before."""
import pytest

import pagedattn_lab as pl
from pagedattn_lab.grading.checks_sizing import _pages_needed_case
from pagedattn_lab.grading.checks_system_errors import error_counts
from pagedattn_lab.grading.report import Mismatch


def test_an_error_count_of_zero_is_not_called_one_page_per_sequence():
    # the first check of decode_step's error counts names no sequences: a learner raising
    # OutOfPagesError(0, 1, 5) was told "one page for each of the step's 0 sequences"
    with pytest.raises(Mismatch) as caught:
        error_counts(pl.OutOfPagesError(0, 1, 5), (2, 1, 5), "the step needs 2")
    assert "0 sequences" not in caught.value.hint


def test_a_right_count_at_the_probe_does_not_confirm_a_page_size_of_16():
    # pages of 13: ceil(33 / 13) is 3 for a right function too, so a probe at 33 confirmed
    # "pages of 16 written into the code" for an answer that only rounds one case wrongly
    def wrong_once(seq_len, page_size):
        return 13 if (seq_len, page_size) == (200, 13) else -(-seq_len // page_size)
    with pytest.raises(Mismatch) as caught:
        _pages_needed_case(wrong_once, 200, 13)
    assert "pages of 16" not in caught.value.hint
