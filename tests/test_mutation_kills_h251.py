"""Mutants of gather_numpy's padding watch (grading/padding_reads.py), of the check's use of
it and of the sandbox's call context (remote._call_context) that no test killed now fail:
the failure's words name the row's padding entries and the lowest index; a copy of a gather's
result or a join on another axis is not watched; each level of a watched .tolist() that
crosses pages is; a copy's page spacing, the tie of an axis exactly a page long, a boolean
mask's axes and an axis NumPy refuses are read as NumPy reads them; the learner's side runs
a call with NumPy's conversions keeping the watch of any array argument. The check's calls:
each gets a copy of the cache, new values and a new row (work kept from the first call fails),
and a result made into an array only when asked is timed as made."""
import socket

import numpy as np
import pytest

from pagedattn_lab.grading import remote
from pagedattn_lab.grading.channel import Channel
from pagedattn_lab.grading.checks_addressing import _counted
from pagedattn_lab.grading.padding_reads import CONVERSIONS, joined_in_order
from pagedattn_lab.grading.page_indices import copy_page_bytes, lowest_page_index, lowest_taken
from tests.check_helpers import PADDING, assert_caught, run_check


def _whole_row(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    return k_cache[block_table_row].reshape(-1, num_kv_heads, head_dim)[:seq_len]


def test_the_failure_names_the_rows_padding_entries_and_its_pages():
    result, printed = assert_caught("gather_numpy", _whole_row, PADDING)
    first = result.cases[0]   # 14 tokens in pages of 4: entries 0-3 pages, 4-6 padding
    assert not first.passed, printed
    assert "(entries 4-6, -1)" in first.message, printed
    assert "the row's first 4 entries" in printed, printed
    one_padding = next(c for c in result.cases[1:] if not c.passed)
    assert "(entry " in one_padding.message, printed


def _indexes_its_own_copy_from_the_end(k_cache, block_table_row, seq_len):
    """A right gather: the used pages copied out, then read back by negative positions in
    that copy (which holds no padding)."""
    num_kv_heads, head_dim = k_cache.shape[2:]
    n_used = -(-seq_len // k_cache.shape[1])
    used = k_cache[block_table_row[:n_used]]
    return used[np.arange(-n_used, 0)].reshape(-1, num_kv_heads, head_dim)[:seq_len]


def test_a_copy_the_gather_made_is_not_watched():
    result, printed = run_check("gather_numpy", _indexes_its_own_copy_from_the_end)
    assert result.status == "passed", printed


def _from_a_tokens_first_list(k_cache, block_table_row, seq_len):
    """Each entry's page read from the inner level of a tokens-first .tolist()."""
    num_kv_heads, head_dim = k_cache.shape[2:]
    tokens = k_cache.transpose(1, 0, 2, 3).tolist()
    pages = [[token[p] for token in tokens] for p in block_table_row]
    return np.array(pages, dtype=k_cache.dtype).reshape(-1, num_kv_heads, head_dim)[:seq_len]


def test_the_padding_read_from_an_inner_level_of_tolist_is_named():
    assert_caught("gather_numpy", _from_a_tokens_first_list, PADDING)


def test_a_join_on_another_axis_is_not_taken_for_a_copy_in_order():
    cache = _counted(np.zeros((4, 2, 1, 1), np.float32), [0], [])
    assert joined_in_order(np.stack, (cache, 1), {}) is None
    assert joined_in_order(np.concatenate, (cache,), {"axis": 1}) is None
    assert joined_in_order(np.concatenate, (cache,), {"axis": 0}) is cache


# 6 pages of 2 float32 (8 bytes apart), seen as 3 pairs of pages: both outer axes cross pages
PAIRS = dict(shape=(3, 2, 2), strides=(16, 8, 4), page_bytes=8)


def test_a_copys_pages_lie_as_far_apart_as_its_innermost_axis_crossing_them_says():
    assert copy_page_bytes(PAIRS["shape"], PAIRS["strides"], 8, (16, 8, 4)) == 8
    # the cache's slots flattened (24 of 2 heads x 4 dims, 4 slots a page): pages 128 bytes
    assert copy_page_bytes((24, 2, 4), (32, 16, 4), 128, (32, 16, 4)) == 128


def test_the_lowest_of_two_negative_page_indices_is_kept():
    assert lowest_page_index((-1, -2), **PAIRS) == -2


def test_an_axis_exactly_a_page_long_crosses_pages():
    assert lowest_page_index(-1, (2,), (8,), 8) == -1
    assert lowest_taken(-1, None, (2,), (8,), 8) == -1


def test_a_boolean_masks_axes_are_all_counted_before_the_page_axis():
    # pages last (the cache transposed): heads x dims masked, then a token, then a page
    shape, strides = (4, 2, 2, 6), (4, 16, 32, 64)
    mask = np.ones((4, 2), bool)
    assert lowest_page_index((mask, 0, -1), shape, strides, 64) == -1


def test_the_watch_leaves_numpys_refusal_of_an_axis_to_numpy():
    cache = _counted(np.zeros((4, 2, 1, 1), np.float32), [0], [])
    with pytest.raises(np.exceptions.AxisError):
        cache.take([0], axis=4)


NUMPYS_OWN = {name: getattr(np, name) for name in CONVERSIONS}


def _learners_side_call(*args):
    """Whether NumPy's conversions were replaced while the learner's side ran a call with
    `args` (what the sandbox's Peer does with a request from the grader)."""
    ours, theirs = socket.socketpair()
    peer = remote.Peer(Channel(ours), strict=False)
    seen = []

    def learner(*_):
        seen.append({name: getattr(np, name) for name in CONVERSIONS} != NUMPYS_OWN)
    try:
        peer._run("call", learner, None, {"args": list(args)}, {})
    finally:
        ours.close()
        theirs.close()
    return seen[0]


def test_the_learners_side_runs_a_call_with_the_cache_keeping_its_watch():
    cache = _counted(np.zeros((4, 2, 1, 1), np.float32), [0], [])
    assert _learners_side_call(cache, np.zeros(3, np.int32), 3)
    assert _learners_side_call(np.zeros(3, np.int32), cache)
    assert not _learners_side_call(np.zeros(3, np.int32), 3)
    assert {name: getattr(np, name) for name in CONVERSIONS} == NUMPYS_OWN


def test_a_watched_0d_view_lists_as_its_value():
    cache = _counted(np.ones((4, 2, 1, 1), np.float32), [0], [])
    assert cache[0, 0, 0, 0, ...].tolist() == 1.0


def _right_slots(k_cache, block_table_row, seq_len):
    page_size = k_cache.shape[1]
    t = np.arange(seq_len)
    return np.asarray(block_table_row)[t // page_size] * page_size + t % page_size


def _flat_cache(k_cache):
    return k_cache.reshape(-1, *k_cache.shape[2:])


class _Lazy:
    """A right gather's result whose array is made only when asked for."""

    def __init__(self, make):
        self.make = make

    def __array__(self, dtype=None, copy=None):
        return self.make()


def _lazily(k_cache, block_table_row, seq_len):
    slots = _right_slots(k_cache, block_table_row, seq_len)
    return _Lazy(lambda: _flat_cache(k_cache)[slots])


def test_a_result_made_into_an_array_only_when_asked_is_timed_as_made_and_passes():
    result, printed = run_check("gather_numpy", _lazily)
    assert result.status == "passed", printed


def _slots_kept_per_length():
    """A per-token loop whose slots are kept for the next call of the same seq_len."""
    kept = {}

    def gather_numpy(k_cache, block_table_row, seq_len):
        page_size = k_cache.shape[1]
        if (seq_len, page_size) not in kept:
            row = block_table_row.tolist()   # (a list: its reads are not counted)
            kept[seq_len, page_size] = np.array([row[t // page_size] * page_size +
                                                 t % page_size for t in range(seq_len)], int)
        return _flat_cache(k_cache)[kept[seq_len, page_size]]
    return gather_numpy


def _cache_kept_per_shape():
    """The cache copied element by element (through Python floats), the copy kept for the
    next call with a cache of the same shape; the slots computed at once."""
    kept = {}

    def gather_numpy(k_cache, block_table_row, seq_len):
        if k_cache.shape not in kept:
            kept[k_cache.shape] = np.array(k_cache.tolist(), dtype=k_cache.dtype)
        return _flat_cache(kept[k_cache.shape])[_right_slots(k_cache, block_table_row, seq_len)]
    return gather_numpy


@pytest.mark.parametrize("make", [_slots_kept_per_length, _cache_kept_per_shape],
                         ids=["slots", "cache"])
def test_a_per_token_loop_that_keeps_its_first_calls_work_fails(make):
    result, printed = run_check("gather_numpy", make())
    assert result.status == "failed", printed


def _zeroes_the_cache(k_cache, block_table_row, seq_len):
    out = _flat_cache(k_cache)[_right_slots(k_cache, block_table_row, seq_len)]
    k_cache[...] = 0
    return out


def test_a_gather_that_writes_into_the_cache_fails():
    result, printed = run_check("gather_numpy", _zeroes_the_cache)
    assert result.status == "failed" and "k_cache" in printed, printed
