"""Hunt 146: wrong answers a learner really writes for the Python tasks of workbooks 00-02, and
right answers written another way.

Each wrong answer must fail with a hint naming its mistake (and, where a likelier-looking one
gives the same numbers in a case, not naming that one); each right answer must pass. Workbooks
04-08 are in test_wrong_answers_hunt146_04_08.py, the kernels' tasks in
test_wrong_answers_hunt146_kernels.py.
"""
import heapq
import math
from collections import Counter

import numpy as np
import pytest

import pagedattn_lab as pl
from tests.check_helpers import GoodAllocator, as_params, assert_caught, run_check


def _ceil(a, b):
    return -(-a // b)


# -- lesson 00 ----------------------------------------------------------------------------------

def _reserved(L, m, finish=float):
    return finish(1 - L.sum() / (len(L) * m)) if len(L) else 0.0


def _paged(L, p, pages=_ceil, finish=float):
    allocated = pages(L, p).sum() * p
    return finish(1 - L.sum() / allocated) if allocated else 0.0


LESSON_00 = [
    ("pages_needed", lambda s, p: (s - 1) // p, "the index of the last token's page",
     ["round up"]),
    ("pages_needed", lambda s, p: (s + p - 1) >> (p.bit_length() - 1),
     "page_size = 3 here is not"),
    ("pages_needed", lambda s, p: (s + p) // p, "one page too many"),
    ("pages_needed", lambda s, p: int(s / p) + (s % p > 0), "a float holds integers exactly"),
    ("pages_needed", lambda s, p: np.ceil(s / p), "return it as an int"),
    ("reserved_waste", lambda L, m: _reserved(L, m, lambda x: round(float(x), 2)),
     "rounded to 2 decimal places"),
    ("reserved_waste", lambda L, m: float(1 - L.sum() / (len(L) * m)), "return 0.0 for that"),
    ("reserved_waste", lambda L, m: _reserved(L, L.max() if len(L) else m),
     "reserved max(seq_lens)"),
    ("reserved_waste", lambda L, m: float((m * len(L) - L.sum()) / m) if len(L) else 0.0,
     "not by one max_len"),
    ("reserved_waste", lambda L, m: float(L.sum() / (len(L) * m)) if len(L) else 0.0,
     "that is the used fraction"),
    ("paged_waste", lambda L, p: _paged(L, p, finish=lambda x: round(float(x), 3)),
     "rounded to 3 decimal places"),
    ("paged_waste", lambda L, p: float(1 - L.sum() / (_ceil(L.sum(), p) * p)) if L.sum() else 0.0,
     "ceil(sum(seq_lens) / page_size) pages, as if one sequence"),
    ("paged_waste", lambda L, p: float((_ceil(L, p) * p - L).sum() / _ceil(L, p).sum())
     if L.sum() else 0.0, "not by the number of pages"),
    ("paged_waste", lambda L, p: _paged(L, p, pages=lambda a, b: a // b),
     "round the page count up"),
    ("paged_waste", lambda L, p: float(np.mean(1 - L / (_ceil(L, p) * p))) if L.sum() else 0.0,
     "the mean of the sequences' own waste"),
]

RIGHT_00 = [
    ("pages_needed", lambda s, p: (s - 1) // p + 1),
    ("pages_needed", lambda s, p: s // p + (s % p > 0)),
    ("pages_needed", lambda s, p: -(s // -p)),
    ("reserved_waste", lambda L, m: float(np.mean(1 - L / m)) if len(L) else 0.0),
    ("reserved_waste", lambda L, m: float((m - L).sum() / (m * len(L))) if len(L) else 0.0),
    ("reserved_waste", lambda L, m: (len(L) * m - sum(int(x) for x in L)) / (len(L) * m)
     if len(L) else 0.0),
    ("paged_waste", lambda L, p: float(((-L) % p).sum() / (_ceil(L, p).sum() * p))
     if L.sum() else 0.0),
    ("paged_waste", lambda L, p: _paged(L, p, pages=lambda a, b: np.ceil(a / b))),
    ("paged_waste", lambda L, p: (lambda a: 1 - sum(map(int, L)) / a if a else 0.0)(
        sum(math.ceil(int(x) / p) for x in L) * p)),
]


# -- lesson 01 ----------------------------------------------------------------------------------

class _AllocatesOneByOne(GoodAllocator):
    def allocate(self, n):
        pages = []
        for _ in range(n):
            if not self.free_list:
                raise pl.OutOfPagesError(n, 0, self.num_pages)
            page = self.free_list.popleft()
            self.refs[page] = 1
            pages.append(page)
        return pages


class _NoDoubleFreeCheck(GoodAllocator):
    def free(self, pages):
        pages = list(pages)
        self._valid(pages)
        self._release(pages)


class _FreesAsItChecks(GoodAllocator):
    def free(self, pages):
        for page in pages:
            self._valid([page])
            if self.refs[page] == 0:
                raise ValueError(f"page {page} is already free")
            self._release([page])


class _RefusesTheLastPages(GoodAllocator):
    def allocate(self, n):
        if n >= len(self.free_list):
            raise pl.OutOfPagesError(n, len(self.free_list), self.num_pages)
        return super().allocate(n)


class _NegativeIdsPass(GoodAllocator):
    def _valid(self, pages):
        for page in pages:
            if page >= self.num_pages:
                raise ValueError(f"page {page} is not in the pool")


class _ForksFreePages(GoodAllocator):
    def fork(self, pages):
        pages = list(pages)
        self._valid(pages)
        for page in pages:
            self.refs[page] += 1
        return pages


class _ForksAsItChecks(GoodAllocator):
    def fork(self, pages):
        out = []
        for page in pages:
            if self.refs[page] == 0:
                raise ValueError(f"page {page} is free")
            self.refs[page] += 1
            out.append(page)
        return out


class _ForkSorts(GoodAllocator):
    def fork(self, pages):
        return sorted(super().fork(pages))


class _ForkCopies(GoodAllocator):
    def fork(self, pages):
        return self.allocate(len(list(pages)))


class _ForkReturnsItsArgument(GoodAllocator):
    def fork(self, pages):
        super().fork(pages)
        return pages


def _append(pages_for):
    def append_tokens(table, seq_len, n_new, page_size, allocator):
        needed = pages_for(seq_len, n_new, page_size) - len(table)
        if needed > 0:
            table.extend(allocator.allocate(needed))
    return append_tokens


def _append_page_by_page(table, seq_len, n_new, page_size, allocator):
    for token in range(seq_len, seq_len + n_new):
        if token // page_size >= len(table):
            table.append(allocator.allocate(1)[0])


def _tables(pages=_ceil, pad=-1, dtype=np.int32):
    def block_tables_for_batch(seq_lens, page_size, allocator):
        tables = [allocator.allocate(pages(n, page_size)) for n in seq_lens]
        out = np.full((len(seq_lens), max([len(t) for t in tables] + [1])), pad, dtype=dtype)
        for row, owned in enumerate(tables):
            out[row, :len(owned)] = owned
        return out, np.asarray(seq_lens, dtype=np.int32)
    return block_tables_for_batch


def _tables_transposed(seq_lens, page_size, allocator):
    tables, lens = _tables()(seq_lens, page_size, allocator)
    return tables.T.copy(), lens


LESSON_01 = [
    ("allocator", _AllocatesOneByOne, "all or nothing"),
    ("allocator", _NoDoubleFreeCheck, "a double free must raise ValueError"),
    ("allocator", _FreesAsItChecks, "check every id of the list before changing any count"),
    ("allocator", _RefusesTheLastPages, "(>, not >=)"),
    ("allocator", _NegativeIdsPass, "reads refs[-1] as the LAST page"),
    ("refcounts", _ForksFreePages, "only pages in use can be shared"),
    ("refcounts", _ForksAsItChecks, "check every id of the list before changing any count"),
    ("refcounts", _ForkSorts, "in the order it was given"),
    ("refcounts", _ForkCopies, "fork shares, it does not copy"),
    ("refcounts", _ForkReturnsItsArgument, "return a new list"),
    ("append_tokens", _append(lambda s, n, p: _ceil(s + n, 16)), "pages of 16 tokens",
     ["round up", "count the new tokens' last one"]),
    ("append_tokens", _append(lambda s, n, p: (s + n) // p), "round up"),
    ("append_tokens", _append(lambda s, n, p: (s + n) // p + 1), "one page too many"),
    ("append_tokens", lambda t, s, n, p, a: t.extend(a.allocate(_ceil(n, p))),
     "still has room for 2 tokens"),
    ("append_tokens", lambda t, s, n, p, a: t + a.allocate(max(0, _ceil(s + n, p) - len(t))),
     "extend `table` in place"),
    ("append_tokens", _append_page_by_page, "in one allocate(n) call"),
    ("block_tables", _tables(pad=0), "with -1"),
    ("block_tables", _tables_transposed, "transposed"),
    ("block_tables", _tables(pages=lambda n, p: n // p), "round up"),
    ("block_tables", _tables(dtype=np.int64), "np.int32"),
    ("block_tables", _tables(pages=lambda n, p: n // p + 1), "one too many"),
]


class _StackAllocator:
    """A LIFO free list and a dict of reference counts."""

    def __init__(self, num_pages):
        self.num_pages = num_pages
        self._stack = list(range(num_pages - 1, -1, -1))
        self._refs = {}

    @property
    def num_free(self):
        return len(self._stack)

    def ref_count(self, page):
        return self._refs.get(page, 0)

    def allocate(self, n):
        if n > len(self._stack):
            raise pl.OutOfPagesError(n, len(self._stack), self.num_pages)
        pages = [self._stack.pop() for _ in range(n)]
        self._refs.update((page, 1) for page in pages)
        return pages

    def _in_use(self, pages):
        pages = list(pages)
        bad = next((p for p in pages if not (0 <= p < self.num_pages)
                    or pages.count(p) > self.ref_count(p)), None)
        if bad is not None:
            raise ValueError(f"page {bad} is not in use")
        return pages

    def free(self, pages):
        for page in self._in_use(pages):
            self._refs[page] -= 1
            if not self._refs[page]:
                del self._refs[page]
                self._stack.append(page)

    def fork(self, pages):
        pages = list(pages)
        for page in pages:
            if not (0 <= page < self.num_pages) or not self.ref_count(page):
                raise ValueError(f"page {page} is free")
        for page in pages:
            self._refs[page] += 1
        return pages


class _HeapAllocator(GoodAllocator):
    """The lowest free page first (a heap), checks done with Counter."""

    def __init__(self, num_pages):
        super().__init__(num_pages)
        self.free_list = list(range(num_pages))

    def allocate(self, n):
        if n > len(self.free_list):
            raise pl.OutOfPagesError(n, len(self.free_list), self.num_pages)
        pages = [heapq.heappop(self.free_list) for _ in range(n)]
        for page in pages:
            self.refs[page] = 1
        return pages

    def _check_free(self, pages):
        counts = Counter(pages)
        for page, times in counts.items():
            if not (isinstance(page, int) and 0 <= page < self.num_pages) \
                    or self.refs[page] < times:
                raise ValueError(f"page {page} cannot be freed {times} times")
        return list(pages)

    def _release(self, pages):
        for page in pages:
            self.refs[page] -= 1
            if self.refs[page] == 0:
                heapq.heappush(self.free_list, page)


RIGHT_ALLOCATORS = [("allocator", GoodAllocator), ("allocator", _StackAllocator),
                    ("allocator", _HeapAllocator), ("refcounts", GoodAllocator),
                    ("refcounts", _StackAllocator), ("refcounts", _HeapAllocator)]


def _append_plus_equals(table, seq_len, n_new, page_size, allocator):
    needed = math.ceil((seq_len + n_new) / page_size) - len(table)
    table += allocator.allocate(needed) if needed > 0 else []   # (+= on a list: in place)


def _append_slice(table, seq_len, n_new, page_size, allocator):
    table[len(table):] = allocator.allocate(max(0, _ceil(seq_len + n_new, page_size) - len(table)))


def _tables_one_by_one(seq_lens, page_size, allocator):
    counts = [_ceil(n, page_size) for n in seq_lens]
    out = -np.ones((len(seq_lens), max(counts, default=0) or 1), dtype=np.int32)
    for row, count in enumerate(counts):
        for col in range(count):
            out[row, col] = allocator.allocate(1)[0]
    return out, np.array(seq_lens, np.int32)


def _tables_from_lists(seq_lens, page_size, allocator):
    rows = [allocator.allocate(math.ceil(n / page_size)) for n in seq_lens]
    width = max(1, max(map(len, rows), default=0))
    padded = [row + [-1] * (width - len(row)) for row in rows]
    return (np.array(padded, dtype=np.int32).reshape(len(rows), width),
            np.array(seq_lens, dtype=np.int32))


RIGHT_01 = RIGHT_ALLOCATORS + [
    ("append_tokens", _append_plus_equals), ("append_tokens", _append_slice),
    ("append_tokens", _append(lambda s, n, p: (s + n + p - 1) // p)),
    ("block_tables", _tables_one_by_one), ("block_tables", _tables_from_lists),
    ("block_tables", _tables(pages=lambda n, p: math.ceil(n / p))),
]


# -- lesson 02 ----------------------------------------------------------------------------------

def _gather(slots_of):
    def gather_numpy(k_cache, row, seq_len):
        pages, page_size, heads, dim = k_cache.shape
        return k_cache.reshape(pages * page_size, heads, dim)[slots_of(
            np.asarray(row), np.arange(seq_len), page_size)]
    return gather_numpy


LESSON_02 = [
    ("slot_of", lambda r, t, p: int(r[t // p]), "physical page by page_size"),
    ("slot_of", lambda r, t, p: (t // p) * p + t % p, "block table"),
    ("slot_of", lambda r, t, p: int(r[t % p]) * p + t // p, "not the other way round"),
    ("slot_of", lambda r, t, p: int(r[t // p]) * p + t % p + 1, "off-by-one"),
    ("slot_of", lambda r, t, p: int(r[t // 16]) * 16 + t % 16, "token % page_size"),
    ("kv_offset", lambda s, h, d, H, D: s * D + d, "(slot * num_kv_heads + kv_head)"),
    ("kv_offset", lambda s, h, d, H, D: (s * D + d) * H + h, "NHD"),
    ("kv_offset", lambda s, h, d, H, D: (s + h) * D + d, "the guide's bug"),
    ("kv_offset", lambda s, h, d, H, D: ((s * H + h) * D + d) * 4, "drop the * 4"),
    ("kv_offset", lambda s, h, d, H, D: s * H * D + h * H + d, "not num_kv_heads"),
    ("gather_numpy", _gather(lambda r, t, p: r[t // p]), "slot = row[t // page_size]"),
    ("gather_numpy", _gather(lambda r, t, p: t), "the cache is not contiguous"),
    ("gather_numpy", lambda k, r, L: np.concatenate([k[p] for p in r[:_ceil(L, k.shape[1])]]),
     "keep the first seq_len tokens"),
    ("gather_numpy", lambda k, r, L: _gather(lambda r, t, p: r[t // p] * p + t % p)(k, r, L)
     .transpose(1, 0, 2), "you returned the heads first"),
    ("gather_numpy", lambda k, r, L: np.stack([k[r[t // k.shape[1]], t % k.shape[1]]
                                               for t in range(L)]), "a Python loop"),
]

RIGHT_02 = [
    ("slot_of", lambda r, t, p: (lambda q, o: int(r[q]) * p + o)(*divmod(t, p))),
    ("slot_of", lambda r, t, p: int(np.int64(r[t // p]) * p + t % p)),
    ("slot_of", lambda r, t, p: list(map(int, r))[t // p] * p + t - (t // p) * p),
    ("kv_offset", lambda s, h, d, H, D: s * H * D + h * D + d),
    ("kv_offset", lambda s, h, d, H, D: d + D * (h + H * s)),
    ("kv_offset", lambda s, h, d, H, D: int(np.ravel_multi_index((s, h, d), (s + 1, H, D)))),
    ("gather_numpy", lambda k, r, L: k[np.asarray(r)[np.arange(L) // k.shape[1]],
                                       np.arange(L) % k.shape[1]]),
    ("gather_numpy", lambda k, r, L: np.concatenate(
        [k[p] for p in r[:_ceil(L, k.shape[1])]] or [k[:0, 0]])[:L]),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases",
                         as_params(LESSON_00 + LESSON_01 + LESSON_02))
def test_lessons_00_02_mistakes_are_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


RIGHT = RIGHT_00 + RIGHT_01 + RIGHT_02


@pytest.mark.parametrize("task, impl", RIGHT, ids=[f"{t}-{i}" for i, (t, _) in enumerate(RIGHT)])
def test_lessons_00_02_right_answers_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed
