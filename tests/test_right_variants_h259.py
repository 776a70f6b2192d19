"""Right answers the two watches of a workbook must let through.

gather_numpy (workbook 02) watches the cache through NumPy's conversions while the learner's
gather runs. A right gather failed there when it walked k_cache.base down to the array owning
the memory (each watched stand-in's .base was another stand-in: the walk never ended), and
when it printed the cache (NumPy's printing indexes every row counted from the end, -1 among
them: taken for the padding read as a page, and counted as a loop's indexing). Both pass
now, and the owner the walk finds keeps the watch. Right gathers written through helpers in
another module, classes, threads and recursion pass twice in a row, NumPy's names and the
learner's restored after each, also after a gather that raised. A stub's NotImplementedError
(report.run_cases) reads "not attempted" (or "part not written" after passing cases) when a
learner's class method or helper raises it, in the notebook and under the grader.
"""
import threading

import numpy as np
import pytest

from pagedattn_lab.grading.checks_addressing import _counted
from pagedattn_lab.grading.padding_reads import NUMPYS_OWN
from tests.check_helpers import PADDING, GoodAllocator, run_check
from tests.test_grade_protocol import remotely


def _owner(array):
    """The array owning `array`'s memory, found as a learner would (bounded here, so that
    a walk without end fails the case instead of hanging it)."""
    for _ in range(64):
        if array.base is None:
            return array
        array = array.base
    raise RuntimeError("k_cache.base never ends")


def _slots(block_table_row, seq_len, page_size):
    t = np.arange(seq_len)
    return np.asarray(block_table_row)[t // page_size] * page_size + t % page_size


def _gather_from_the_owner(k_cache, block_table_row, seq_len):
    flat = _owner(k_cache).reshape(-1, *k_cache.shape[2:])
    return flat[_slots(block_table_row, seq_len, k_cache.shape[1])]


def _pages_of_the_owner(k_cache, block_table_row, seq_len):
    """Follows the padding: the owner's page -1 is the cache's last page."""
    pages = _owner(k_cache)[block_table_row]
    return pages.reshape(-1, *k_cache.shape[2:])[:seq_len]


def test_a_gather_from_the_array_owning_the_cache_passes():
    result, printed = run_check("gather_numpy", _gather_from_the_owner)
    assert result.passed, printed


def test_a_gather_from_the_array_owning_the_cache_passes_under_the_grader():
    verdict = remotely("gather_numpy", _gather_from_the_owner, salt=259)["tasks"]["gather_numpy"]
    assert verdict["status"] == "passed", verdict


def test_the_owner_found_down_base_keeps_the_watch():
    result, printed = run_check("gather_numpy", _pages_of_the_owner)
    assert not result.passed and PADDING in result.cases[0].hint, printed


class _Unwatched(np.ndarray):
    """The cache as the check passes it (a view of its copy), without the watch."""


@pytest.mark.parametrize("convert", [   # (NumPy's names looked up while the watch is on)
    lambda k: k, lambda k: np.asarray(k), lambda k: np.array(k),
    lambda k: np.asfortranarray(k), lambda k: np.frombuffer(k.tobytes(), k.dtype)],
                         ids=["the cache", "np.asarray", "np.array", "np.asfortranarray",
                              "np.frombuffer of its bytes"])
def test_a_walk_down_base_is_as_long_as_numpys(convert):
    cache = np.arange(24, dtype=np.float32).reshape(4, 3, 2, 1)
    watched = _counted(cache.copy(), [0], [])

    def depth(array):
        steps = 0
        while getattr(array, "base", None) is not None:
            array, steps = array.base, steps + 1
            assert steps < 8, "a walk down .base without end"
        return steps

    with type(watched).during_call(test_a_walk_down_base_is_as_long_as_numpys):
        assert depth(convert(watched)) == depth(convert(cache.copy().view(_Unwatched)))


# -- a right gather that prints what it gets (NumPy's printing indexes rows from the end) ----

SHOWN = {"print(k_cache)": print, "repr": repr, "an f-string": lambda k: f"{k}",
         "np.array2string": lambda k: np.array2string(k),
         "np.asarray of it printed": lambda k: print(np.asarray(k)),
         "its transpose printed": lambda k: print(k.T)}


def _showing(show, gather):
    def gather_numpy(k_cache, block_table_row, seq_len):
        if seq_len < 1000:   # (the timed case would time the print too)
            show(k_cache)
            print(block_table_row, k_cache[0])   # (no indexing of the learner's: not counted)
        return gather(k_cache, block_table_row, seq_len)
    return gather_numpy


@pytest.mark.parametrize("show", SHOWN.values(), ids=SHOWN.keys())
def test_a_right_gather_that_prints_the_cache_passes(show, capsys):
    result, printed = run_check("gather_numpy", _showing(show, _through_a_class))
    assert result.passed, printed


def test_a_right_gather_that_prints_the_cache_passes_under_the_grader(capsys):
    fn = _showing(print, _through_a_class)
    verdict = remotely("gather_numpy", fn, salt=259)["tasks"]["gather_numpy"]
    assert verdict["status"] == "passed", verdict


def test_a_gather_through_the_padding_that_prints_the_cache_is_still_named(capsys):
    def through_the_padding(k_cache, block_table_row, seq_len):
        pages = k_cache[block_table_row]
        return pages.reshape(-1, *k_cache.shape[2:])[:seq_len]
    result, printed = run_check("gather_numpy", _showing(print, through_the_padding))
    assert not result.passed and PADDING in result.cases[0].hint, printed


# -- right gathers, as learners write them: each passes twice in a row ---------------------

HELPERS = {}
exec("from numpy import ascontiguousarray\n"          # noqa: S102 - a learner's module
     "def flat(k_cache):\n"
     "    return ascontiguousarray(k_cache).reshape(-1, *k_cache.shape[2:])\n", HELPERS)


def _through_a_helper_in_another_module(k_cache, block_table_row, seq_len):
    return HELPERS["flat"](k_cache)[_slots(block_table_row, seq_len, k_cache.shape[1])]


class _Gatherer:
    def __init__(self, k_cache):
        self.flat = np.asarray(k_cache).reshape(-1, *k_cache.shape[2:])

    def __call__(self, block_table_row, seq_len, page_size):
        return self.flat[_slots(block_table_row, seq_len, page_size)]


def _through_a_class(k_cache, block_table_row, seq_len):
    return _Gatherer(k_cache)(block_table_row, seq_len, k_cache.shape[1])


def _in_a_thread(k_cache, block_table_row, seq_len):
    got = []
    worker = threading.Thread(target=lambda: got.append(
        _through_a_class(k_cache, block_table_row, seq_len)))
    worker.start()
    worker.join()
    return got[0]


def _page_by_page(k_cache, block_table_row, seq_len):
    """Recursion over the used pages, joined once; the padding is never read. (Joined at
    every level, the copies grow with the square of the pages: 256 in the timed case, slow
    enough to fail the clock on a busy machine, as any quadratic gather may.)"""
    return np.concatenate(_pages(k_cache, block_table_row, seq_len))


def _pages(k_cache, block_table_row, seq_len):
    page_size = k_cache.shape[1]
    if seq_len <= page_size:
        return [np.array(k_cache[max(int(block_table_row[0]), 0), :seq_len])]
    return [np.array(k_cache[block_table_row[0]])] + \
        _pages(k_cache, block_table_row[1:], seq_len - page_size)


def _clamped_fortran_copy(k_cache, block_table_row, seq_len):
    pages = np.asfortranarray(k_cache)[np.maximum(block_table_row, 0)]
    return pages.reshape(-1, *k_cache.shape[2:])[:seq_len]


def _padding_dropped(k_cache, block_table_row, seq_len):
    row = np.array(block_table_row)
    return np.array(k_cache)[row[row >= 0]].reshape(-1, *k_cache.shape[2:])[:seq_len]


RIGHT = [_through_a_helper_in_another_module, _through_a_class, _in_a_thread, _page_by_page,
         _clamped_fortran_copy, _padding_dropped]


@pytest.mark.parametrize("gather", RIGHT, ids=[g.__name__.strip("_") for g in RIGHT])
def test_a_right_gather_passes_twice_and_numpy_is_its_own_again(gather):
    for _ in range(2):
        result, printed = run_check("gather_numpy", gather)
        assert result.passed, printed
        assert all(getattr(np, name) is own for name, own in NUMPYS_OWN.items())
        assert HELPERS["ascontiguousarray"] is NUMPYS_OWN["ascontiguousarray"]


# -- the stub, in a class method reached through the learner's own helper ---------------

class _Allocator(GoodAllocator):
    """A right allocator whose free() calls a helper that is still the stub."""

    def _release(self, pages) -> None:
        raise NotImplementedError("write this part, then run the check below")


class _NothingWritten(_Allocator):
    def allocate(self, n: int) -> list[int]:
        if n < 0:
            raise ValueError(f"n must be at least 0, got {n}")
        return self._taken(n)

    def _taken(self, n: int) -> list[int]:
        raise NotImplementedError   # (the learner's own "not yet")


PART = "part of the task is not written yet"


def test_a_stub_method_reached_through_a_helper_is_a_part_not_written():
    result, printed = run_check("allocator", _Allocator)
    assert result.status == "failed" and PART in printed, printed
    assert "raised NotImplementedError" not in printed, printed


def test_the_learners_own_raise_at_the_first_case_is_not_attempted():
    result, printed = run_check("allocator", _NothingWritten)
    assert result.status == "not attempted", printed


def test_the_same_stubs_under_the_grader():
    records = [remotely("allocator", cls, salt=259)["tasks"]["allocator"]
               for cls in (_Allocator, _NothingWritten)]
    assert records[0]["status"] == "failed" and PART in records[0]["summary"], records[0]
    assert records[1]["status"] == "not attempted", records[1]


def _raises_then_right(k_cache, block_table_row, seq_len):
    if not _raises_then_right.raised:
        _raises_then_right.raised = True
        raise IndexError("its own mistake, mended in the next run")
    return HELPERS["flat"](k_cache)[_slots(block_table_row, seq_len, k_cache.shape[1])]


def test_after_a_gather_that_raised_under_the_grader_numpy_is_its_own_and_the_next_passes():
    _raises_then_right.raised = False
    first = remotely("gather_numpy", _raises_then_right, salt=259)["tasks"]["gather_numpy"]
    assert first["status"] == "failed" and "IndexError" in first["summary"], first
    assert all(getattr(np, name) is own for name, own in NUMPYS_OWN.items())
    assert HELPERS["ascontiguousarray"] is NUMPYS_OWN["ascontiguousarray"]
    second = remotely("gather_numpy", _raises_then_right, salt=259)["tasks"]["gather_numpy"]
    assert second["status"] == "passed", second


def test_an_elementwise_copy_of_the_cache_wraps_as_numpy_1_calls_it():
    """NumPy 1.x calls __array_wrap__(array, context) and its ndarray's takes no
    return_scalar (pyproject allows numpy>=1.24): the watch's override must not pass one."""
    from pagedattn_lab.grading.padding_reads import PaddingWatch

    class OldNumpyBase(np.ndarray):
        def __array_wrap__(self, array, context=None):   # NumPy 1.x's signature
            return np.ndarray.__array_wrap__(self, array, context)

    class Watched(PaddingWatch, OldNumpyBase):
        pass

    cache = np.zeros((3, 2), np.float32).view(Watched)
    cache.watch([])
    out = cache.__array_wrap__(np.ones((3, 2), np.float32), None)
    assert out.shape == (3, 2)
