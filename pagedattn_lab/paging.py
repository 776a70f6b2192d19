"""The physical page pool: a free list and a reference count per page.

This is the part of PagedAttention that is plain operating-systems code. The KV cache is
carved into `num_pages` fixed-size pages; a sequence owns a list of them (its block
table). Reference counts let two sequences share a page (a common prompt prefix, or a
forked beam) and return it to the free list only when the last owner lets go.

Every operation is all-or-nothing: it checks its whole request first and raises before
touching any state, so a failed call leaves the allocator exactly as it was.
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from .validate import MAX_PAGES, check_int, check_int_list
from .validate_kinds import is_int
from .validate_memory import check_memory


# A page handed out costs ~200 bytes of Python objects (its id in the list returned, its
# reference count; measured: ru_maxrss over 2^21 pages). A pool of 2^31 pages is free until
# used, but allocate(2^31 - 1) would take ~400 GB and get the process killed, no error raised.
BOOKKEEPING_BYTES = 200
BIG_ALLOCATION = 2**16   # pages: 13 MB of bookkeeping, below any machine's memory


class OutOfPagesError(RuntimeError):
    """Raised when an allocation asks for more pages than are free (nothing is allocated)."""

    def __init__(self, requested: int, free: int, total: int):
        self.requested, self.free, self.total = requested, free, total
        super().__init__(f"out of KV-cache pages: requested {requested}, only {free} of "
                         f"{total} free; free a finished sequence or grow num_pages")


def _as_page_ids(pages: Iterable[int], argname: str) -> list[int]:
    """Page ids as Python ints, refusing floats, bools, None and a bare id by name."""
    return check_int_list(pages, argname, "page id")


class AllocatorState(NamedTuple):
    """A copy of an allocator's bookkeeping (`BlockAllocator.state()`), to put back with
    `restore()` when a larger operation fails halfway."""
    next_fresh: int
    returned: tuple[int, ...]
    owners: dict[int, int]


def check_page_ids(ids: list[int], name: str, num_pages: int, holder: str) -> None:
    """Every id in 0..num_pages-1, else a ValueError naming `name`[i] (a negative id would
    index from the end)."""
    for i, page in enumerate(ids):
        check_page_id(page, f"{name}[{i}]", num_pages, holder)


def check_page_id(page: int, name: str, num_pages: int, holder: str) -> None:
    """One id in 0..num_pages-1, else a ValueError naming `name`."""
    if not 0 <= page < num_pages:
        raise ValueError(f"{name}: page id {page} is not in this {holder} (valid ids are "
                         f"0..{num_pages - 1})")


def check_owners(ids: list[int], owners) -> None:
    """Refuse a free of `ids` (a list named "pages") that drops an owner a page does not
    have, naming the entry: a page already free, or listed more times than its owners
    (`owners(page)`). The allocator's and the engine's BlockPool's one rule."""
    for page, times in Counter(ids).items():
        count = owners(page)
        if count == 0:
            raise ValueError(f"pages[{ids.index(page)}]: page {page} is already free "
                             f"(double free?)")
        if times > count:   # named: the first entry past its owners, and every entry of it
            at = [i for i, p in enumerate(ids) if p == page]
            raise ValueError(f"pages[{at[count]}]: page {page} is listed {times} times but "
                             f"has only {count} owner(s) (entries "
                             f"{', '.join(map(str, at[:-1]))} and {at[-1]})")


class BlockAllocator:
    """Hands out physical page ids 0..num_pages-1 from a free list, with reference counts.

    >>> alloc = BlockAllocator(4)
    >>> alloc.allocate(3)
    [0, 1, 2]
    >>> alloc.free([1]); alloc.num_free
    2
    """

    def __init__(self, num_pages: int):
        if isinstance(num_pages, bool) or not isinstance(num_pages, (int, np.integer)):
            raise TypeError(f"num_pages: expected an int, got {type(num_pages).__name__}")
        if num_pages <= 0:
            raise ValueError(f"num_pages: expected a positive number of pages, got {num_pages}")
        if num_pages > MAX_PAGES:
            raise ValueError(f"num_pages: expected at most {MAX_PAGES} pages (block tables hold "
                             f"page ids as int32), got {num_pages}")
        self.num_pages = int(num_pages)
        # The free list is FIFO: a freed page goes to the back, so the pool cycles through
        # every page and a long run scatters sequences over the whole cache, as a real
        # server's does. It is kept in two parts with the order of one queue: the pages never
        # handed out (next_fresh .. num_pages-1, always at the front) and the queue of pages
        # given back. So a pool of a billion pages costs nothing until its pages are used.
        self._next_fresh = 0
        self._returned: deque[int] = deque()
        self._owners: dict[int, int] = {}   # page -> reference count, for pages in use only

    @property
    def num_free(self) -> int:
        return self.num_pages - self._next_fresh + len(self._returned)

    @property
    def num_used(self) -> int:
        return len(self._owners)

    def ref_count(self, page: int) -> int:
        """How many owners page `page` has (0 means it is free)."""
        if not is_int(page):   # one id, named as such (not "page[0]" of a list never passed)
            raise TypeError(f"page: expected an integer page id, got {page!r} "
                            f"({type(page).__name__})")
        check_page_id(int(page), "page", self.num_pages, "allocator")
        return self._owners.get(int(page), 0)

    def allocate(self, n: int) -> list[int]:
        """Take `n` free pages, each with reference count 1. All or nothing."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n: expected an int number of pages, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n: expected a number of pages >= 0, got {n}")
        if n > self.num_free:
            raise OutOfPagesError(int(n), self.num_free, self.num_pages)
        if n > BIG_ALLOCATION:   # (small ones skip the check: it would cost each call ~20%)
            check_memory(n * BOOKKEEPING_BYTES, "cpu", "n", f"the bookkeeping of {n} pages")
        fresh = min(int(n), self.num_pages - self._next_fresh)
        pages = list(range(self._next_fresh, self._next_fresh + fresh))
        self._next_fresh += fresh
        pages += [self._returned.popleft() for _ in range(int(n) - fresh)]
        for page in pages:
            self._owners[page] = 1
        return pages

    @property
    def num_never_used(self) -> int:
        """Free pages never handed out yet (`allocate` hands these out first, in order)."""
        return self.num_pages - self._next_fresh

    def unallocate(self, pages: Iterable[int], never_used: int | None = None) -> None:
        """Undo the `allocate` that returned `pages` (each still with one owner): each goes
        back to the free list in its place, as if never handed out (a larger operation's
        roll-back: `free` would put them at the back, changing what is handed out next), at
        the cost of the pages it took (`state`/`restore` copy the whole bookkeeping).
        `never_used`: `num_never_used` just before that allocate. Without it, the leading pages
        that run up to the never-used ones are taken for never used: the same free list, though
        with none left a returned page num_pages - 1 then comes back as never used."""
        ids = _as_page_ids(pages, "pages")
        self._check_ids(ids, "pages")
        for i, page in enumerate(ids):
            if self._owners.get(page) != 1:
                raise ValueError(f"pages[{i}]: page {page} has {self._owners.get(page, 0)} "
                                 f"owner(s), not the 1 that allocate() gives it")
        # allocate() hands a page out once: a repeat would be dropped twice below, its
        # second removal failing (KeyError) with the first already done
        check_owners(ids, lambda page: 1)
        if never_used is None:
            fresh = self._next_fresh - ids[0] if ids and ids[0] < self._next_fresh else 0
            if not 0 < fresh <= len(ids) or ids[:fresh] != list(range(ids[0], self._next_fresh)):
                fresh = 0
        else:
            fresh = min(len(ids), check_int(never_used, "never_used", minimum=0))
            if ids[:fresh] != list(range(self._next_fresh - fresh, self._next_fresh)):
                raise ValueError(f"pages: expected the pages the last allocate() returned, "
                                 f"the first {fresh} never used before it; got {ids[:8]}")
        for page in ids:
            del self._owners[page]
        self._next_fresh -= fresh
        self._returned.extendleft(reversed(ids[fresh:]))

    def incref(self, pages: Iterable[int]) -> None:
        """Add an owner to each page (sharing). Every page must already be in use."""
        ids = _as_page_ids(pages, "pages")
        self._check_ids(ids, "pages")
        for i, page in enumerate(ids):
            if page not in self._owners:
                raise ValueError(f"pages[{i}]: page {page} is free; only a page in use can be "
                                 "shared (allocate it first)")
        for page in ids:
            self._owners[page] += 1

    def fork(self, pages: Iterable[int]) -> list[int]:
        """Share a block table: every page gains an owner; returns the same ids as a new list."""
        ids = _as_page_ids(pages, "pages")
        self.incref(ids)
        return list(ids)

    def free(self, pages: Iterable[int]) -> None:
        """Drop one owner from each page; a page whose count reaches 0 returns to the free list.

        Raises (changing nothing) on an id out of range, a page that is already free
        (double free), or a page listed more times than it has owners.
        """
        ids = _as_page_ids(pages, "pages")
        self._check_ids(ids, "pages")
        check_owners(ids, lambda page: self._owners.get(page, 0))
        for page in ids:
            self._owners[page] -= 1
            if self._owners[page] == 0:
                del self._owners[page]
                self._returned.append(page)

    def free_list(self) -> list[int]:
        """The free pages in the order `allocate` hands them out."""
        return list(range(self._next_fresh, self.num_pages)) + list(self._returned)

    def state(self) -> AllocatorState:
        """A copy of the bookkeeping (free list and reference counts), for `restore`.
        Costs time in proportion to the pages in use, not to the size of the pool."""
        return AllocatorState(self._next_fresh, tuple(self._returned), dict(self._owners))

    def restore(self, state: AllocatorState) -> None:
        """Put back the bookkeeping saved by `state()`: every page free or owned as it was."""
        if not isinstance(state, AllocatorState):
            raise TypeError(f"state: expected what state() returns (an AllocatorState), got "
                            f"{type(state).__name__}")
        self._next_fresh, returned, owned = self._check_state(state)
        self._returned = deque(returned)
        self._owners = dict(zip(owned, (int(n) for n in state.owners.values())))

    def _check_state(self, state: AllocatorState) -> tuple[int, list[int], list[int]]:
        """(next_fresh, returned, owned pages) as Python ints; refuses, changing nothing, a
        state this allocator cannot have been in (another pool's, or edited): restored, it
        would make num_free negative, or hand a page out twice. Costs time in proportion to
        the pages it lists, as state() does."""
        fresh = state.next_fresh
        if not (is_int(fresh) and 0 <= fresh <= self.num_pages):
            raise ValueError(f"state: next_fresh {fresh!r} is not in 0..{self.num_pages} (a "
                             f"state of another allocator?)")
        if not isinstance(state.owners, dict):
            raise TypeError(f"state: owners must be a dict page -> count, got "
                            f"{type(state.owners).__name__}")
        returned = check_int_list(state.returned, "state.returned", "page id")
        owned = check_int_list(list(state.owners), "state.owners", "page id")
        pages = returned + owned
        outside = [p for p in pages if not 0 <= p < fresh]
        if outside:
            raise ValueError(f"state: page {outside[0]} is not among the {fresh} pages handed "
                             f"out (a state of another allocator?)")
        if len(set(pages)) != len(pages):
            twice = next(p for p, n in Counter(pages).items() if n > 1)
            raise ValueError(f"state: page {twice} is listed twice (free and in use, or "
                             f"twice in one of them)")
        if len(pages) != fresh:
            raise ValueError(f"state: {fresh} pages were handed out but {len(pages)} are "
                             f"free or in use (a page would be lost)")
        counts = [n for n in state.owners.values() if not (is_int(n) and n >= 1)]
        if counts:
            raise ValueError(f"state: a reference count of {counts[0]!r}; expected ints >= 1")
        return int(fresh), returned, owned

    def check_invariants(self) -> None:
        """Assert the allocator's bookkeeping is self-consistent (used by the tests)."""
        returned = set(self._returned)
        assert len(returned) == len(self._returned), "a page appears twice in the free list"
        assert 0 <= self._next_fresh <= self.num_pages
        assert all(page < self._next_fresh for page in returned), \
            "a page never handed out is also in the queue of returned pages"
        for page, owners in self._owners.items():
            assert owners >= 1, f"page {page}: ref count {owners} but kept as in use"
            assert page < self._next_fresh and page not in returned, (
                f"page {page}: ref count {owners} but in the free list")
        assert self.num_free + self.num_used == self.num_pages

    def _check_ids(self, ids: list[int], argname: str) -> None:
        check_page_ids(ids, argname, self.num_pages, "allocator")

    def __repr__(self) -> str:
        return f"BlockAllocator(num_pages={self.num_pages}, free={self.num_free}, used={self.num_used})"
