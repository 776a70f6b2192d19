"""Wrong answers made by one small edit of a workbook solution (an operator, a bound, a
dropped line) that got a hint naming another mistake than the one made.

1. allocator / refcounts: a valid free or fork refused (page 0 left out of the id check, a
   count compared with <=) got "read the error above"; pages that never went back to the
   free list were blamed on a refused call changing state.
2. slot_of: the page added to page_size instead of multiplied was, at page_size 1, blamed on
   the offset alone.
3. block_hashes: a list of None (hash_block's result never kept) was blamed on a str() or
   hex() wrapper.
4. schedule_step: prompts admitted without any page check, or pages counted as fractions
   (tokens / page_size), were blamed on other mistakes only.
5. online_softmax: a running min for the max was blamed on exp(score - m_old) alone.
6. attend_one: an IndexError from the cache (page_size read from the wrong axis) at a page
   size that is not a power of two was blamed on shifts and masks.
7. choose_page_size: a waste that never exceeds the limit (pages rounded down or not at all,
   or no comparison) was told "compute its waste fraction first" or "return the smallest".
8. gather_kernel: the position t taken for the offset was blamed on a hard-coded 16 alone
   (right with pages of 16 tokens, as the case's sequences all fit one).
9. decode_merge: expf(m_p) with no max subtracted was, where every m_p is below -88, blamed
   on a max started at 0 alone.
10. reserved_waste / paged_waste: the empty batch's 0.0 returned for every other batch (the
   test inverted) was blamed on floor division alone.
"""
import numpy as np
import pytest

from pagedattn_lab.engine.prefix_cache import hash_block
from pagedattn_lab.grading.compare import POW2_HINT
from tests.check_helpers import (GoodAllocator, assert_caught, mutate, schedule_step_answer,
                                solution_source)

ATOMICITY = ("check before changing anything", "check every id of the list before changing")


# -- 1. the allocator ---------------------------------------------------------------------

class _PageZeroRefused(GoodAllocator):
    """Ids checked with 0 < page: page 0, a valid id, is refused."""

    def _valid(self, pages):
        for p in pages:
            if not 0 < p < self.num_pages:
                raise ValueError(f"page {p} is not in the pool")


class _EveryFreeADoubleFree(GoodAllocator):
    """A page's count compared with <= the times it is listed: every free raises."""

    def _check_free(self, pages):
        pages = list(pages)
        self._valid(pages)
        for p in pages:
            if self.refs[p] <= pages.count(p):
                raise ValueError(f"page {p} is already free")
        return pages


class _NeverReturned(GoodAllocator):
    """free drops the counts but never puts a page back on the free list."""

    def _release(self, pages):
        for p in pages:
            self.refs[p] -= 1


@pytest.mark.parametrize("cls", [_PageZeroRefused, _EveryFreeADoubleFree])
def test_a_valid_free_refused_is_named(cls):
    assert_caught("allocator", cls, "so freeing them is valid",
                  not_phrases=["read the error above"])


def test_pages_never_returned_are_not_blamed_on_a_refused_call():
    assert_caught("allocator", _NeverReturned, "freed pages must go back to the free list",
                  not_phrases=ATOMICITY)


def test_a_valid_fork_refused_is_named():
    assert_caught("refcounts", _PageZeroRefused, "so forking them is valid",
                  not_phrases=["read the error above"])


# -- 2. slot_of -----------------------------------------------------------------------------

def _slot_page_plus_page_size(block_table_row, token, page_size):
    return int(block_table_row[token // page_size]) + page_size + token % page_size


def test_a_page_added_to_page_size_is_named():
    _, printed = assert_caught("slot_of", _slot_page_plus_page_size, "do not add it")
    # (at page_size 1 it is also the offset's off-by-one: both are named there)
    assert "these mistakes give the same slot here" in " ".join(printed.split())


# -- 3. block_hashes -------------------------------------------------------------------------

def _hashes_never_kept(token_ids, page_size):
    hashes, parent = [], None
    for start in range(0, len(token_ids) - page_size + 1, page_size):
        hash_block(parent, token_ids[start:start + page_size])
        hashes.append(parent)
    return hashes


def test_hashes_left_none_are_named():
    assert_caught("block_hashes", _hashes_never_kept, "a hash is None",
                  not_phrases=["no str(), hex() or wrapper"])


# -- 4. schedule_step ------------------------------------------------------------------------

def _ceil_pages(tokens, page_size):
    return -(-tokens // page_size)


def _no_page_check(running, waiting, budget, free_pages, watermark, page_size, max_chunk):
    batch = []
    for req in running + waiting:
        if budget <= 0:
            break
        n = min(req.num_tokens - req.num_computed, budget, max_chunk)
        batch.append((req.rid, n))
        budget -= n
    return batch


def _fraction_pages(req, n, page_size):
    return max(0, (req.num_computed + n) / page_size - req.num_pages)


@pytest.mark.parametrize("impl, phrase", [
    (_no_page_check, "a prompt was admitted without pricing its pages"),
    (schedule_step_answer(_fraction_pages, lambda n, page_size: n / page_size),
     "pages were counted as fractions"),
])
def test_schedule_step_page_mistakes_are_named(impl, phrase):
    assert_caught("schedule_step", impl, phrase)


# -- 5. online_softmax ------------------------------------------------------------------------

class _RunningMin:
    def __init__(self, head_dim):
        self.m, self.l, self.acc = -np.inf, 0.0, np.zeros(head_dim)

    def update(self, score, value):
        m_new = min(self.m, score)
        rescale, weight = np.exp(self.m - m_new), np.exp(score - m_new)
        self.l = self.l * rescale + weight
        self.acc = self.acc * rescale + weight * value
        self.m = m_new

    def result(self):
        return self.acc / self.l


def test_a_running_min_is_named():
    with np.errstate(all="ignore"):
        assert_caught("online_softmax", _RunningMin, "not min")


# -- 6. attend_one ----------------------------------------------------------------------------

def _page_size_from_axis_0(q_vec, k_cache, v_cache, block_table_row, seq_len, t, kv_head,
                           scale):
    page_size = k_cache.shape[0]   # num_pages, not page_size
    scores, values = [], []
    for j in range(t + 1):
        page, offset = block_table_row[j // page_size], j % page_size
        scores.append(float(q_vec @ k_cache[page, offset, kv_head]) * scale)
        values.append(v_cache[page, offset, kv_head])
    w = np.exp(np.array(scores) - max(scores))
    return (w / w.sum()) @ np.array(values)


def test_an_index_past_the_cache_is_not_blamed_on_shifts():
    assert_caught("attend_one", _page_size_from_axis_0, "out of bounds for axis 1",
                  not_phrases=[POW2_HINT.split("(")[0]])


# -- 7. choose_page_size ----------------------------------------------------------------------

def _choose(allocated_of, compare=True):
    def choose_page_size(seq_lens, candidates, max_waste):
        def waste(page_size):
            allocated = allocated_of(seq_lens, page_size)
            return 1 - seq_lens.sum() / allocated if allocated else 0.0
        good = [p for p in candidates if not compare or waste(p) <= max_waste]
        return max(good) if good else min(candidates)
    return choose_page_size


@pytest.mark.parametrize("impl", [
    _choose(lambda lens, p: (lens // p).sum() * p),
    _choose(lambda lens, p: (lens / p).sum() * p),
    _choose(lambda lens, p: (-(-lens // p)).sum() * p, compare=False),
], ids=["rounded down", "not rounded", "no comparison"])
def test_a_waste_that_never_exceeds_the_limit_is_named(impl):
    assert_caught("choose_page_size", impl, "as if no page size wasted anything",
                  not_phrases=["compute its waste fraction first",
                               "no candidate wastes at most max_waste here"])


# -- 8. gather_kernel: the position t for the offset -------------------------------------------

def test_a_whole_token_offset_is_named_beside_a_fixed_page():
    """Where every sequence fits one page of 16 tokens, a kernel that takes t for the offset
    is right with pages of 16 too: the hard-coded 16 is not named alone."""
    source = mutate(solution_source("02_page_access.ipynb", "SOURCE_GATHER"),
                    [("(long long)page * page_size + t % page_size",
                      "(long long)page * page_size + t")])
    _, printed = assert_caught("gather_kernel", source, "the token's position t itself",
                               device="cpu")
    assert "these mistakes give the same result here" in " ".join(printed.split())


# -- 9. decode_merge: no max subtracted ---------------------------------------------------------

def test_a_merge_without_the_max_subtracted_is_named():
    """On states whose m_p all lie below -88, expf(m_p) underflows alike whether the max
    started at 0 or was never subtracted: both are named."""
    source = mutate(solution_source("06_decode_kernel.ipynb", "SOURCE_MERGE"),
                    [("expf(ml[2 * p] - m_all)", "expf(ml[2 * p])")])
    assert_caught("decode_merge", source, "no m subtracted at all", device="cpu")


# -- 10. reserved_waste / paged_waste: the empty batch's test inverted ---------------------------

def _reserved_empty_inverted(seq_lens, max_len):
    reserved = len(seq_lens) * max_len
    if reserved != 0:
        return 0.0
    return float(1 - np.sum(seq_lens) / reserved)


def _paged_empty_inverted(seq_lens, page_size):
    allocated = int((-(-np.asarray(seq_lens) // page_size)).sum()) * page_size
    if allocated != 0:
        return 0.0
    return float(1 - np.sum(seq_lens) / allocated)


@pytest.mark.parametrize("task, impl", [("reserved_waste", _reserved_empty_inverted),
                                        ("paged_waste", _paged_empty_inverted)])
def test_the_empty_answer_for_every_batch_is_named(task, impl):
    """0.0 for a batch with slots is what (slots - used) // slots gives too: both are named."""
    with np.errstate(all="ignore"):
        _, printed = assert_caught(task, impl, "return 0.0 only when nothing is")
    assert "rounds the fraction down" in " ".join(printed.split())
