"""Wrong answers to workbook 01 (allocator, reference counts, block tables)."""

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.grading.checks_paging import _alloc_random
from pagedattn_lab.grading.report import Mismatch
from tests.check_helpers import GoodAllocator, as_params, assert_caught, run_check

# -- lesson 01: allocator, sharing, block tables --------------------------------------------

class CounterAllocator(GoodAllocator):
    """The guide's `next_page++`: pages are counted out and never come back."""

    def __init__(self, num_pages):
        super().__init__(num_pages)
        self.next_page = 0

    @property
    def num_free(self):
        return self.num_pages - self.next_page

    def allocate(self, n):
        if self.next_page + n > self.num_pages:
            raise pl.OutOfPagesError(n, self.num_free, self.num_pages)
        pages = list(range(self.next_page, self.next_page + n))
        self.next_page += n
        for p in pages:
            self.refs[p] = 1
        return pages

    def free(self, pages):
        for p in pages:
            self.refs[p] -= 1


class PartialAllocator(GoodAllocator):
    def allocate(self, n):
        pages = []
        for _ in range(n):
            if not self.free_list:
                raise pl.OutOfPagesError(n, 0, self.num_pages)
            pages.append(self.free_list.popleft())
            self.refs[pages[-1]] = 1
        return pages


class TrustingAllocator(GoodAllocator):
    def free(self, pages):
        for p in pages:
            self.refs[p] = max(self.refs[p] - 1, 0)
            self.free_list.append(p)


class OneBasedAllocator(GoodAllocator):
    def allocate(self, n):
        return [p + 1 for p in super().allocate(n)]

    def ref_count(self, page):
        return self.refs[page - 1] if 0 < page <= self.num_pages else 0


class IgnoresCountFree(GoodAllocator):
    def free(self, pages):
        for p in pages:
            if self.refs[p] == 0:
                raise ValueError(p)
        for p in pages:
            self.refs[p] = 0
            self.free_list.append(p)


class CopyingFork(GoodAllocator):
    def fork(self, pages):
        return self.allocate(len(pages))


class SameListFork(GoodAllocator):
    def fork(self, pages):
        for p in pages:
            self.refs[p] += 1
        return pages


class UncheckedFork(GoodAllocator):
    def fork(self, pages):
        for p in pages:
            self.refs[p] += 1
        return list(pages)


def append_per_token(table, seq_len, n_new, page_size, alloc):
    table.extend(alloc.allocate(n_new))


def append_ignoring_tail(table, seq_len, n_new, page_size, alloc):
    table.extend(alloc.allocate(-(-n_new // page_size)))


def append_floor(table, seq_len, n_new, page_size, alloc):
    table.extend(alloc.allocate(max((seq_len + n_new) // page_size - len(table), 0)))


def append_one_by_one(table, seq_len, n_new, page_size, alloc):
    for _ in range(-(-(seq_len + n_new) // page_size) - len(table)):
        table.extend(alloc.allocate(1))


def _pack(tables, seq_lens, pad=-1, dtype=np.int32):
    width = max([len(t) for t in tables] + [1])
    out = np.full((len(seq_lens), width), pad, dtype=dtype)
    for i, t in enumerate(tables):
        out[i, :len(t)] = t
    return out, np.asarray(seq_lens, dtype=np.int32)


def tables_shared(seq_lens, page_size, alloc):
    tables = [[]] * len(seq_lens)
    for i, n in enumerate(seq_lens):
        tables[i].extend(alloc.allocate(-(-n // page_size)))
    return _pack(tables, seq_lens)


def tables_zero_padded(seq_lens, page_size, alloc):
    return _pack([alloc.allocate(-(-n // page_size)) for n in seq_lens], seq_lens, pad=0)


def tables_int64(seq_lens, page_size, alloc):
    return _pack([alloc.allocate(-(-n // page_size)) for n in seq_lens], seq_lens,
                 dtype=np.int64)


def tables_per_token(seq_lens, page_size, alloc):
    return _pack([alloc.allocate(n) for n in seq_lens], seq_lens)


MISTAKES = [
    ("allocator", CounterAllocator, "never frees"),
    ("allocator", PartialAllocator, "all or nothing"),
    ("allocator", TrustingAllocator, "double free"),
    ("allocator", OneBasedAllocator, "0..num_pages-1"),
    ("refcounts", IgnoresCountFree, "decrement the count"),
    ("refcounts", CopyingFork, "fork shares"),
    ("refcounts", SameListFork, "new list"),
    ("refcounts", UncheckedFork, "only pages in use"),
    ("append_tokens", append_per_token, "one page per token"),
    ("append_tokens", append_ignoring_tail, "still has room"),
    ("append_tokens", append_floor, "round up"),
    ("append_tokens", append_one_by_one, "one allocate(n) call"),
    ("block_tables", tables_shared, "one block table for the whole batch"),
    ("block_tables", tables_zero_padded, "with -1"),
    ("block_tables", tables_int64, "int32"),
    ("block_tables", tables_per_token, "one page per token"),
]




# -- lists with a bad id, fork's order, boundaries (issue 9) -----------------------------------

class HalfwayFree(GoodAllocator):
    """Checks each id inside the loop: the ids before a bad one are already freed."""

    def free(self, pages):
        for p in pages:
            if not 0 <= p < self.num_pages or self.refs[p] == 0:
                raise ValueError(f"page {p}")
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.free_list.append(p)


class NoRangeCheckFree(GoodAllocator):
    """Trusts Python's list: refs[-1] is the last page, refs[num_pages] an IndexError."""

    def free(self, pages):
        for p in pages:
            if self.refs[p] < list(pages).count(p):
                raise ValueError(f"page {p}")
        for p in pages:
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.free_list.append(p)


class DuplicateFree(GoodAllocator):
    """Checks every id is in use, but not how often the list names it."""

    def free(self, pages):
        for p in pages:
            if not 0 <= p < self.num_pages or self.refs[p] == 0:
                raise ValueError(f"page {p}")
        for p in pages:
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.free_list.append(p)


class IndexErrorFree(GoodAllocator):
    def free(self, pages):
        for p in pages:
            if not 0 <= p < self.num_pages:
                raise IndexError(f"page {p}")
        super().free(pages)


class SortedFork(GoodAllocator):
    def fork(self, pages):
        return sorted(super().fork(pages))


class SetFork(GoodAllocator):
    def fork(self, pages):
        return list(set(super().fork(pages)))


class HalfwayFork(GoodAllocator):
    def fork(self, pages):
        for p in pages:
            if not 0 <= p < self.num_pages or self.refs[p] == 0:
                raise ValueError(f"page {p}")
            self.refs[p] += 1
        return list(pages)


class NoRangeCheckFork(GoodAllocator):
    def fork(self, pages):
        for p in pages:
            if self.refs[p] == 0:
                raise ValueError(f"page {p}")
        for p in pages:
            self.refs[p] += 1
        return list(pages)


def append_full_pages_only(table, seq_len, n_new, page_size, alloc):
    """Takes pages only when the last page is full: tokens overflowing a partial page are lost."""
    if seq_len % page_size == 0:
        table.extend(alloc.allocate(-(-n_new // page_size)))


def append_one_page(table, seq_len, n_new, page_size, alloc):
    if seq_len + n_new > len(table) * page_size:
        table.extend(alloc.allocate(1))


def append_exact_fit_plus_one(table, seq_len, n_new, page_size, alloc):
    new = (seq_len + n_new) // page_size + 1 - len(table)
    if n_new and new > 0:
        table.extend(alloc.allocate(new))


def tables_batch_width(seq_lens, page_size, alloc):
    """Each row its own pages, but as wide as the batch's page count."""
    tables = [alloc.allocate(-(-n // page_size)) for n in seq_lens]
    out = np.full((len(seq_lens), sum(len(t) for t in tables)), -1, dtype=np.int32)
    for i, t in enumerate(tables):
        out[i, :len(t)] = t
    return out, np.asarray(seq_lens, dtype=np.int32)


def tables_no_min_width(seq_lens, page_size, alloc):
    tables = [alloc.allocate(-(-n // page_size)) for n in seq_lens]
    out = np.full((len(seq_lens), max(len(t) for t in tables)), -1, dtype=np.int32)
    for i, t in enumerate(tables):
        out[i, :len(t)] = t
    return out, np.asarray(seq_lens, dtype=np.int32)


def tables_transposed(seq_lens, page_size, alloc):
    tables, lens = _pack([alloc.allocate(-(-n // page_size)) for n in seq_lens], seq_lens)
    return np.ascontiguousarray(tables.T), lens


def tables_list_lens(seq_lens, page_size, alloc):
    tables, _ = _pack([alloc.allocate(-(-n // page_size)) for n in seq_lens], seq_lens)
    return tables, list(seq_lens)


def tables_reused_pages(seq_lens, page_size, alloc):
    """One allocation reused for every row: the rows share pages (no shared list, though)."""
    need = [-(-n // page_size) for n in seq_lens]
    pages = alloc.allocate(max(need + [0]))
    return _pack([pages[:n] for n in need], seq_lens)


MISTAKES += [
    ("block_tables", tables_reused_pages, "take every row's pages from the allocator",
     ["the guide", "[[]] * n"]),
    ("allocator", HalfwayFree, "check every id of the list before changing"),
    ("allocator", NoRangeCheckFree, "refs[-1]"),
    ("allocator", DuplicateFree, "twice", ["never frees"]),
    ("allocator", IndexErrorFree, "with ValueError"),
    ("refcounts", SortedFork, "in the order it was given", ["does not copy"]),
    ("refcounts", SetFork, "in the order it was given", ["does not copy"]),
    ("refcounts", HalfwayFork, "check every id of the list before changing"),
    ("refcounts", NoRangeCheckFork, "refs[-1]"),
    ("append_tokens", append_full_pages_only, "do not fit"),
    ("append_tokens", append_one_page, "several new pages"),
    ("append_tokens", append_exact_fit_plus_one, "one page too many"),
    ("block_tables", tables_batch_width, "the longest sequence's page count",
     ["whole batch (the guide", "one page per token"]),
    ("block_tables", tables_no_min_width, "at least 1", ["whole batch (the guide"]),
    ("block_tables", tables_transposed, "transposed", ["whole batch (the guide"]),
    ("block_tables", tables_list_lens, "int32 array"),
]


# -- free empties the caller's list --------------------------------------------------------

class PoppingFree(GoodAllocator):
    """Right counts, but free empties the caller's list (its block table) as it goes."""

    def free(self, pages):
        self._check_free(pages)
        while pages:
            self._release([pages.pop()])


MISTAKES += [
    ("allocator", PoppingFree, "changed the list it was given",
     ["more pages are free than", "free drops the count"]),
    ("refcounts", PoppingFree, "changed the list it was given", ["free takes one owner"]),
]


def tables_counts_in_place(seq_lens, page_size, alloc):
    """Right tables and lengths, but the caller's seq_lens now holds page counts."""
    lens = np.asarray(seq_lens, dtype=np.int32)
    for i, n in enumerate(seq_lens):
        seq_lens[i] = -(-n // page_size)
    tables = np.full((len(seq_lens), max(seq_lens + [1])), -1, dtype=np.int32)
    for row, n in enumerate(seq_lens):
        tables[row, :n] = alloc.allocate(n)
    return tables, lens


MISTAKES += [("block_tables", tables_counts_in_place, "changed its input seq_lens")]


class LifoAllocator(GoodAllocator):
    """Hands out the most recently freed page first: as right as a FIFO free list."""

    def allocate(self, n):
        if n > len(self.free_list):
            raise pl.OutOfPagesError(n, len(self.free_list), self.num_pages)
        pages = [self.free_list.pop() for _ in range(n)]
        for p in pages:
            self.refs[p] = 1
        return pages


def tables_one_allocate_call(seq_lens, page_size, alloc):
    need = [-(-n // page_size) for n in seq_lens]
    pages = alloc.allocate(sum(need))
    rows, start = [], 0
    for n in need:
        rows.append(pages[start:start + n])
        start += n
    return _pack(rows, seq_lens)


@pytest.mark.parametrize("task, impl", [("allocator", LifoAllocator),
                                        ("refcounts", LifoAllocator),
                                        ("allocator", GoodAllocator),
                                        ("block_tables", tables_one_allocate_call)])
def test_right_answers_in_another_style_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


class OnePageManyTimes(GoodAllocator):
    """`[free_list.popleft()] * n`: one page, listed n times, none of them in use before."""

    def allocate(self, n):
        if n > len(self.free_list):
            raise pl.OutOfPagesError(n, len(self.free_list), self.num_pages)
        pages = [self.free_list.popleft()] * n if n else []
        for p in pages:
            self.refs[p] = 1
        return pages


def test_a_page_handed_out_twice_in_one_call_is_not_called_in_use():
    # The case of 150 random calls, run alone (the check stops after the first three cases
    # fail): [p, p] with p free before the call is no page "already in use".
    with pytest.raises(Mismatch) as caught:
        _alloc_random(OnePageManyTimes, 12, 1)
    assert "returned a page twice" in caught.value.message
    assert "already in use" not in caught.value.message
