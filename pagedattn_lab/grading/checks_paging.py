"""Check for lesson 01, part 1: the page allocator.

The check drives the learner's class through small scenarios that the classic mistakes
fail: a page counter that never frees (the guide's `next_page++`), a partial allocation
when the pool runs out, a double free let through, page ids 1..num_pages (the last one past
a list indexed by page id: allocator_probes.allocated names it). Its reference counts and
fork are checked in checks_refcounts.py, block tables in checks_block_tables.py.
"""
from __future__ import annotations

from ..paging import OutOfPagesError
from ..words import counted
from .allocator_probes import (ALL_FREE_HINT, ALL_OR_NOTHING_IDS, FREE_LIST_HINT,
                               NEGATIVE_ID_HINT, ZERO_HINT, allocated, expect_free,
                               expect_raises, expect_returned, legal_free, num_free,
                               ref_counts, refused)
from .report import Case, CheckResult, Mismatch, run_cases, several_fit
from .seeds import case_rng


# -- task: allocate / free -------------------------------------------------------------

NEVER_ALLOCATED_HINT = ("every page of a new pool is free, and a free page has no owner: "
                        "ref_count 0. Start every count at 0 (allocate sets 1).")
LOST_PAGES_HINT = ("a refused allocate must leave the free list as it was: pages it took "
                   "before raising are lost to every later call (num_free still counts them). "
                   "Check n against num_free before taking any page.")
ALL_OR_NOTHING_HINT = ("all or nothing: check n against the free list before popping pages, so a "
                       "failed call changes nothing.")


def _alloc_fresh(cls, num_pages: int) -> None:
    alloc = cls(num_pages)
    expect_free(alloc, num_pages, "of a new allocator", "every page starts free.")
    counts = ref_counts(alloc, range(num_pages))
    if counts != [0] * num_pages:
        raise Mismatch("ref_count of the pages of a new allocator", NEVER_ALLOCATED_HINT,
                       repr([0] * num_pages), repr(counts))
    zero = allocated(alloc, 0, "allocate(0)")
    if zero != []:
        raise Mismatch("allocate(0) should return []", ZERO_HINT, "[]", repr(zero))
    pages = allocated(alloc, 3, "allocate(3)", (cls, num_pages))
    if len(pages) != 3:
        raise Mismatch("allocate(3) returned the wrong number of pages",
                       "allocate(n) returns exactly n page ids.", "3 ids", repr(pages))
    if len(set(pages)) != 3:
        raise Mismatch(f"allocate(3) returned a page twice: {pages}",
                       "each page may have only one owner after allocate.")
    if not all(0 <= p < num_pages for p in pages):
        raise Mismatch(f"allocate(3) returned ids {pages}",
                       f"page ids are 0..num_pages-1 = 0..{num_pages - 1}: they index k_cache.")
    expect_free(alloc, num_pages - 3, "after allocate(3)", "num_free counts the free pages.")
    counts = ref_counts(alloc, pages)
    if counts != [1, 1, 1]:
        raise Mismatch("ref_count of freshly allocated pages", "allocate sets each count to 1.",
                       "[1, 1, 1]", repr(counts))
    try:
        rest = allocated(alloc, num_pages - 3, f"allocate({num_pages - 3})", (cls, num_pages))
    except OutOfPagesError as exc:
        raise Mismatch(f"allocate({num_pages - 3}) with {num_pages - 3} pages free raised "
                       "OutOfPagesError", ALL_FREE_HINT) from exc
    everything = sorted(pages + rest)
    if everything != list(range(num_pages)):
        raise Mismatch("allocating every page", f"page ids are 0..num_pages-1 = "
                       f"0..{num_pages - 1}, each once: they index k_cache.",
                       repr(list(range(num_pages))), repr(everything))
    expect_free(alloc, 0, "with every page allocated", "num_free counts the free pages.")


def _alloc_reuse(cls, num_pages: int) -> None:
    alloc = cls(num_pages)
    try:
        pages = allocated(alloc, num_pages, f"allocate({num_pages})", (cls, num_pages))
    except OutOfPagesError as exc:
        raise Mismatch(f"allocate({num_pages}) of a new pool of {num_pages} pages raised "
                       "OutOfPagesError", ALL_FREE_HINT) from exc
    giving_back = pages[1:4]
    legal_free(alloc, giving_back, f"free({giving_back})")
    expect_returned(alloc, 3, "after freeing 3 of the pages")
    counts = ref_counts(alloc, giving_back)
    if counts != [0, 0, 0]:
        raise Mismatch(f"ref_count of freed pages {giving_back}", "free drops the count to 0.",
                       "[0, 0, 0]", repr(counts))
    try:
        again = allocated(alloc, 3, "allocate(3) after freeing 3 pages", (cls, num_pages))
    except OutOfPagesError as exc:
        raise Mismatch("allocate(3) raised OutOfPagesError although 3 pages were freed",
                       FREE_LIST_HINT) from exc
    if sorted(again) != sorted(giving_back):
        raise Mismatch("allocate(3) after freeing pages", FREE_LIST_HINT,
                       f"the freed pages {sorted(giving_back)}", repr(sorted(again)))


def _alloc_out_of_pages(cls, num_pages: int) -> None:
    alloc = cls(num_pages)
    allocated(alloc, num_pages - 2, f"allocate({num_pages - 2})", (cls, num_pages))
    exc = expect_raises(lambda: alloc.allocate(3), OutOfPagesError,
                        "allocate(3) with 2 pages free",
                        "raise pagedattn_lab.OutOfPagesError when n > num_free, before taking "
                        "any page.")
    expect_free(alloc, 2, "after the failed allocate(3)", ALL_OR_NOTHING_HINT)
    told = tuple(getattr(exc, name, None) for name in ("requested", "free", "total"))
    if told != (3, 2, num_pages):
        raise Mismatch(f"the OutOfPagesError of allocate(3) with 2 of {num_pages} pages free "
                       f"says: {exc}", "raise OutOfPagesError(n, num_free, num_pages), in that "
                       "order: the message tells the caller what it asked for and what is "
                       "left.", expected=f"requested, free, total = {(3, 2, num_pages)}",
                       got=f"{told}")
    try:
        last = allocated(alloc, 2, "allocate(2)", (cls, num_pages))
    except OutOfPagesError as exc:
        raise Mismatch("allocate(2) with 2 pages free (num_free says 2) raised "
                       "OutOfPagesError after the refused allocate(3)",
                       several_fit([LOST_PAGES_HINT, ALL_FREE_HINT])) from exc
    if len(last) != 2:
        raise Mismatch("allocate(2) with 2 pages free", "the last two pages are still free: "
                       "allocate(n) returns exactly n page ids.", "2 ids", repr(last))


def _alloc_bad_free(cls, num_pages: int) -> None:
    alloc = cls(num_pages)
    pages = allocated(alloc, 2, "allocate(2)", (cls, num_pages))
    legal_free(alloc, [pages[0]], f"free([{pages[0]}])")
    # (a page that never came back would make the refused double free below look lossy)
    expect_returned(alloc, num_pages - 1, f"after free([{pages[0]}])")
    expect_raises(lambda: alloc.free([pages[0]]), ValueError, "freeing the same page twice",
                   "a double free must raise ValueError: otherwise the page enters the free list "
                   "twice and two sequences get it.")
    expect_free(alloc, num_pages - 1, "after the refused double free",
                 "check before changing anything.")
    never = next(p for p in range(num_pages - 1, -1, -1) if p not in pages)
    expect_raises(lambda: alloc.free([never]), ValueError,
                  f"freeing page {never}, which was never allocated",
                  "a page never allocated is free (ref_count 0): freeing it is a double free, "
                  "ValueError, or it enters the free list a second time and two sequences get "
                  "it.")
    expect_raises(lambda: alloc.free([num_pages + 3]), ValueError,
                   f"freeing page {num_pages + 3} (not in the pool)",
                   f"refuse ids outside 0..{num_pages - 1} with ValueError.")


def _alloc_bad_lists(cls, num_pages: int) -> None:
    """Lists mixing good ids with a bad one: each call fails as a whole."""
    alloc = cls(num_pages)
    pages = allocated(alloc, num_pages, f"allocate({num_pages})", (cls, num_pages))
    gone, a, b = pages[2], pages[0], pages[-1]
    legal_free(alloc, [gone], f"free([{gone}])")
    expect_returned(alloc, 1, f"after free([{gone}])")
    refused(alloc, num_pages, lambda: alloc.free([a, gone]), f"free([{a}, {gone}]) with page "
             f"{gone} already free", "a list holding a page that is already free must raise "
             "ValueError (a double free), even when the ids before it are fine.")
    refused(alloc, num_pages, lambda: alloc.free([b, b]), f"free([{b}, {b}]) with page {b} "
             "owned once", f"the list frees page {b} twice but it has one owner: count each "
             "id's occurrences against its reference count, or the page enters the free list "
             "twice.")
    refused(alloc, num_pages, lambda: alloc.free([-1]), "free([-1])", NEGATIVE_ID_HINT)
    refused(alloc, num_pages, lambda: alloc.free([a, num_pages]),
             f"free([{a}, {num_pages}]) ({num_pages} is past the pool)",
             f"refuse ids outside 0..{num_pages - 1} with ValueError.")
    expect_free(alloc, 1, "after four refused calls", ALL_OR_NOTHING_IDS)


def _alloc_random(cls, num_pages: int, seed: int, *, steps: int = 150) -> None:
    rng = case_rng(seed)
    alloc = cls(num_pages)
    owned: list[list[int]] = []
    in_use: set[int] = set()
    refused_at = None   # the first step whose allocate was (rightly) refused
    for step in range(steps):
        if owned and rng.random() < 0.45:
            pages = owned.pop(int(rng.integers(len(owned))))
            legal_free(alloc, pages, f"step {step}: free({pages})")
            in_use.difference_update(pages)
        else:
            n = int(rng.integers(0, 4))
            if n > num_pages - len(in_use):
                before = num_free(alloc)
                expect_raises(lambda: alloc.allocate(n), OutOfPagesError,
                               f"step {step}: allocate({n}) with {num_pages - len(in_use)} free",
                               "raise OutOfPagesError when the pool cannot satisfy the request.")
                # (told here, where it happens: a later allocate's refusal named only that one)
                expect_free(alloc, before, f"after the refused allocate({n}) of step {step}",
                            ALL_OR_NOTHING_HINT)
                refused_at = step if refused_at is None else refused_at
                continue
            try:
                pages = allocated(alloc, n, f"step {step}: allocate({n})", (cls, num_pages))
            except OutOfPagesError as exc:
                free = num_pages - len(in_use)
                hint = FREE_LIST_HINT
                if free == num_free(alloc) and refused_at is not None:
                    # num_free is right, the pages are not: lost in a refused call, or >=
                    fits = [f"an allocate was refused at step {refused_at}: " + LOST_PAGES_HINT]
                    if n == free:   # all the free pages asked for: a >= refuses that too
                        fits.append(ALL_FREE_HINT)
                    hint = several_fit(fits)
                elif n == free == num_free(alloc):
                    hint = ALL_FREE_HINT
                raise Mismatch(f"step {step}: allocate({n}) raised OutOfPagesError with "
                               f"{counted(free, 'page')} free", hint) from exc
            if len(set(pages)) != len(pages):
                raise Mismatch(f"step {step}: allocate({n}) returned a page twice: {pages}",
                               "each page may have only one owner after allocate.")
            clash = in_use.intersection(pages)
            if clash:
                raise Mismatch(f"step {step}: allocate({n}) returned {pages}; pages "
                               f"{sorted(clash)} are already in use",
                               "a page in use must not be handed out again until it is freed.")
            if len(pages) != n or not all(0 <= p < num_pages for p in pages):
                raise Mismatch(f"step {step}: allocate({n}) returned {pages}",
                               f"n distinct ids in 0..{num_pages - 1}.")
            owned.append(pages)
            in_use.update(pages)
        expect_returned(alloc, num_pages - len(in_use), f"after step {step}")


def allocator(cls) -> CheckResult:
    """Check `cls(num_pages)` with allocate(n), free(pages), num_free and ref_count(page)."""
    cases = [
        Case("a fresh pool", {"num_pages": 8}, lambda: _alloc_fresh(cls, 8)),
        Case("freed pages come back", {"num_pages": 6}, lambda: _alloc_reuse(cls, 6)),
        Case("out of pages is all or nothing", {"num_pages": 7},
             lambda: _alloc_out_of_pages(cls, 7)),
        Case("double free and foreign ids", {"num_pages": 5}, lambda: _alloc_bad_free(cls, 5)),
        Case("a bad id among good ones changes nothing", {"num_pages": 6},
             lambda: _alloc_bad_lists(cls, 6)),
        Case("150 random allocate/free", {"num_pages": 12, "seed": 1},
             lambda: _alloc_random(cls, 12, 1)),
    ]
    return run_cases("allocator", f"{getattr(cls, '__name__', cls)}: allocate and free", cases)
