"""Wrong answers to workbook 01 (allocator, reference counts, block tables)."""

import numpy as np
import pytest

import pagedattn_lab as pl
from tests.check_helpers import GoodAllocator, as_params, assert_caught

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




@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)
