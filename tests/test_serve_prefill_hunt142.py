"""Hunt 142: workbook 07's serve check, a loop that prefills a prompt one token a step.

Admitting a request with its first prompt token only (kv_for(i, 0, 1)) lets the decode
append the rest one a step, as if the prompt were generated: every request runs prompt_len
- 1 steps longer. The check failed it with the spec restated ("each step: admit ...") or a
companion list it did not explain; the cache shows the first append's size, and the order
or the company at each free is the one such a loop makes.
"""
import pytest

from tests.check_helpers import run_check
from tests.serve_loops import serve_loop, spec_admission


def test_a_one_token_a_step_prefill_is_named_on_every_failing_case():
    result, printed = run_check("serve", serve_loop(spec_admission, admitted_tokens=1))
    failed = [c for c in result.cases if not c.passed]
    assert result.status == "failed" and failed, printed
    for case in failed:
        hint = " ".join(case.hint.split())
        assert "one token a step" in hint and "kv_for(i, 0, prompt_len)" in hint, printed
    first = " ".join(failed[0].hint.split())
    assert first.startswith("request 0 was admitted with 1 of its 5 prompt tokens"), printed


@pytest.mark.parametrize("piece", [None, 1, 2], ids=["whole", "token by token", "in twos"])
def test_a_prompt_appended_whole_at_admission_passes(piece):
    """The spec's loop, and ones that append the prompt in pieces inside the admission (the
    same cache after every step; the first append holds part of the prompt): no mistake to
    name, the check passes them."""
    result, printed = run_check("serve", serve_loop(spec_admission, piece=piece))
    assert result.status == "passed", printed
