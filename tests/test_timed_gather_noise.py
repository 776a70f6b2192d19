"""The timed gather case under a busy machine: a right answer whose first calls are slowed by
other work (as a call to the grader's sandbox is, when the scheduler is slow to wake it) still
passes, since the case times it again while its best is past the limit; an answer with Python
work per token still fails, however often it is timed.

The per-token loop the case times as its yardstick is given a fixed time here: timed on a
loaded machine, it made the fast answer's best of 3 miss the limit now and then (a fourth
call, and the exact count failed). The learner's calls are still timed for real; the sleeps
below are past the fixed limit, a fast gather's call far below it."""
import time
import types

import numpy as np
import pytest

from pagedattn_lab.grading import checks_addressing
from pagedattn_lab.grading.time_limits import CASE_TIME_LIMIT
from tests.check_helpers import run_check

LOOP_SECONDS = 0.2   # the yardstick: the limit is LOOP_LIMIT (0.75) of it, 0.15 s


@pytest.fixture(autouse=True)
def fixed_loop_time(monkeypatch):
    monkeypatch.setattr(checks_addressing, "_loop_seconds", lambda *sizes: LOOP_SECONDS)


def _fast_gather(k, row, n):
    p = k.shape[1]
    t = np.arange(n)
    return k.reshape(-1, *k.shape[2:])[np.asarray(row)[t // p] * p + t % p]


def test_a_right_gather_slowed_on_its_first_calls_passes():
    calls = [0]

    def slowed_at_first(k, row, n):
        calls[0] += 1
        if n == checks_addressing.TIMED_TOKENS and calls[0] <= checks_addressing.TIMED_REPEATS + 6:
            time.sleep(0.25)   # past the limit: what a busy machine added
        return _fast_gather(k, row, n)

    result, printed = run_check("gather_numpy", slowed_at_first)
    assert result.passed, printed


def test_a_gather_slowed_on_every_call_fails_after_the_most_repeats():
    timed_calls = [0]

    def always_slow(k, row, n):
        if n == checks_addressing.TIMED_TOKENS:
            timed_calls[0] += 1
            time.sleep(0.25)
        return _fast_gather(k, row, n)

    result, printed = run_check("gather_numpy", always_slow)
    assert not result.passed and "Python work per token" in printed, printed
    assert timed_calls[0] == checks_addressing.TIMED_MAX_REPEATS


def test_a_right_gather_that_is_fast_is_timed_only_the_usual_repeats():
    timed_calls = [0]

    def counted(k, row, n):
        timed_calls[0] += n == checks_addressing.TIMED_TOKENS
        return _fast_gather(k, row, n)

    result, printed = run_check("gather_numpy", counted)
    assert result.passed, printed
    assert timed_calls[0] == checks_addressing.TIMED_REPEATS


def test_a_per_token_loop_on_a_busy_machine_fails_on_the_clock_within_the_case_limit(
        monkeypatch):
    """Measured on 2 cores beside two busy processes: a per-token loop on the counted arrays
    took 3.4-4.6 s a call, and its 12 repeats ran past the case's 30 s limit, which failed it
    as an endless loop. The clock is faked here (4 s a call, no real wait); timing stops once
    the evidence is in, well within the limit, and the failure names the per-token work."""
    clock, timed_calls = [0.0], [0]
    monkeypatch.setattr(checks_addressing, "time",
                        types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def loop_on_a_busy_machine(k, row, n):
        if n == checks_addressing.TIMED_TOKENS:
            timed_calls[0] += 1
            clock[0] += 4.0
        return _fast_gather(k, row, n)

    result, printed = run_check("gather_numpy", loop_on_a_busy_machine)
    assert not result.passed and "Python work per token" in printed, printed
    assert "4000.0 ms for 131072 tokens" in printed, printed
    assert timed_calls[0] * 4.0 <= CASE_TIME_LIMIT / 2, timed_calls


def test_a_gather_that_joins_at_every_page_is_told_so():
    """Joined again at every page, a gather's copies grow with the square of the pages: the
    timed case's hint names that, beside the per-token loop (either may be what was slow)."""
    def joined_at_every_page(k, row, n):
        if n == checks_addressing.TIMED_TOKENS:
            time.sleep(0.25)   # slow, as such a gather is on a busy machine
        return _fast_gather(k, row, n)

    result, printed = run_check("gather_numpy", joined_at_every_page)
    words = " ".join(printed.split())   # (the report wraps its lines)
    assert not result.passed and "again at every page" in words, printed
    assert "joins them once" in words, printed
