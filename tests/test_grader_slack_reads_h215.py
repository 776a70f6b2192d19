"""A read just before an array that the grader's race-checked launch stopped (helper 215).

The CPU executor's instrumented launches stop a read in the slack before an array argument
(`k_cache[-48]` from a page id of -1) with its thread (test_cpu_slack_read_h212.py). The
grader's kernel checks then lost the hints they read off the outputs, which name the mistake
behind the read: each case's message was the fault's, with the generic "page -1" hint. Now
the launch is rerun plain, the outputs' hint comes back when it names a mistake, and the
fault's account stays in the message (grading/slack_reads.py); where the outputs name none,
or are right, the fault is the verdict.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, RawKernel
from pagedattn_lab.grading import slack_reads
from pagedattn_lab.grading.report import NotAttempted
from pagedattn_lab.grading.time_limits import CaseTimeout
from tests.check_helpers import mutate, run_check, solution_source
from tests.test_cpu_executor_bugs import _SHIFTED
from tests.test_grader_hunt93 import _judged

GATHER = ("02_page_access.ipynb", "SOURCE_GATHER")
NAIVE = ("04_naive_kernel.ipynb", "SOURCE_NAIVE")
TILED = ("05_tiled_kernel.ipynb", "SOURCE_TILED")
ROWS_APART = [("block_tables + (long long)b * max_pages;",
               "block_tables + (long long)b * ((max_len + page_size - 1) / page_size);")]
NAIVE_GUARD = ("    if (t >= seq_lens[b]) {                          // padding row: zeros\n"
               "        for (int d = 0; d < head_dim; ++d) out[row + d] = 0.0f;\n"
               "        return;\n"
               "    }\n")
FIRST_READ = "The checked launch stopped at an out-of-bounds read of k_cache[-"

# (task, solution, edits, the hint's phrase as the check gave it before reads there stopped):
# the same wrong kernels as the tests that hold those hints (so no build of their own)
MISTAKES = [
    pytest.param("gather_kernel", GATHER, [("if (t >= seq_lens[b]) {", "if (false) {")],
                 "past the sequence's end", id="gather-no length guard"),
    pytest.param("naive_kernel", NAIVE, ROWS_APART, "look at what depends on b",
                 id="naive-table rows max_len / page_size apart"),
    pytest.param("tiled_kernel", TILED, ROWS_APART, "look at what depends on b",
                 id="tiled-table rows max_len / page_size apart"),
    pytest.param("gather_kernel", GATHER, [("if (t >= seq_lens[b])", "if (t >= seq_lens[0])")],
                 "rows below seq_lens[0]", id="gather-seq_lens[0] for every sequence"),
    pytest.param("naive_kernel", NAIVE, [("if (t >= seq_lens[b])", "if (t >= seq_lens[0])")],
                 "rows below seq_lens[0]", id="naive-seq_lens[0] for every sequence"),
    pytest.param("naive_kernel", NAIVE,
                 [("table[j / page_size] * page_size + j % page_size",
                   "table[j % page_size] * page_size + j / page_size")],
                 "swaps / and %", id="naive-page and offset swapped"),
    pytest.param("naive_kernel", NAIVE, [(NAIVE_GUARD, "")],
                 "over keys past the end (unused slots, -1 padding) or over none (0/0)",
                 id="naive-padding rows computed causally"),
]


@pytest.mark.parametrize("task, solution, edits, phrase", MISTAKES)
def test_the_outputs_hint_comes_back_with_the_stopped_read_in_the_message(task, solution,
                                                                         edits, phrase):
    """Before: the message was the fault's alone, and the hint the generic one of a page id
    of -1 ("a negative index into the cache")."""
    result, printed = run_check(task, mutate(solution_source(*solution), edits), device="cpu")
    first = next(c for c in result.cases if not c.passed)
    assert phrase in " ".join(first.hint.split()), printed
    assert "negative index into the cache" not in first.hint, printed
    assert " of them are a NaN" in first.message, printed   # (the outputs' account)
    assert FIRST_READ in first.message and "by thread (" in first.message, printed


# A read of seq_lens[-1] (sequence 0's b - 1) times a zero the compiler cannot see: the
# outputs are right in a plain launch, where that element is the fill's -1. (The naive
# kernel's check makes no counted launch, which would stop the read on its own.)
ZERO_WEIGHTED = [("if (t >= seq_lens[b]) {",
                  "if (t >= seq_lens[b] + seq_lens[b - 1] * (int)(blockIdx.z >= gridDim.z)) {")]


def test_a_read_before_an_array_fails_even_where_the_outputs_are_right():
    """Before: the rerun's right outputs passed every case."""
    source = mutate(solution_source(*NAIVE), ZERO_WEIGHTED)
    result, printed = run_check("naive_kernel", source, device="cpu")
    assert result.status == "failed", printed
    first = next(c for c in result.cases if not c.passed)
    assert first.message.startswith("out-of-bounds read of seq_lens[-1] (it has "), printed
    assert "of block (" in first.message and "seq_lens has one entry" in first.hint, printed


@pytest.mark.parametrize("shift, slack", [(-1, True), (-2000, False), (4, False)],
                         ids=["element -1: the slack", "element -2000: the guard before",
                              "past the end: the guard after"])
def test_a_fault_says_whether_it_was_stopped_in_the_slack(shift, slack):
    """The grader reruns only a read stopped in the slack (100 floats: 3696 bytes of it), not
    one that reached a guard page, which a plain launch would stop too. Before: no fault
    said which."""
    a, out = np.zeros(100, np.float32), np.zeros(4, np.float32)
    kern = RawKernel(_SHIFTED, "read_at")
    with pytest.raises(KernelFault) as info:
        kern._launch((1,), (4,), (a, out, np.int32(shift + 96 * (shift > 0))), racecheck=True)
    assert info.value.buffer == "a" and info.value.slack is slack, \
        str(info.value)


def test_under_the_grader_the_hint_and_the_stopped_read_both_come_back():
    """The judge's kernels launch in the kernel host (kernel_host.py): the fault crosses the
    channel, and the judge asks for the plain rerun."""
    source = mutate(solution_source(*GATHER), [("if (t >= seq_lens[b])",
                                                "if (t >= seq_lens[0])")])
    tasks = _judged([("gather_kernel", (source,), {"device": "cpu"})], ["gather_kernel"])
    summary = " ".join(tasks["gather_kernel"]["summary"].split())
    assert tasks["gather_kernel"]["status"] == "failed", tasks
    assert "rows below seq_lens[0]" in summary and FIRST_READ in summary, tasks


def test_a_probes_stopped_read_is_not_the_cases():
    """A probe (report.probe) launches the kernel on a problem of its own: its stopped read
    says nothing of the case's launch, whose outputs were right here."""
    fault = KernelFault("kernel 'k': out-of-bounds read", kernel="k", thread=(0, 0, 0),
                        block=(0, 0, 0), access="read", slack=True, region="argument",
                        buffer="a", arg_index=0, index=-1, size=4)

    def probed():
        with slack_reads.probing():
            slack_reads.seen(fault)

    slack_reads.run_case(probed)
    with pytest.raises(KernelFault):
        slack_reads.run_case(lambda: slack_reads.seen(fault))


@pytest.mark.parametrize("ending", [CaseTimeout, NotImplementedError, NotAttempted])
def test_a_case_ended_early_leaves_no_stopped_read_behind(ending):
    """A case that ends in its time limit or an unwritten part, after a launch read before an
    array, takes its stopped read with it: a later question outside a case (`pending`) would
    otherwise see it and take fill NaN for no evidence."""
    fault = KernelFault("kernel 'k': out-of-bounds read", kernel="k", thread=(0, 0, 0),
                        block=(0, 0, 0), access="read", slack=True, region="argument",
                        buffer="a", arg_index=0, index=-1, size=4)

    def read_then_end():
        slack_reads.seen(fault)
        raise ending("ended")

    with pytest.raises(ending):
        slack_reads.run_case(read_then_end)
    assert not slack_reads.pending()
