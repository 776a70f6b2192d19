"""How a check prints: short lines broken between words, each hint once, no repr echo."""
import contextlib
import io

import numpy as np
import pytest

from pagedattn_lab import check
from pagedattn_lab.grading.compare import changed_input
from pagedattn_lab.grading.printer import WIDTH
from pagedattn_lab.grading.report import Case, Mismatch, run_cases, several_fit

LONG_HINT = ("a hint long enough to need wrapping: " + "several plain words " * 12).strip()


def _printed(cases, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = run_cases("demo", "a demo check", cases, **kwargs)
    return result, out.getvalue()


def _fail(hint):
    def run():
        raise Mismatch("the value " + "is wrong " * 15, hint, expected="1", got="2")
    return run


def test_lines_are_wrapped_between_words():
    result, printed = _printed([Case("long", {"param": "x" * 10}, _fail(LONG_HINT))])
    lines = printed.splitlines()
    assert all(len(line) <= WIDTH for line in lines), printed
    words = " ".join(line.strip() for line in lines)
    assert "several plain words several" in words  # no word cut in two
    assert result.messages == lines


def test_a_hint_is_printed_once_per_distinct_mistake():
    cases = [Case(f"c{i}", {}, _fail("hint A")) for i in range(2)] + [Case("c2", {},
                                                                           _fail("hint B"))]
    _, printed = _printed(cases)
    assert printed.count("hint A") == 1 and printed.count("hint B") == 1
    assert "hint: as for case 1 above" in printed


def test_stub_message_is_not_echoed_and_result_has_no_notebook_echo():
    def stub(n, p):
        raise NotImplementedError("write this part, then run the check below")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = check.pages_needed(stub)
    assert result.status == "not attempted"
    assert "write this part" not in out.getvalue()
    assert "still raises NotImplementedError" in out.getvalue()
    assert repr(result) == "<CheckResult pages_needed: not attempted, 0/1 cases passed>"
    assert result._ipython_display_() is None  # a notebook shows nothing more
    assert result.cases and result.messages and not result.passed


def test_quoted_code_lines_are_not_wrapped():
    code = "   33 |         for (int d = 0; d < head_dim; ++d) score += q[row + d] * k[kv + d];"
    _, printed = _printed([Case("code", {}, lambda: (_ for _ in ()).throw(
        Mismatch("the kernel does not compile:\n" + code, "fix it")))])
    assert code in printed


def test_a_changed_input_list_is_reported_whatever_the_learner_put_in_it():
    """Item by item, with no comparison that can raise: an array where an int was (its ==
    is elementwise), an item removed, an item replaced; an untouched list is no change."""
    given = {"seq_lens": [3, 1, 4]}
    assert changed_input("f", given, {"seq_lens": [3, 1, 4]}) is None
    nan, row = float("nan"), np.array([1.0, np.nan])   # untouched (or copied by the grader's
    for items in ([nan, row], [float("nan"), row.copy()]):   # channel): no change
        assert changed_input("f", {"xs": [nan, row]}, {"xs": items}) is None
    for passed, detail in (([3, np.array([1, 1]), 4], "1 of 3 items, the first at index 1"),
                           ([3, 1], "its 3 items became 2"),
                           ([3, 1, 5], "1 of 3 items, the first at index 2"),
                           ([3.0, 1, 4], "1 of 3 items, the first at index 0")):
        changed = changed_input("f", given, {"seq_lens": passed})
        assert changed is not None and f"f changed its input seq_lens: {detail}" in \
            changed.message, (passed, changed and changed.message)


def test_mistakes_that_fit_alike_are_named_in_one_wording():
    """The graders said it four ways ("(1) ... (2)", " Or: ", " OR ", prose): one now. One
    hint stays as it is; two or more are numbered in one sentence."""
    assert several_fit(["no scale."]) == "no scale."
    assert several_fit(["no scale.", "the wrong row (not the column).", "k for v"],
                       "tile") == ("these mistakes give the same tile here, check each: "
                                   "(1) no scale; (2) the wrong row (not the column); "
                                   "(3) k for v.")
    assert several_fit(iter(["a.", "b."])).startswith("these mistakes give the same result")
    with pytest.raises(ValueError, match="several_fit: hints is empty"):
        several_fit([])
