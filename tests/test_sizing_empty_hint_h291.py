"""The empty batch's hint of lesson 00's waste fractions goes with a wrong number only
(helper 291: checks_sizing's WrongNumber, where the message was compared with the case's
words): a number for the batch with nothing reserved gets "return 0.0 for that case", text
gets the hint for text alone."""
import numpy as np
import pytest

from tests.check_helpers import run_check

EMPTY = {"seq_lens": [], "max_len": 2048}


def _reserved_waste(empty_answer):
    def reserved_waste(seq_lens, max_len):
        reserved = len(seq_lens) * max_len
        return empty_answer if reserved == 0 else 1 - int(np.sum(seq_lens)) / reserved
    return reserved_waste


@pytest.mark.parametrize("answer, named, not_named", [
    (0.5, "return 0.0 for that case, not 0.5", "not its text"),
    ("0.0", "not its text", "return 0.0 for that case")])
def test_only_a_wrong_number_for_the_empty_batch_is_told_to_return_0(answer, named, not_named):
    result, printed = run_check("reserved_waste", _reserved_waste(answer))
    case, = [c for c in result.cases if c.params == EMPTY]
    others = [c for c in result.cases if c.params != EMPTY]
    assert all(c.passed for c in others), printed
    assert named in case.hint and not_named not in case.hint, printed
