"""Ways around the own-work check and the salted cases (hunt 94).

Fixed: (e) one salt for every call of a check (a learner's code that answers case i wrong
on purpose learns one bit of case i from whether the check goes on, and meets the same case
in the next call); (b) code compiled under a package file's name and run in that module's
own namespace passed as the package's own; (a) the package's answer in C code that does not
say what it wraps (`numpy.frompyfunc`, a method-wrapper), or called for the learner by a
package helper given it as a callback (under the judge). Strict xfails, a design decision
each: (a) the callback in the notebook; (c) the sandbox patching its own watch; (d) the
timed gather's yardstick lengthened by work beside it.
"""
import contextlib
import io
import itertools
import threading
import types

import numpy as np
import pytest

from pagedattn_lab import check
from pagedattn_lab.engine import kv_manager
from pagedattn_lab.engine.kv_manager import _pages_for
from pagedattn_lab.grading import checks_addressing, runner, seeds
from tests.test_grade_protocol import remotely


# -- (e) the salt of each call ----------------------------------------------------------------
def test_each_call_of_a_check_meets_new_cases_under_the_grader():
    seen = [[], []]

    def learner(peer):
        for call in seen:
            def answer(row, token, page_size, _call=call):
                _call.append((list(row), token, page_size))
                return int(row[token // page_size]) * page_size + token % page_size
            runner.forwarder(peer, "slot_of")(answer)

    report = remotely("slot_of", learner=learner, salt=94)
    assert report["tasks"]["slot_of"]["status"] == "passed", report
    assert seen[0] and seen[1] and seen[0] != seen[1]


def test_the_salt_of_a_call_is_fixed_by_the_salt_task_and_call():
    assert seeds.call_salt(94, "slot_of", 1) == seeds.call_salt(94, "slot_of", 1)
    salts = {seeds.call_salt(s, t, c) for s, t, c in
             itertools.product((94, 95), ("slot_of", "kv_offset"), (1, 2))}
    assert len(salts) == 8 and all(0 <= s < 2 ** 64 for s in salts)


def _in_notebook(task, answer):
    with contextlib.redirect_stdout(io.StringIO()):
        return getattr(check, task)(answer)


# -- (b) code compiled under a package file's name, run in that module's namespace -------------
CALLS_IT = "def answer(seq_len, page_size):\n    return _pages_for(seq_len, page_size)\n"


def _exec_in_the_module():
    scope = kv_manager.__dict__
    exec(compile(CALLS_IT, kv_manager.__file__, "exec"), scope)   # noqa: S102 - the attack
    return scope.pop("answer")


IN_THE_MODULE = {
    "exec": _exec_in_the_module,
    "eval of a lambda": lambda: eval(compile(   # noqa: S307 - the attack
        "lambda seq_len, page_size: _pages_for(seq_len, page_size)", kv_manager.__file__,
        "eval"), kv_manager.__dict__),
    "FunctionType": lambda: types.FunctionType(
        compile(CALLS_IT, kv_manager.__file__, "exec").co_consts[0], kv_manager.__dict__),
}


@pytest.mark.parametrize("how", sorted(IN_THE_MODULE))
def test_code_run_in_a_package_modules_namespace_is_the_learners(how):
    answer = IN_THE_MODULE[how]()
    result = _in_notebook("pages_needed", answer)
    assert result.status == "failed", how
    assert "called pagedattn_lab.engine.kv_manager._pages_for" in result.messages[-1]
    verdict = remotely("pages_needed", answer, salt=94)["tasks"]["pages_needed"]
    assert verdict["status"] == "failed" and "_pages_for" in verdict["summary"], verdict


def test_the_packages_own_code_in_its_namespace_is_still_the_packages():
    from pagedattn_lab.grading import own_watch
    for fn in (_pages_for, kv_manager.KVCacheManager.cached_prefix):
        assert own_watch.package_code(fn.__code__, fn.__globals__)
    copy = types.FunctionType(_pages_for.__code__, kv_manager.__dict__)   # the same code
    assert own_watch.package_code(copy.__code__, copy.__globals__)
    assert not own_watch.package_code(IN_THE_MODULE["exec"]().__code__, kv_manager.__dict__)


# -- (a) the package's answer called for the learner by the package's own code -----------------
HELD = {"f": getattr(kv_manager, "_pages" + "_for")}   # no package name in the answer's source


def through_a_callback(seq_len, page_size):
    """The answer, called by a package helper (bench.timing.call_ms) through C code that
    leaves no frame (a partial of a deque's extend over a starmap)."""
    from collections import deque
    from functools import partial

    from pagedattn_lab.bench.timing import call_ms
    out = deque(maxlen=1)
    call_ms(partial(out.extend, itertools.starmap(HELD["f"], [(seq_len, page_size)])),
            reps=1, warmup=0)
    return out[0]


def test_the_answer_called_for_the_learner_by_package_code_fails_under_the_judge():
    verdict = remotely("pages_needed", through_a_callback, salt=94)["tasks"]["pages_needed"]
    assert verdict["status"] == "failed", verdict
    assert "your code had the package's call_ms call pagedattn_lab.engine.kv_manager." \
        "_pages_for for it" in verdict["summary"], verdict


C_WRAPPED = {"frompyfunc": np.frompyfunc(_pages_for, 2, 1),
             "method-wrapper": _pages_for.__call__,
             "frompyfunc of a method-wrapper": np.frompyfunc(_pages_for.__call__, 2, 1)}


@pytest.mark.parametrize("how", sorted(C_WRAPPED))
def test_the_answer_in_a_c_wrapper_fails_in_the_notebook_and_under_the_judge(how):
    answer = C_WRAPPED[how]
    result = _in_notebook("pages_needed", answer)
    assert result.status == "failed", how
    assert "you passed pagedattn_lab.engine.kv_manager._pages_for wrapped in a " \
        f"{type(answer).__name__}" in result.messages[-1]
    verdict = remotely("pages_needed", answer, salt=94)["tasks"]["pages_needed"]
    assert verdict["status"] == "failed" and "_pages_for" in verdict["summary"], verdict


def test_the_learners_own_function_in_a_c_wrapper_passes():
    def mine(seq_len, page_size):
        return -(-seq_len // page_size)
    assert _in_notebook("pages_needed", mine.__call__).status == "passed"


@pytest.mark.xfail(strict=True, reason=(
    "in the notebook the check runs in the learner's process, and a package helper calling "
    "the answer for the learner's function looks like any package code calling it (the "
    "check's own calls of it for its expected values too): only the sandbox, where every "
    "call is watched, tells them apart; under the grader the judge's verdict is what counts"))
def test_the_answer_called_for_the_learner_by_package_code_fails_in_the_notebook():
    assert _in_notebook("pages_needed", through_a_callback).status == "failed"


# -- (c) the sandbox patching its own watch -----------------------------------------------------
PATCHES_ITS_WATCH = """
import sys
from pagedattn_lab.grading import own_watch, own_work, runner
own_work.python_findings = lambda *args, **kwargs: []
own_watch.Watch.__enter__ = lambda self: self
peer = runner.learner_peer(int(sys.argv[1]))
peer.idle_timeout = 60
from pagedattn_lab.addressing import physical_slot
runner.forwarder(peer, "slot_of")(physical_slot)
"""


@pytest.mark.xfail(strict=True, reason=(
    "design: the judge takes the sandbox's word on the learner's Python (its python_findings "
    "and Watch run in the learner's process, which can patch them); a verdict the sandbox "
    "cannot forge needs the finished answers kept out of the sandbox's file system view, or "
    "an observer outside the sandbox process"))
def test_a_sandbox_that_patches_its_watch_still_fails():
    from tests.test_grade_own_work import judged
    verdict = judged(PATCHES_ITS_WATCH, ".", ["slot_of"])["slot_of"]
    assert verdict["status"] == "failed", verdict


# -- (d) the timed gather's yardstick ----------------------------------------------------------
# (threads of this process, holding the GIL, stand for the sandbox's processes on the cores)
def _busy(stop):
    while not stop.is_set():
        sum(range(1000))


@pytest.mark.xfail(strict=True, reason=(
    "design: the per-token loop the timed gather is measured against runs in the judge by the "
    "wall clock, so work the sandbox starts beside it (busy only while the judge times it) "
    "lengthens it and the limit; timed in CPU time instead, right answers fail under the "
    "judge on a loaded machine (102-149% of the limit's yardstick on 2 busy cores, against "
    "24-41% now), as their call is timed by the wall clock, channel included. Sound: the "
    "sandbox's own CPU time, read from outside it (its cgroup or PID namespace), or the "
    "yardstick run while the learner's call runs"))
def test_the_timed_gathers_yardstick_is_not_lengthened_by_work_beside_it():
    tokens = 8 * checks_addressing.TIMED_TOKENS   # long enough to span many thread switches
    row = np.arange(tokens // checks_addressing.TIMED_PAGE_SIZE, dtype=np.int32)

    def yardstick():
        return checks_addressing._loop_seconds(row, checks_addressing.TIMED_PAGE_SIZE, tokens)
    quiet = min(yardstick(), yardstick())
    stop = threading.Event()
    busy = [threading.Thread(target=_busy, args=(stop,)) for _ in range(8)]
    for thread in busy:
        thread.start()
    try:
        loaded = yardstick()
    finally:
        stop.set()
        for thread in busy:
            thread.join()
    assert loaded < 1.6 * quiet, (quiet, loaded)
