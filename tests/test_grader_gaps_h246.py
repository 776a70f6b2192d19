"""Helper 246: a gather through the row's -1 padding, written the ways learners write it, and
the one refusal of a prefix hit that caches nothing.

1. gather_numpy's watch saw the padding only where the cache itself, or a view of it with its
   pages still on the first axis, was indexed: a gather through np.asarray(k_cache) (or
   np.array, np.ascontiguousarray, .view(np.ndarray), np.take of it), through a transposed
   view (the pages on another axis), or through a copy (.copy(), np.copy, .astype) passed.
   NumPy's conversions keep the watch while the learner's gather runs (in the sandbox too),
   and are NumPy's own again after it. Reading page 0 in a padding entry's place follows no
   padding (the workbook now says so): it passes when those rows are cut (np.take's
   mode="clip" failed), and the next entry read that way is named.
2. KVCacheManager.admission_cost and admit refused a hit caching nothing in two wordings; both
   now say `hits[i]: page p caches no prefix; pass what cached_prefix returns`.
"""
import numpy as np
import pytest

from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.request import Request, SamplingParams
from tests.check_helpers import PADDING, assert_caught, run_check
from tests.test_grade_protocol import remotely
from tests.test_pool_states_h230 import pages_in_every_state

NEXT_ENTRY = "token t's page is entry t // page_size, not t // page_size + 1"


def _whole_row(prepare):
    """The gather of every entry of the row, padding included, from `prepare(k_cache)`,
    cut to seq_len."""
    def gather_numpy(k_cache, block_table_row, seq_len):
        num_kv_heads, head_dim = k_cache.shape[2:]
        return prepare(k_cache)[block_table_row].reshape(-1, num_kv_heads, head_dim)[:seq_len]
    return gather_numpy


def _pages_last(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    return k_cache.T[..., block_table_row].T.reshape(-1, num_kv_heads, head_dim)[:seq_len]


def _pages_second(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    tokens_first = k_cache.transpose(1, 0, 2, 3)
    return tokens_first[:, block_table_row].transpose(1, 0, 2, 3).reshape(
        -1, num_kv_heads, head_dim)[:seq_len]


def _taken_on_axis_1(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    return np.take(k_cache.transpose(1, 0, 2, 3), block_table_row, axis=1).transpose(
        1, 0, 2, 3).reshape(-1, num_kv_heads, head_dim)[:seq_len]


def _taken_from_asarray(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    return np.take(np.asarray(k_cache), block_table_row, axis=0).reshape(
        -1, num_kv_heads, head_dim)[:seq_len]


# (each conversion looked up when the learner's function runs, as its code does)
THROUGH_ASARRAY = _whole_row(lambda c: np.asarray(c))
READS_PADDING = [
    ("np.asarray", THROUGH_ASARRAY, "was indexed with -1"),
    ("np.array, no copy", _whole_row(lambda c: np.array(c, copy=None)),
     "was indexed with -1"),
    ("np.array, a copy", _whole_row(lambda c: np.array(object=c)), "was indexed with -1"),
    ("np.ascontiguousarray", _whole_row(lambda c: np.ascontiguousarray(c)),
     "was indexed with -1"),
    ("a view as np.ndarray", _whole_row(lambda c: c.view(np.ndarray)),
     "was indexed with -1"),
    ("np.take of np.asarray", _taken_from_asarray, "was indexed with -1"),
    ("pages on the last axis (.T)", _pages_last, "was indexed with -1"),
    ("pages on the second axis", _pages_second, "was indexed with -1"),
    ("np.take on axis 1 of a transposed view", _taken_on_axis_1, "was indexed with -1"),
    (".copy()", _whole_row(lambda c: c.copy()), "was indexed with -1"),
    ("np.copy", _whole_row(lambda c: np.copy(c)), "was indexed with -1"),
    (".astype", _whole_row(lambda c: c.astype(c.dtype)), "was indexed with -1"),
]


@pytest.mark.parametrize("name, fn, phrase", READS_PADDING, ids=[m[0] for m in READS_PADDING])
def test_a_gather_through_the_padding_of_a_view_or_copy_is_named(name, fn, phrase):
    result, printed = assert_caught("gather_numpy", fn, PADDING)
    failed = next(c for c in result.cases if not c.passed)
    assert phrase in failed.message, printed


@pytest.mark.parametrize("fn", [_pages_second, THROUGH_ASARRAY], ids=["transposed", "asarray"])
def test_a_gather_through_the_padding_fails_under_the_grader_too(fn):
    """The watch's page spacing crosses the sandbox with the cache, and the sandbox runs the
    learner's gather with NumPy's conversions keeping the watch, as the notebook does."""
    verdict = remotely("gather_numpy", fn, salt=246)["tasks"]["gather_numpy"]
    assert verdict["status"] == "failed" and PADDING in verdict["summary"], verdict


NUMPYS_OWN = {name: getattr(np, name)
              for name in ("asarray", "array", "ascontiguousarray", "asfortranarray")}


def _raises_inside(k_cache, block_table_row, seq_len):
    raise RuntimeError("the learner's own error")


@pytest.mark.parametrize("fn", [THROUGH_ASARRAY, _raises_inside], ids=["failed", "raised"])
def test_numpys_conversions_are_numpys_own_again_after_the_gather(fn):
    run_check("gather_numpy", fn)
    assert {name: getattr(np, name) for name in NUMPYS_OWN} == NUMPYS_OWN


def _clamped(pick_entries):
    """Page 0 read in each padding entry's place: the cache gathered for
    np.maximum(row, 0)[pick_entries(t, page_size)], token t at offset t % page_size."""
    def gather_numpy(k_cache, block_table_row, seq_len):
        num_pages, page_size, num_kv_heads, head_dim = k_cache.shape
        t = np.arange(seq_len)
        pages = np.maximum(np.asarray(block_table_row), 0)[pick_entries(t, page_size)]
        return k_cache.reshape(-1, num_kv_heads, head_dim)[pages * page_size + t % page_size]
    return gather_numpy


def test_page_0_read_for_the_next_entry_is_named():
    """Past the last page, the next entry is padding read as page 0: the rows are wrong."""
    assert_caught("gather_numpy", _clamped(lambda t, page_size: t // page_size + 1),
                  NEXT_ENTRY)


def _clamped_whole_row(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    pages = np.maximum(block_table_row, 0)
    return k_cache[pages].reshape(-1, num_kv_heads, head_dim)[:seq_len]


def _full_copy_slots(k_cache, block_table_row, seq_len):
    num_pages, page_size, num_kv_heads, head_dim = k_cache.shape
    t = np.arange(seq_len)
    slots = np.asarray(block_table_row)[t // page_size] * page_size + t % page_size
    return np.array(k_cache).reshape(-1, num_kv_heads, head_dim)[slots]


def _transposed_used_pages(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    used = block_table_row[:-(-seq_len // k_cache.shape[1])]
    return k_cache.transpose(1, 0, 2, 3)[:, used].transpose(1, 0, 2, 3).reshape(
        -1, num_kv_heads, head_dim)[:seq_len]


def _dims_from_the_end(k_cache, block_table_row, seq_len):
    num_pages, page_size, num_kv_heads, head_dim = k_cache.shape
    t = np.arange(seq_len)
    slots = np.asarray(block_table_row)[t // page_size] * page_size + t % page_size
    flat = k_cache.copy().reshape(-1, num_kv_heads, head_dim)
    return flat[slots][..., np.arange(-head_dim, 0)]


def _clipped_take(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    return np.take(k_cache, block_table_row, axis=0, mode="clip").reshape(
        -1, num_kv_heads, head_dim)[:seq_len]


def test_np_take_that_clips_the_padding_to_page_0_passes():
    """mode="clip" reads page 0 for -1 (NumPy wraps nothing): it failed as a padding read."""
    result, printed = run_check("gather_numpy", _clipped_take)
    assert result.passed, printed


RIGHT_GATHERS = [
    ("page 0 read for the padding, cut", _clamped_whole_row),
    ("page 0 read for the padding, token by token", _clamped(lambda t, ps: t // ps)),
    ("a full copy, then the slots", _full_copy_slots),
    ("a transposed view of the used pages", _transposed_used_pages),
    ("the dims counted from the end", _dims_from_the_end),
]


@pytest.mark.parametrize("name, fn", RIGHT_GATHERS, ids=[m[0] for m in RIGHT_GATHERS])
def test_right_gathers_that_follow_no_padding_pass(name, fn):
    result, printed = run_check("gather_numpy", fn)
    assert result.passed, printed


# -- 2. one refusal of a hit caching nothing, from both entry points --------------------------

@pytest.mark.parametrize("hits, index, page", [([1], 0, 1), ([0, 3], 1, 3)])
def test_admission_cost_and_admit_refuse_a_hit_caching_nothing_in_the_same_words(
        hits, index, page):
    kv = KVCacheManager(5, 1)
    kv.pool = pages_in_every_state()
    words = rf"^hits\[{index}\]: page {page} caches no prefix; pass what cached_prefix returns$"
    with pytest.raises(ValueError, match=words):
        kv.admission_cost(hits, len(hits), 1)
    req = Request(7, [0, 5, 6], SamplingParams())
    with pytest.raises(ValueError, match=words):
        kv.admit(req, hits, len(hits), 1)
    assert req.pages == [] and req.num_computed_tokens == 0
