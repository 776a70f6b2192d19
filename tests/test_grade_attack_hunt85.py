"""The grader attacked from the learner's side (hunt 85).

A kernel source is text the judge reads with regular expressions before any time limit runs
(own_work.kernel_findings, the lint) and inside a case (source_barriers): a pattern that
backtracks over a long source, or macros that expand into each other, kept the judge busy
for hours or filled its memory. A learner's exception only named like the CPU executor's,
with attributes of its choosing, made the check's own code raise (a traceback in the
learner's face, "the check could not run" under the judge). An answer holding an array of
Python objects left the sandbox unanswered (ProtocolError): the judge waited out its time
limit and refused every later check of the notebook. The grade table let C1 and Unicode
format controls of a learner's message through to the instructor's terminal.
"""
import contextlib
import io
import time

import numpy as np
import pytest

from pagedattn_lab import check
from pagedattn_lab.grading import kernel_lint, own_work, table
from pagedattn_lab.grading.report import Mismatch
from pagedattn_lab.grading.source_barriers import barrier_before_loads
from tests.test_grade_protocol import remotely

KERNEL = 'extern "C" __global__ void tc_tile_scores() { load_matrix_sync(a); }\n'


def _seconds(fn, *args):
    started = time.monotonic()
    with contextlib.suppress(Mismatch):
        fn(*args)
    return time.monotonic() - started


def test_blank_lines_and_open_includes_are_read_in_linear_time():
    """The include pattern's \\s* ran over every blank line from each line start: 25 s for
    64 KiB of newlines, hours for the 8 MiB a frame may carry, before any time limit."""
    blank = "__global__\n" + "\n" * (30 << 10)
    unclosed = "__global__\n" + "#include <a\n" * 2500
    assert _seconds(own_work.kernel_findings, [blank], {}) < 1.0
    assert _seconds(own_work.kernel_findings, [unclosed], {}) < 1.0
    assert own_work.kernel_findings(['__global__\n  #  include "decode.cu"\n'], {})


def test_the_lint_reads_repeated_declarations_in_linear_time():
    """Two lazy gaps in one pattern: 21 s for 8.8 KiB of `extern "C" __global__`, cubic."""
    source = 'extern "C" __global__ ' * 400 + ";k("
    assert _seconds(kernel_lint.lint, source, "k") < 1.0
    with pytest.raises(Mismatch, match="not declared extern"):
        kernel_lint.lint(source, "k")
    kernel_lint.lint('extern "C"\n__global__ void k(float *x) {}', "k")   # no Mismatch
    with pytest.raises(Mismatch, match="not declared extern"):
        kernel_lint.lint('extern "C" __global__ void g(); void k() {}', "k")


def test_a_source_longer_than_a_check_reads_fails_under_the_judge_at_once():
    """1 MiB of blank lines kept the judge in kernel_findings for hours (the notebook's time
    limit passed, and every task of the notebook read "the grader's judge failed")."""
    source = 'extern "C" __global__ void naive_kernel() {}' + "\n" * (1 << 20)
    started = time.monotonic()
    report = remotely("naive_kernel", source, device="cpu")["tasks"]["naive_kernel"]
    assert time.monotonic() - started < 20
    assert report["status"] == "failed"
    assert f"{len(source)} characters long" in report["summary"], report


def test_macros_that_expand_into_each_other_fail_the_barrier_case_at_once():
    """Each #define naming the next twice doubled the text per step: 9 s for 500 characters
    (22 defines), hours and gigabytes of the judge's memory for 40; the real preprocessor
    never expands them (`#ifdef` only names the first)."""
    defines = "".join(f"#define M{i} M{i + 1} M{i + 1}\n" for i in range(22))
    with pytest.raises(Mismatch, match="more than 1048576 characters"):
        barrier_before_loads(defines + "#ifdef M0\n#endif\n" + KERNEL, "tc_tile_scores")
    helpers = "void f() {" + " g();" * 2000 + " }\nvoid g() {" + " h();" * 2000 + " }\n"
    with pytest.raises(Mismatch, match="more than"):
        barrier_before_loads(helpers + KERNEL.replace("{ ", "{ f(); "), "tc_tile_scores")


def test_nested_function_heads_are_matched_in_one_pass():
    """Each head's braces were counted from the head again: 100 s for 32 KiB of `f(){`."""
    assert _seconds(barrier_before_loads, KERNEL + "f(){" * 3000, "tc_tile_scores") < 1.0


class KernelFault(Exception):   # the learner's own class, named like the executor's
    def __init__(self, message):
        super().__init__(message)
        self.thread, self.buffer = ("x",), "q"   # (instance attributes cross the channel)


def _raises_a_fault(seq_len, page_size):
    raise KernelFault("boom")


def test_an_exception_named_like_the_executors_is_reported_not_raised():
    with contextlib.redirect_stdout(io.StringIO()):
        result = check.pages_needed(_raises_a_fault)
    assert not result.passed
    assert "raised KernelFault: boom" in result.summary


def test_under_the_judge_it_fails_the_task_with_a_message():
    report = remotely("pages_needed", _raises_a_fault)
    assert report["tasks"]["pages_needed"]["status"] == "failed"
    assert "raised KernelFault: boom" in report["tasks"]["pages_needed"]["summary"]
    assert not report["learner_errors"], report


@pytest.mark.parametrize("control", ["\x9b2K\x9b1A", "\u202e", "\u2066", "\u200b", "\x85",
                                     "\u2028", "\u2029"])
def test_the_table_drops_c1_and_unicode_format_controls(control):
    row = table.Row("nb.ipynb", "serve", "fail", f"wrong{control}PASS")
    assert control not in table.to_markdown([row]) + table.to_csv([row])


@pytest.mark.parametrize("value", [np.array([10**20, 1]), np.zeros(2, dtype=[("a", "f4")]),
                                   np.dtype(object)], ids=["objects", "records", "dtype"])
def test_an_answer_that_cannot_cross_fails_its_task_and_keeps_the_conversation(value):
    """An object array (a Python int past int64 makes one) raised ProtocolError in the
    sandbox's serve, which let it out unanswered: a traceback in the notebook's cell, the
    judge waiting for the answer until its time limit, every later check refused."""
    report = remotely("pages_needed", lambda seq_len, page_size: value)
    assert not report["learner_errors"], report
    assert report["broken"] is None
    result = report["tasks"]["pages_needed"]
    assert result["status"] == "failed"
    assert "may not cross: only arrays of numbers" in result["summary"], result
