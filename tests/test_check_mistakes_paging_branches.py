"""Wrong answers to workbook 01 that reach the allocator, reference-count and block-table
checks' rarer branches: each is named in the case that fails, with what was expected, what
came back, and a hint that names the mistake (not a crash report)."""
import numpy as np
import pytest

import pagedattn_lab as pl
from tests.check_helpers import GoodAllocator, assert_several_fit, run_check
from tests.test_check_mistakes_pools import AtLeastAllocator


def failure(task, impl, case):
    """The CaseResult of `case` when `task`'s check fails `impl`."""
    result, printed = run_check(task, impl)
    assert result.status == "failed", printed
    found = [c for c in result.cases if c.name == case]
    assert found and not found[0].passed, printed
    return found[0]


# -- allocator -----------------------------------------------------------------------------

class ZeroGivesOne(GoodAllocator):
    def allocate(self, n):
        return super().allocate(max(n, 1))


class ShortOfThree(GoodAllocator):
    def allocate(self, n):
        pages = super().allocate(n)
        return pages[:2] if n == 3 else pages


class OnePageThrice(GoodAllocator):
    def allocate(self, n):
        pages = super().allocate(n)
        return [pages[0]] * n if n else []


class NegativeIds(GoodAllocator):
    def allocate(self, n):
        return [-p - 1 for p in super().allocate(n)]


class NoCountOnAllocate(GoodAllocator):
    def allocate(self, n):
        pages = super().allocate(n)
        for p in pages:
            self.refs[p] = 0
        return pages


class CounterBehindFree(GoodAllocator):
    """num_free counts the frees, but allocate still counts pages out (`next_page++`)."""

    def __init__(self, num_pages):
        super().__init__(num_pages)
        self.next_page = 0

    def allocate(self, n):
        if self.next_page + n > self.num_pages:
            raise pl.OutOfPagesError(n, self.num_free, self.num_pages)
        self.next_page += n
        return super().allocate(n)


class Ring(GoodAllocator):
    """Right counts, but the ids come from a counter modulo num_pages, not the free list."""

    def __init__(self, num_pages):
        super().__init__(num_pages)
        self.next_page = 0

    def allocate(self, n):
        super().allocate(n)
        pages = [(self.next_page + i) % self.num_pages for i in range(n)]
        self.next_page += n
        for p in pages:
            self.refs[p] = 1
        return pages


class SwappedError(GoodAllocator):
    def allocate(self, n):
        if n > len(self.free_list):
            raise pl.OutOfPagesError(n, self.num_pages, len(self.free_list))
        return super().allocate(n)


class LosesPages(GoodAllocator):
    """Pops page by page and raises when the list runs dry: the pages popped are lost, and
    num_free (counted from the counts) does not show it."""

    @property
    def num_free(self):
        return self.refs.count(0)

    def allocate(self, n):
        pages = []
        for _ in range(n):
            if not self.free_list:
                raise pl.OutOfPagesError(n, self.num_free, self.num_pages)
            pages.append(self.free_list.popleft())
        for p in pages:
            self.refs[p] = 1
        return pages


class KeepsAReserve(GoodAllocator):
    """Hands out at most num_free - 1 pages, silently (a page "kept in reserve")."""

    def allocate(self, n):
        if n > len(self.free_list):
            raise pl.OutOfPagesError(n, len(self.free_list), self.num_pages)
        return super().allocate(min(n, max(len(self.free_list) - 1, 0)))


@pytest.mark.parametrize("impl, case, message, hint, expected, got", [
    (ZeroGivesOne, "a fresh pool", "allocate(0) should return []", "zero pages is a valid",
     "[]", "[0]"),
    (ShortOfThree, "a fresh pool", "allocate(3) returned the wrong number of pages",
     "returns exactly n page ids", "3 ids", "[0, 1]"),
    (OnePageThrice, "a fresh pool", "allocate(3) returned a page twice: [0, 0, 0]",
     "only one owner", "", ""),
    (NegativeIds, "a fresh pool", "allocate(3) returned ids [-1, -2, -3]",
     "page ids are 0..num_pages-1 = 0..7", "", ""),
    (NoCountOnAllocate, "a fresh pool", "ref_count of freshly allocated pages",
     "allocate sets each count to 1", "[1, 1, 1]", "[0, 0, 0]"),
    (AtLeastAllocator, "a fresh pool", "allocate(5) with 5 pages free raised OutOfPagesError",
     "(>, not >=)", "", ""),
    (AtLeastAllocator, "freed pages come back", "allocate(6) of a new pool of 6 pages raised "
     "OutOfPagesError", "(>, not >=)", "", ""),
    (CounterBehindFree, "freed pages come back", "allocate(3) raised OutOfPagesError although "
     "3 pages were freed", "`next_page++` counter never frees", "", ""),
    (Ring, "freed pages come back", "allocate(3) after freeing pages", "back to the free list",
     "the freed pages [1, 2, 3]", "[0, 1, 2]"),
    (SwappedError, "out of pages is all or nothing", "says: out of KV-cache pages: requested "
     "3, only 7 of 2 free", "OutOfPagesError(n, num_free, num_pages), in that order",
     "requested, free, total = (3, 2, 7)", "(3, 7, 2)"),
    (LosesPages, "out of pages is all or nothing", "allocate(2) with 2 pages free (num_free "
     "says 2) raised OutOfPagesError after the refused allocate(3)", "pages it took before "
     "raising are lost", "", ""),
    (KeepsAReserve, "out of pages is all or nothing", "allocate(2) with 2 pages free",
     "returns exactly n page ids", "2 ids", "[5]"),
    (Ring, "150 random allocate/free", "allocate(3) returned [8, 9, 10]; pages [10] are "
     "already in use", "must not be handed out again", "", ""),
    (ZeroGivesOne, "150 random allocate/free", "step 9: allocate(0) returned [10]",
     "n distinct ids in 0..11", "", ""),
    (LosesPages, "150 random allocate/free", "step 27: allocate(1) raised OutOfPagesError "
     "with 1 page free", "an allocate was refused at step 23: a refused allocate must leave "
     "the free list as it was", "", ""),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_allocator_mistake_is_named(impl, case, message, hint, expected, got):
    found = failure("allocator", impl, case)
    assert message in found.message
    assert hint in found.hint
    assert (found.expected, found.got) == (expected, got)


@pytest.mark.parametrize("params", [{"num_pages": 7}, {"num_pages": 12, "seed": 1}],
                         ids=["after a refused allocate(3)", "random allocate/free"])
def test_allocate_of_every_free_page_refused_names_both_mistakes_in_one_wording(params):
    """Refusing allocate(n) with n pages free after a refused call: pages lost by that call,
    or a >= for >, give the same error."""
    assert_several_fit("allocator", LosesPages, params, "result",
                       ["pages it took before raising are lost", "(>, not >=)"])


def test_a_crash_report_is_not_what_the_allocator_check_gives_for_lost_pages():
    """Before: 'raised OutOfPagesError ... read the error above' (a crash), no hint."""
    result, printed = run_check("allocator", LosesPages)
    assert "read the error above" not in printed
    result, printed = run_check("allocator", AtLeastAllocator)
    assert "read the error above" not in printed


# -- reference counts ----------------------------------------------------------------------

class TupleFork(GoodAllocator):
    def fork(self, pages):
        return tuple(super().fork(pages))


class UncountedFork(GoodAllocator):
    def fork(self, pages):
        return list(pages)


class NoRepeatsFree(GoodAllocator):
    def free(self, pages):
        if len(set(pages)) != len(pages):
            raise ValueError("a page listed twice")
        super().free(pages)


class SetFree(GoodAllocator):
    def free(self, pages):
        super().free(set(pages))


class EagerFreeList(GoodAllocator):
    """Counts right (num_free from the counts), but every free puts the page on the free
    list, even one that still has owners: allocate then hands out a shared page."""

    @property
    def num_free(self):
        return self.refs.count(0)

    def _release(self, pages):
        for p in pages:
            self.refs[p] -= 1
            if p not in self.free_list:
                self.free_list.append(p)

    def allocate(self, n):
        pages = [self.free_list.popleft() for _ in range(n)]
        for p in pages:
            self.refs[p] = 1
        return pages


@pytest.mark.parametrize("impl, case, message, hint, expected, got", [
    (TupleFork, "fork shares pages", "fork returned a tuple", "return a list", "list",
     "tuple"),
    (UncountedFork, "fork shares pages", "ref_count after fork", "adds one owner", "[2, 2]",
     "[1, 1]"),
    (NoRepeatsFree, "free of a sequence and its fork at once", "free([0, 1, 2, 0, 1, 2]) "
     "raised ValueError: a page listed twice", "listed twice: that is allowed", "", ""),
    (SetFree, "free of a sequence and its fork at once", "ref_count after free([0, 1, 2, 0, "
     "1, 2]) of a sequence and its fork", "a set() of the ids drops one", "[0, 0, 0]",
     "[1, 1, 1]"),
    (EagerFreeList, "150 random allocate/fork/free", "still have owners",
     "free must decrement the count and return the page only when it reaches 0", "", ""),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_refcount_mistake_is_named(impl, case, message, hint, expected, got):
    found = failure("refcounts", impl, case)
    assert message in found.message
    assert hint in found.hint
    assert (found.expected, found.got) == (expected, got)


# -- append_tokens -------------------------------------------------------------------------

def append_as_one_entry(table, seq_len, n_new, page_size, alloc):
    need = -(-(seq_len + n_new) // page_size) - len(table)
    if need > 0:
        table.append(alloc.allocate(need))


def append_counted_ids(table, seq_len, n_new, page_size, alloc):
    need = -(-(seq_len + n_new) // page_size) - len(table)
    alloc.allocate(max(need, 0))
    table.extend(range(len(table), len(table) + max(need, 0)))


def append_returning_a_copy(table, seq_len, n_new, page_size, alloc):
    return table + alloc.allocate(max(-(-(seq_len + n_new) // page_size) - len(table), 0))


def append_rebinding(table, seq_len, n_new, page_size, alloc):
    table = table + alloc.allocate(max(-(-(seq_len + n_new) // page_size) - len(table), 0))


def append_at_the_front(table, seq_len, n_new, page_size, alloc):
    table[:0] = alloc.allocate(max(-(-(seq_len + n_new) // page_size) - len(table), 0))


def append_skipping_token_zero(table, seq_len, n_new, page_size, alloc):
    """Right for prompts; one token at a time takes a page only when seq_len is a nonzero
    multiple of page_size, so the first decoded token of an empty sequence gets none."""
    if n_new == 1:
        if seq_len and seq_len % page_size == 0:
            table.extend(alloc.allocate(1))
        return
    table.extend(alloc.allocate(max(-(-(seq_len + n_new) // page_size) - len(table), 0)))


def append_catching(table, seq_len, n_new, page_size, alloc):
    try:
        table.extend(alloc.allocate(max(-(-(seq_len + n_new) // page_size) - len(table), 0)))
    except pl.OutOfPagesError:
        pass


@pytest.mark.parametrize("fn, case, message, hint, expected, got", [
    (append_as_one_entry, "last page full", "the new entries are [[", "table.extend(pages), "
     "not table.append(pages)", "", ""),
    (append_counted_ids, "prompt into an empty table", "are not the pages allocate returned",
     "page ids come from the allocator", None, "[0, 1]"),
    (append_returning_a_copy, "prompt into an empty table", "append_tokens returned a new list",
     "extend `table` in place", "None (`table` extended in place)", "[5, 1]"),
    (append_rebinding, "prompt into an empty table", "table length after 5 new tokens on a "
     "sequence of 0", "`table = table + pages` only rebinds your local name",
     "2 pages (2 new)", "0 pages (2 new taken from the allocator)"),
    (append_at_the_front, "fits in the last page", None, None, None, None),
    (append_at_the_front, "last page full", "the existing entries changed", "only append new "
     "pages at the end", None, None),
    (append_skipping_token_zero, "decode 21 tokens one by one", "decoding token 0 one at a "
     "time (page_size 3)", "seq_len % page_size == 0", "1 pages", "0 in the table, 0 taken"),
    (append_catching, "out of pages", "13 tokens of page_size 4 need 4 pages; the pool has 3",
     "let it propagate", "OutOfPagesError", "no error"),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_append_tokens_mistake_is_named(fn, case, message, hint, expected, got):
    result, printed = run_check("append_tokens", fn)
    found = next(c for c in result.cases if c.name == case)
    if message is None:   # a case the mistake passes (no new page: nothing to misplace)
        assert found.passed, printed
        return
    assert not found.passed and message in found.message, printed
    assert hint in found.hint
    for want, value in ((expected, found.expected), (got, found.got)):
        assert want is None or want == value, printed


# -- block_tables --------------------------------------------------------------------------

def _pages(seq_lens, page_size, alloc):
    return [alloc.allocate(-(-n // page_size)) for n in seq_lens]


def _pack(rows, seq_lens, width=None):
    width = width or max([len(r) for r in rows] + [1])
    out = np.full((len(seq_lens), width), -1, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out, np.asarray(seq_lens, np.int32)


def tables_flat(seq_lens, page_size, alloc):
    return np.concatenate([np.asarray(r, np.int32) for r in _pages(seq_lens, page_size, alloc)]
                          + [np.zeros(0, np.int32)]), np.asarray(seq_lens, np.int32)


def tables_one_column_too_many(seq_lens, page_size, alloc):
    rows = _pages(seq_lens, page_size, alloc)
    return _pack(rows, seq_lens, max([len(r) for r in rows] + [1]) + 1)


def tables_counted_ids(seq_lens, page_size, alloc):
    """Allocates the right counts, then numbers the pages 0, 1, 2... itself."""
    rows, start = [], 0
    for r in _pages(seq_lens, page_size, alloc):
        rows.append(list(range(start, start + len(r))))
        start += len(r)
    return _pack(rows, seq_lens)


def tables_freed_right_away(seq_lens, page_size, alloc):
    """Takes each row's pages, then frees them, "returning" the table."""
    rows = _pages(seq_lens, page_size, alloc)
    for r in rows:
        alloc.free(r)
    return _pack(rows, seq_lens)


def tables_max_of_nothing(seq_lens, page_size, alloc):
    rows = _pages(seq_lens, page_size, alloc)
    return _pack(rows, seq_lens, max(len(r) for r in rows) or 1)


def tables_only(seq_lens, page_size, alloc):
    return _pack(_pages(seq_lens, page_size, alloc), seq_lens)[0]


def tables_past_the_pool(seq_lens, page_size, alloc):
    tables, lens = _pack(_pages(seq_lens, page_size, alloc), seq_lens)
    return np.where(tables >= 0, tables + 64, -1).astype(np.int32), lens


def tables_one_spare_page(seq_lens, page_size, alloc):
    alloc.allocate(1)   # "just in case"
    return _pack(_pages(seq_lens, page_size, alloc), seq_lens)


@pytest.mark.parametrize("fn, case, message, hint, expected", [
    (tables_flat, "three sequences", "block_tables shape", "one row per sequence", "(3, 3)"),
    (tables_one_column_too_many, "three sequences", "block_tables shape", "one row per "
     "sequence, as wide as the longest sequence's page count", "(3, 3)"),
    (tables_counted_ids, "three sequences", "pages [1, 3, 4, 5] are free in the allocator",
     "not numbers of your own (a counter, a range)", ""),
    (tables_counted_ids, "six random lengths", "belong to other sequences (the allocator did "
     "not give them to you)", "its free pages are not 0, 1, 2...", ""),
    (tables_freed_right_away, "three sequences", "are free in the allocator", "a page nobody "
     "took will be handed to another sequence", ""),
    (tables_max_of_nothing, "an empty batch", "an empty batch raised ValueError",
     "max() of an empty list raises", ""),
    (tables_only, "three sequences", "expected a tuple (block_tables, seq_lens)",
     "return both arrays", "a tuple of 2: (block_tables, seq_lens)"),
    (tables_past_the_pool, "three sequences", "out of range", "use ids the allocator returned",
     ""),
    (tables_one_spare_page, "three sequences", "pages taken from the allocator",
     "take exactly ceil(len / page_size) pages per sequence", "6"),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_block_tables_mistake_is_named(fn, case, message, hint, expected):
    found = failure("block_tables", fn, case)
    assert message in found.message and hint in found.hint
    assert found.expected == expected
