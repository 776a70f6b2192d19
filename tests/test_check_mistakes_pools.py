"""Wrong answers to workbook 01 that a fresh pool hides: page ids from a counter, a free that
dedupes, an OutOfPagesError with its numbers swapped, a table grown by rebinding.

The checks' pools have served other sequences before (some pages held, the free list
shuffled), so these run under a few grader salts too.
"""
import contextlib

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.grading import seeds
from tests.check_helpers import GoodAllocator, as_params, assert_caught, run_check

SALTS = [None, 7, 2**40 + 3]


class SwappedErrorArgs(GoodAllocator):
    def allocate(self, n):
        if n > len(self.free_list):
            raise pl.OutOfPagesError(n, self.num_pages, len(self.free_list))
        return super().allocate(n)


class AtLeastAllocator(GoodAllocator):
    """Refuses to hand out the last free pages (>= instead of >)."""

    def allocate(self, n):
        if n and n >= len(self.free_list):
            raise pl.OutOfPagesError(n, len(self.free_list), self.num_pages)
        return super().allocate(n)


class SetFree(GoodAllocator):
    """Checks the counts, then drops one owner per distinct id."""

    def free(self, pages):
        self._release(set(self._check_free(pages)))


class TupleFork(GoodAllocator):
    def fork(self, pages):
        return tuple(super().fork(pages))


def _need(table, seq_len, n_new, page_size):
    return -(-(seq_len + n_new) // page_size) - len(table)


def append_counted_ids(table, seq_len, n_new, page_size, alloc):
    """Takes the pages, but writes ids that follow the last one (the guide's counter)."""
    k = _need(table, seq_len, n_new, page_size)
    if k > 0:
        first = alloc.allocate(k)[0]
        start = table[-1] + 1 if table else first
        table.extend(range(start, start + k))


def append_rebinding(table, seq_len, n_new, page_size, alloc):
    k = _need(table, seq_len, n_new, page_size)
    if k > 0:
        table = table + alloc.allocate(k)   # noqa: F841 - the mistake


def append_a_list(table, seq_len, n_new, page_size, alloc):
    k = _need(table, seq_len, n_new, page_size)
    if k > 0:
        table.append(alloc.allocate(k))


def _pack(rows, seq_lens, width=None):
    width = max([len(r) for r in rows] + [1]) if width is None else width
    out = np.full((len(seq_lens), width), -1, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out, np.asarray(seq_lens, dtype=np.int32)


def tables_counter_ids(seq_lens, page_size, alloc):
    """Asks the allocator for the right number of pages, then numbers them 0, 1, 2..."""
    rows, nxt = [], 0
    for n in seq_lens:
        k = -(-n // page_size)
        rows.append(list(range(nxt, nxt + k)))
        nxt += k
    alloc.allocate(nxt)
    return _pack(rows, seq_lens)


def tables_page_for_empty(seq_lens, page_size, alloc):
    return _pack([alloc.allocate(max(1, -(-n // page_size))) for n in seq_lens], seq_lens)


def tables_floor_plus_one(seq_lens, page_size, alloc):
    return _pack([alloc.allocate(n // page_size + 1) for n in seq_lens], seq_lens)


def tables_rows_reversed(seq_lens, page_size, alloc):
    return _pack([alloc.allocate(-(-n // page_size)) for n in seq_lens][::-1], seq_lens)


def tables_empty_no_column(seq_lens, page_size, alloc):
    if not seq_lens:
        return np.full((0, 0), -1, np.int32), np.zeros(0, np.int32)
    return _pack([alloc.allocate(-(-n // page_size)) for n in seq_lens], seq_lens)


MISTAKES = [
    ("allocator", SwappedErrorArgs, "in that order"),
    ("allocator", AtLeastAllocator, ">, not >="),
    ("refcounts", SetFree, "set()"),
    ("refcounts", TupleFork, "return a list"),
    ("append_tokens", append_counted_ids, "the ids allocate returned"),
    ("append_tokens", append_rebinding, "in place", ["still has room", "round up"]),
    ("append_tokens", append_a_list, "table.extend(pages)", ["still has room", "round up"]),
    ("block_tables", tables_counter_ids, "use the ids allocate returns"),
    ("block_tables", tables_page_for_empty, "no tokens yet owns no page",
     ["fill entries past", "+ 1 is one too many"]),
    ("block_tables", tables_floor_plus_one, "one too many"),
    ("block_tables", tables_rows_reversed, "row i is sequence i", ["out of range"]),
    ("block_tables", tables_empty_no_column, "an empty batch is still a batch",
     ["whole batch's page count"]),
]


def _salted(salt):
    return seeds.salted(salt) if salt is not None else contextlib.nullcontext()


@pytest.mark.parametrize("salt", SALTS)
@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases, salt):
    with _salted(salt):
        assert_caught(task, impl, phrase, not_phrases=not_phrases)


class NumpyRefs(GoodAllocator):
    def __init__(self, num_pages):
        super().__init__(num_pages)
        self.refs = np.zeros(num_pages, dtype=np.int64)

    def ref_count(self, page):
        return int(self.refs[page])


def append_from_room(table, seq_len, n_new, page_size, alloc):
    room = len(table) * page_size - seq_len
    if n_new > room:
        table.extend(alloc.allocate(-(-(n_new - room) // page_size)))


def append_reversed(table, seq_len, n_new, page_size, alloc):
    table += alloc.allocate(max(_need(table, seq_len, n_new, page_size), 0))[::-1]


def tables_padded_rows(seq_lens, page_size, alloc):
    rows = [alloc.allocate(-(-n // page_size)) for n in seq_lens]
    width = max([len(r) for r in rows] + [1])
    return (np.array([r + [-1] * (width - len(r)) for r in rows], dtype=np.int32)
            .reshape(len(rows), width), np.array(seq_lens, dtype=np.int32))


@pytest.mark.parametrize("salt", SALTS)
@pytest.mark.parametrize("task, impl", [("allocator", NumpyRefs), ("refcounts", NumpyRefs),
                                        ("append_tokens", append_from_room),
                                        ("append_tokens", append_reversed),
                                        ("block_tables", tables_padded_rows)])
def test_right_answers_in_another_style_pass(task, impl, salt):
    with _salted(salt):
        result, printed = run_check(task, impl)
    assert result.passed, printed
