"""A read just before an array argument in an instrumented launch (helper 212).

An array argument ends against its guard page, so the bytes before its first element, in the
same page (launch.py's slack), hold the fill's NaN or -1 and no guard: a plain launch's
`x[i - 1]` at i = 0 reads NaN there unstopped (tests/test_cpu_state_hunt182.py). A counted or
race-checked launch sees every read (instrument.cpp's on_access) and now fails it as the
guard page's fault of a read past the end is reported: the argument, the negative element,
the thread and the block. So do the grader's checks, whose CPU launches are race-checked.
"""
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, RawKernel
from pagedattn_lab.grading.faults import buffer_hint
from tests.check_helpers import mutate, run_check, solution_source
from tests.test_cpu_executor_bugs import _SHIFTED
from tests.test_cpu_memory_checks_hunt159 import _BEFORE_START

# A 16-byte load (4 floats, memcpy'd) from element `start`: at -2 it starts before the array
# and ends inside it.
_WIDE_READ = r"""
extern "C" __global__ void wide_read(const float* a, float* out, int start)
{
    float4 v;
    memcpy(&v, a + start + 4 * (int)threadIdx.x, sizeof v);
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}
"""

INSTRUMENTED = [pytest.param(dict(count=True), id="counted"),
                pytest.param(dict(racecheck=True), id="race-checked")]


# (source, kernel, its array argument 0 and that one's type, its launch's other arguments):
# `x[i - 1] += 1.0f` and `out[i] = a[i + shift]` with shift -1, a signed i, at thread 0
MINUS_ONE = [
    pytest.param(_BEFORE_START, "before_start", "x", "float*", (np.int32(0),),
                 id="x[i - 1] += 1"),
    pytest.param(_SHIFTED, "read_at", "a", "const float*",
                 (np.zeros(4, np.float32), np.int32(-1)), id="a[i - 1]"),
]


@pytest.mark.parametrize("how", INSTRUMENTED)
@pytest.mark.parametrize("source, name, array, ctype, rest", MINUS_ONE)
def test_a_read_of_element_minus_one_names_the_argument_and_the_thread(how, source, name, array,
                                                                      ctype, rest):
    """Before: the read got the slack's NaN unstopped (and `+= 1` was refused at its write,
    after the read)."""
    x = np.zeros(100, np.float32)
    with pytest.raises(KernelFault) as info:
        RawKernel(source, name)._launch((1,), (4,), (x, *rest), **how)
    e = info.value
    assert (e.buffer, e.index, e.access, e.region) == (array, -1, "read", "argument"), str(e)
    assert (e.thread, e.block) == ((0, 0, 0), (0, 0, 0)), str(e)
    assert f"out-of-bounds read of {array!r} (argument 0, {ctype}): element -1" in str(e), str(e)
    assert "by thread (0,0,0) of block (0,0,0)" in str(e), str(e)
    assert not x.any() and not any(r.any() for r in rest if isinstance(r, np.ndarray))


@pytest.mark.parametrize("how", INSTRUMENTED)
def test_a_load_that_starts_before_the_array_and_ends_inside_it_is_refused(how):
    """A 16-byte load at a[-2] of a float array: its first byte has no owner, its last ones
    are a[0] and a[1]."""
    kern = RawKernel(_WIDE_READ, "wide_read")
    a, out = np.arange(1, 101, dtype=np.float32), np.zeros(4, np.float32)
    kern._launch((1,), (4,), (a, out, np.int32(0)), **how)   # honest: elements 0..15
    assert out.tolist() == [10.0, 26.0, 42.0, 58.0]
    with pytest.raises(KernelFault) as info:
        kern._launch((1,), (4,), (a, out, np.int32(-2)), **how)
    e = info.value
    assert (e.buffer, e.index, e.access, e.thread) == ("a", -2, "read", (0, 0, 0)), str(e)


# A learner's page index one too low: token 0 of sequence 0 reads block_tables[-1]. Before:
# the slack's -1 was taken for a page id, and the check reported NaN values with a hint about
# the softmax (naive) or the slot (gather), or a read of k_cache[-512] where page -1's slots
# reached k_cache's guard.
PAGE_ONE_LOW = [
    ("gather_kernel", "02_page_access.ipynb", "SOURCE_GATHER",
     ("block_tables[b * max_pages + t / page_size]",
      "block_tables[b * max_pages + t / page_size - 1]")),
    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE",
     ("table[j / page_size]", "table[j / page_size - 1]")),
]


@pytest.mark.parametrize("task, notebook, variable, edit", PAGE_ONE_LOW,
                         ids=[m[0] for m in PAGE_ONE_LOW])
def test_the_check_names_the_read_of_block_table_entry_minus_one(task, notebook, variable, edit):
    source = mutate(solution_source(notebook, variable), [edit])
    result, printed = run_check(task, source, device="cpu")
    assert result.status == "failed", printed
    first = next(c for c in result.cases if not c.passed)
    assert "out-of-bounds read of block_tables[-1]" in first.message, printed
    assert "by thread (0, 0, 0) of block (0, 0, 0)" in first.message, printed
    assert "before the table's start" in first.hint, printed


@pytest.mark.parametrize("buffer, phrase", [("q", "before q's start"),
                                            ("out", "before out's start"),
                                            ("block_tables", "before the table's start")])
def test_a_hint_for_an_index_below_zero_says_before_the_start_not_past_the_end(buffer, phrase):
    """Their hints told of an index past the end (past max_len, past the sequence's row),
    which element -1, now caught where it is read, is not."""
    assert phrase in buffer_hint(buffer, -1) and "past" not in buffer_hint(buffer, -1)
    assert phrase not in buffer_hint(buffer, 5)
    assert buffer_hint("seq_lens", -1) == buffer_hint("seq_lens", 5)   # (the batch index)
