"""gather_numpy's padding watch follows the cache into the copies a learner plausibly makes.

A gather that used the row's -1 padding as a page id passed when it indexed a copy of the
cache made by .flatten(), by a ravel or a reshape that copies, by an elementwise ufunc over it
(k_cache + 0, k_cache * 1.0, np.add), by np.concatenate of it, or a list of its .tolist() (a
list's -1 is its last page as well): each now fails on the padding. The right gathers (a loop
over the used pages, the padding clamped to page 0 by np.where, np.clip or np.maximum and its
rows cut, any copy indexed by the right slots, torch.from_numpy) still pass.
"""
import numpy as np
import pytest
import torch

from pagedattn_lab.grading.page_indices import copy_page_bytes, c_strides, watched_levels
from tests.check_helpers import PADDING, assert_caught, run_check
from tests.test_grade_protocol import remotely


def _every_entrys_slots(k_cache, block_table_row):
    """The slots of every entry of the row, padding included (-1 gives -page_size..-1)."""
    page_size = k_cache.shape[1]
    return (np.asarray(block_table_row)[:, None] * page_size + np.arange(page_size)).reshape(-1)


def _tokens_of(copy_of):
    """The gather of every entry's slots from `copy_of(k_cache)`, a [slots, heads, dims] array,
    cut to seq_len."""
    def gather_numpy(k_cache, block_table_row, seq_len):
        return copy_of(k_cache)[_every_entrys_slots(k_cache, block_table_row)][:seq_len]
    return gather_numpy


def _pages_of(copy_of):
    """The gather of every entry's page from `copy_of(k_cache)`, in the cache's shape, cut."""
    def gather_numpy(k_cache, block_table_row, seq_len):
        num_kv_heads, head_dim = k_cache.shape[2:]
        return copy_of(k_cache)[block_table_row].reshape(-1, num_kv_heads, head_dim)[:seq_len]
    return gather_numpy


def _head_by_head(one_head_copy):
    """Each kv head gathered from `one_head_copy(k_cache[:, :, h])` (a copy: the head's
    view is not contiguous), a [slots, head_dim] array, by every entry's slots."""
    def gather_numpy(k_cache, block_table_row, seq_len):
        slots = _every_entrys_slots(k_cache, block_table_row)
        heads = [one_head_copy(k_cache[:, :, h])[slots] for h in range(k_cache.shape[2])]
        return np.stack(heads, axis=1)[:seq_len]
    return gather_numpy


def _from_the_list(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    pages = k_cache.tolist()
    return np.array([pages[p] for p in block_table_row], dtype=k_cache.dtype).reshape(
        -1, num_kv_heads, head_dim)[:seq_len]


def _flat(k_cache):
    return k_cache.reshape(-1, *k_cache.shape[2:])


ESCAPES = [
    (".flatten()", _tokens_of(lambda c: c.flatten().reshape(-1, *c.shape[2:]))),
    ("np.ravel of a head's view (a copy)",
     _head_by_head(lambda head: np.ravel(head).reshape(-1, head.shape[-1]))),
    ("a reshape of a head's view that copies",
     _head_by_head(lambda head: head.reshape(-1).reshape(-1, head.shape[-1]))),
    ("k_cache + 0", _pages_of(lambda c: c + 0)),
    ("k_cache * 1.0", _pages_of(lambda c: c * 1.0)),
    ("np.add(k_cache, 0)", _pages_of(lambda c: np.add(c, 0))),
    ("np.concatenate(k_cache)", _tokens_of(np.concatenate)),
    ("np.concatenate([k_cache])", _pages_of(lambda c: np.concatenate([c]))),
    (".tolist() indexed by the row", _from_the_list),
]


@pytest.mark.parametrize("name, fn", ESCAPES, ids=[e[0] for e in ESCAPES])
def test_a_gather_through_the_padding_of_a_copy_is_named(name, fn):
    """From the first case on (2 kv heads: a head's view is not contiguous there)."""
    result, printed = assert_caught("gather_numpy", fn, PADDING)
    assert PADDING in result.cases[0].hint, printed


@pytest.mark.parametrize("fn", [ESCAPES[0][1], _from_the_list], ids=["flatten", "tolist"])
def test_a_gather_through_the_padding_of_a_copy_fails_under_the_grader_too(fn):
    verdict = remotely("gather_numpy", fn, salt=250)["tasks"]["gather_numpy"]
    assert verdict["status"] == "failed" and PADDING in verdict["summary"], verdict


def _used_pages(k_cache, block_table_row, seq_len):
    return np.asarray(block_table_row)[:-(-seq_len // k_cache.shape[1])]


def _page_loop(k_cache, block_table_row, seq_len):
    pages = [k_cache[p] for p in _used_pages(k_cache, block_table_row, seq_len)]
    empty = np.empty((0, *k_cache.shape[1:]), k_cache.dtype)
    return np.concatenate(pages or [empty]).reshape(-1, *k_cache.shape[2:])[:seq_len]


def _clamped_by(clamp):
    """Page 0 read for each padding entry (`clamp(row)`), every page gathered, cut."""
    def gather_numpy(k_cache, block_table_row, seq_len):
        num_kv_heads, head_dim = k_cache.shape[2:]
        return k_cache[clamp(block_table_row)].reshape(-1, num_kv_heads, head_dim)[:seq_len]
    return gather_numpy


def _slots(k_cache, block_table_row, seq_len):
    page_size = k_cache.shape[1]
    t = np.arange(seq_len)
    return np.asarray(block_table_row)[t // page_size] * page_size + t % page_size


def _slots_from(copy_of):
    def gather_numpy(k_cache, block_table_row, seq_len):
        return copy_of(k_cache)[_slots(k_cache, block_table_row, seq_len)]
    return gather_numpy


def _tokens_first_from_the_end(k_cache, block_table_row, seq_len):
    """A tokens-first copy, its tokens counted from the end of a page (an axis inside a
    page: a negative index there follows no padding)."""
    page_size = k_cache.shape[1]
    t = np.arange(seq_len)
    tokens_first = np.ascontiguousarray(k_cache.transpose(1, 0, 2, 3))
    pages = np.asarray(block_table_row)[t // page_size]
    return tokens_first[t % page_size - page_size, pages]


def _through_torch(k_cache, block_table_row, seq_len):
    pages = torch.from_numpy(np.maximum(block_table_row, 0)).long()
    keys = torch.from_numpy(k_cache)[pages]
    return keys.reshape(-1, *k_cache.shape[2:])[:seq_len].numpy()


RIGHT_GATHERS = [
    ("a loop over the used pages", _page_loop),
    ("clamped by np.where", _clamped_by(lambda row: np.where(row < 0, 0, row))),
    ("clamped by np.clip", _clamped_by(lambda row: np.clip(row, 0, None))),
    ("clamped by np.maximum, from k_cache + 0",
     lambda k, row, n: _clamped_by(lambda r: np.maximum(r, 0))(k + 0, row, n)),
    ("the slots of .flatten()", _slots_from(lambda c: c.flatten().reshape(-1, *c.shape[2:]))),
    ("the slots of k_cache * 1.0", _slots_from(lambda c: _flat(c * 1.0))),
    ("the slots of np.concatenate([k_cache])", _slots_from(lambda c: _flat(np.concatenate([c])))),
    # (NumPy indexes each of the cache's pages as it joins them: a loop over pages, not tokens)
    ("the slots of np.concatenate(k_cache)", _slots_from(np.concatenate)),
    ("the tokens of a tokens-first copy counted from the end", _tokens_first_from_the_end),
    ("torch.from_numpy, clamped", _through_torch),
]


@pytest.mark.parametrize("name, fn", RIGHT_GATHERS, ids=[m[0] for m in RIGHT_GATHERS])
def test_right_gathers_from_copies_pass(name, fn):
    result, printed = run_check("gather_numpy", fn)
    assert result.passed, printed


def test_a_tokens_first_copy_is_left_unwatched():
    """Its token axis steps further than its page axis: no one spacing tells them apart."""
    cache_shape, strides = (5, 4, 2, 3), c_strides((5, 4, 2, 3), 4)
    view_shape = (4, 5, 2, 3)
    view_strides = tuple(strides[a] for a in (1, 0, 2, 3))
    assert copy_page_bytes(view_shape, view_strides, strides[0],
                           c_strides(view_shape, 4)) is None
    assert copy_page_bytes(cache_shape, strides, strides[0], c_strides(cache_shape, 2)) == \
        4 * 2 * 3 * 2   # (a float16 copy: a page of 24 values, 2 bytes each)


def test_a_watched_list_notes_negative_page_ids_only():
    """The page level of a .tolist() notes -1; a clamped page, a slice, or a level inside
    a page (a token counted from the end) does not."""
    ids = []
    pages = watched_levels([[[1], [2]], [[3], [4]]], [True, False, False], ids)
    assert pages[max(-1, 0)] == [[1], [2]] and pages[-1:] == [[[3], [4]]]
    assert pages[0][-1] == [2] and ids == []
    assert pages[np.int32(-1)] == [[3], [4]] and ids == [-1]
