"""Check for lesson 01, part 1: the allocator's reference counts and fork.

The check drives the learner's allocator (its allocate and free checked in checks_paging.py)
through sharing: fork adds an owner to each page (one per occurrence: a page listed twice
gains two, as free takes two away) and returns the ids in order (fork([]) gives []), and a
page shared by two sequences goes back to the free list only when its last owner frees it,
not while one of them still owns it.
"""
from __future__ import annotations

from .allocator_probes import (NEGATIVE_ID_HINT, allocated, expect_free, expect_raises, ids,
                               kept, num_free, ref_counts, refused, state, valid_call)
from .report import Case, CheckResult, Mismatch, run_cases
from .seeds import case_rng


# -- task: reference counts and fork ----------------------------------------------------

SHARED_FREE_HINT = ("a page owned by two sequences went back to the free list after one free: "
                    "free must decrement the count and return the page only when it reaches 0.")
RETURN_AT_ZERO_HINT = ("a page whose count reached 0 has no owner left: it must go back to the "
                       "free list.")
ORDER_HINT = ("fork must return the ids in the order it was given: entry i of a block table "
              "holds the sequence's tokens i * page_size onwards, so a reordered copy reads "
              "the prompt's pages in the wrong order.")


def _expect_free_shared(alloc, expected: int, when: str) -> None:
    """num_free after frees of shared pages: too many free means a shared page was released."""
    got = num_free(alloc)
    if got != expected:
        hint = SHARED_FREE_HINT if got > expected else RETURN_AT_ZERO_HINT
        raise Mismatch(f"num_free {when}", hint, expected=str(expected), got=str(got))


def _expect_fork_result(pages: list[int], shared: list[int], what: str) -> None:
    if shared == pages:
        return
    if sorted(shared) == sorted(pages):
        raise Mismatch(f"{what} returned the right ids in another order", ORDER_HINT,
                       repr(pages), repr(shared))
    raise Mismatch(f"{what} returned different pages", "fork shares, it does not copy: it "
                   "returns the same ids, in the same order.", repr(pages), repr(shared))


def _valid_fork(fork, pages: list[int], what: str):
    """`fork(pages)` of pages each owned once (valid_call)."""
    return valid_call(lambda: fork(pages), what, f"pages {pages} are in use (ref_count 1 "
                      "each), so forking them is valid: raise only for an id outside "
                      "0..num_pages-1 or a free page (ref_count 0).")


def _legal_fork(alloc, pages: list[int], what: str):
    """_valid_fork, which also demands that fork leave the caller's list as it was."""
    return _valid_fork(lambda given: kept(alloc.fork, given, what), pages, what)


def _fork_basic(cls) -> None:
    alloc = cls(4)
    pages = ids(alloc.allocate(2), "allocate(2)")
    raw = _valid_fork(alloc.fork, pages, f"fork({pages})")
    _expect_fork_result(pages, ids(raw, "fork(pages)"), "fork(pages)")
    if not isinstance(raw, list):
        raise Mismatch(f"fork returned a {type(raw).__name__}", "return a list: it is the new "
                       "sequence's block table, which grows in place as tokens arrive "
                       "(table.extend), and a tuple or an array cannot.", "list",
                       type(raw).__name__)
    if raw is pages:
        raise Mismatch("fork returned the very list it was given",
                       "return a new list (list(pages)): the two sequences' tables must be "
                       "separate lists even though they hold the same ids.")
    _expect_forked(alloc, pages, "fork")
    expect_free(alloc, 2, "after fork", "fork takes no new pages.")


def _expect_forked(alloc, pages: list[int], what: str) -> None:
    """Each of `pages`, owned once, has two owners after `what` forked them."""
    counts = ref_counts(alloc, pages)
    if counts != [2] * len(pages):
        raise Mismatch(f"ref_count after {what}", "fork adds one owner to every page.",
                       repr([2] * len(pages)), repr(counts))


def _fork_free(cls) -> None:
    alloc = cls(4)
    pages = ids(alloc.allocate(2), "allocate(2)")
    _legal_fork(alloc, pages, f"fork({pages})")
    # (a fork that counted no owner makes the free below look like a shared page released)
    _expect_forked(alloc, pages, f"fork({pages})")
    kept(alloc.free, pages, f"free({pages})")
    _expect_free_shared(alloc, 2, "after the first owner freed the shared pages")
    counts = ref_counts(alloc, pages)
    if counts != [1, 1]:
        raise Mismatch("ref_count after one of two owners freed",
                       SHARED_FREE_HINT if counts == [0, 0] else "free takes one owner away "
                       "from each page: 2 owners become 1.", "[1, 1]", repr(counts))
    kept(alloc.free, pages, f"free({pages}) by the second owner")
    expect_free(alloc, 4, "after both owners freed", "the last free returns the page.")


def _fork_free_both(cls) -> None:
    """free(a + b) of a sequence and its fork: every shared page is listed once per owner."""
    alloc = cls(5)
    pages = ids(alloc.allocate(3), "allocate(3)")
    both = pages + ids(_legal_fork(alloc, pages, f"fork({pages})"), "fork(pages)")
    try:
        kept(alloc.free, both, f"free({both})")
    except ValueError as exc:
        raise Mismatch(f"free({both}) raised ValueError: {exc}", "each page has 2 owners and "
                       "is listed twice: that is allowed. Compare how often a page is listed "
                       "with its reference count.") from exc
    counts = ref_counts(alloc, pages)
    if counts != [0, 0, 0]:
        raise Mismatch(f"ref_count after free({both}) of a sequence and its fork",
                       "a page listed twice drops two owners: count every occurrence (a "
                       "set() of the ids drops one).", "[0, 0, 0]", repr(counts))
    _expect_free_shared(alloc, 5, f"after free({both})")


REPEAT_HINT = ("an id listed twice gains two owners, as free([p, p]) takes two away: count "
               "every occurrence (a set() of the ids counts one), else freeing the list fork "
               "returned releases a page its other owner still holds.")


def _fork_repeats(cls) -> None:
    """fork of a list holding a page twice: one owner per occurrence, undone by its free."""
    alloc = cls(3)
    pages = ids(alloc.allocate(2), "allocate(2)")
    table = [pages[0], pages[1], pages[0]]
    try:
        forked = ids(kept(alloc.fork, table, f"fork({table})"), f"fork({table})")
    except ValueError as exc:
        raise Mismatch(f"fork({table}) raised ValueError: {exc}", "every page listed is in "
                       "use, so the call is valid: " + REPEAT_HINT) from exc
    if len(forked) < len(table) and set(forked) == set(table):
        raise Mismatch(f"fork({table}) dropped the repeated id", "return every id as given, "
                       "a repeated one too: the new block table lists it twice, as the one "
                       "forked does (a set() of the ids drops it).", repr(table), repr(forked))
    _expect_fork_result(table, forked, f"fork({table})")
    counts = ref_counts(alloc, pages)
    if counts != [3, 2]:
        raise Mismatch(f"ref_count of pages {pages} after fork({table})",
                       REPEAT_HINT if counts == [2, 2] else "fork adds one owner per "
                       "occurrence of a page in the list.", "[3, 2]", repr(counts))
    kept(alloc.free, forked, f"free({forked})")
    counts = ref_counts(alloc, pages)
    if counts != [1, 1]:
        raise Mismatch(f"ref_count of pages {pages} after free({forked}) of the fork",
                       "free takes one owner away per occurrence, as fork added them.",
                       "[1, 1]", repr(counts))
    expect_free(alloc, 1, f"after free({forked})", "the pages still have their first owner.")


EMPTY_FORK_HINT = ("fork([]) is a valid call: a sequence with no tokens yet has an empty "
                   "block table, and its fork shares no page. Return a new empty list and "
                   "change no count.")


def _fork_empty(cls) -> None:
    """fork([]): the fork of a sequence with no pages yet shares nothing and returns []."""
    alloc = cls(3)
    ids(alloc.allocate(1), "allocate(1)")
    before = state(alloc, 3)
    try:
        forked = alloc.fork([])
    except NotImplementedError:
        raise
    except Exception as exc:
        # (min() and max() name themselves in the error: a range test on them is the cause)
        by_extremes = any(f"{name}()" in str(exc) for name in ("min", "max"))
        extremes = (" min() and max() of an empty list raise ValueError: test each id in a "
                    "loop, which an empty list skips.") if by_extremes else ""
        raise Mismatch(f"fork([]) raised {type(exc).__name__}: {exc}",
                       EMPTY_FORK_HINT + extremes, expected="[]",
                       got=f"{type(exc).__name__} raised") from exc
    if not isinstance(forked, list) or forked != []:
        raise Mismatch(f"fork([]) returned {forked!r:.60}", EMPTY_FORK_HINT, expected="[]",
                       got=repr(forked)[:60])
    if state(alloc, 3) != before:
        raise Mismatch("fork([]) changed num_free or a reference count", EMPTY_FORK_HINT,
                       expected=repr(before), got=repr(state(alloc, 3)))


def _fork_free_page(cls) -> None:
    alloc = cls(4)
    pages = ids(alloc.allocate(1), "allocate(1)")
    kept(alloc.free, pages, f"free({pages})")
    expect_raises(lambda: alloc.fork(pages), ValueError, "fork of a free page",
                   "only pages in use can be shared: raise ValueError for a free page.")
    expect_free(alloc, 4, "after the refused fork", "a refused call changes nothing.")


def _fork_keeps_order(cls) -> None:
    alloc = cls(8)
    pages = allocated(alloc, 8, "allocate(8)", (cls, 8))
    table = [pages[7], pages[2], pages[5], pages[0]]   # a block table is in token order
    forked = kept(alloc.fork, table, f"fork({table})")
    _expect_fork_result(table, ids(forked, f"fork({table})"), f"fork({table})")


def _fork_bad_lists(cls, num_pages: int = 6) -> None:
    """fork and free given a list with one bad id: the call fails whole."""
    alloc = cls(num_pages)
    pages = allocated(alloc, num_pages, f"allocate({num_pages})", (cls, num_pages))
    gone, a, b = pages[1], pages[0], pages[-1]
    alloc.free([gone])
    alloc.fork([a])
    refused(alloc, num_pages, lambda: alloc.fork([a, b, gone]),
             f"fork([{a}, {b}, {gone}]) with page {gone} free",
             "only pages in use can be shared: a list holding a free page must raise "
             "ValueError.")
    refused(alloc, num_pages, lambda: alloc.fork([b, -1]), f"fork([{b}, -1])",
             NEGATIVE_ID_HINT)
    refused(alloc, num_pages, lambda: alloc.fork([b, num_pages]),
             f"fork([{b}, {num_pages}]) ({num_pages} is past the pool)",
             f"refuse ids outside 0..{num_pages - 1} with ValueError.")
    refused(alloc, num_pages, lambda: alloc.free([a, gone]),
             f"free([{a}, {gone}]) with page {a} shared and page {gone} free",
             "a list holding a page that is already free must raise ValueError (a double "
             "free), even when the ids before it are fine.")


def _fork_random(cls, seed: int, num_pages: int = 10, steps: int = 150) -> None:
    rng = case_rng(seed)
    alloc = cls(num_pages)
    owners: list[list[int]] = []
    counts = [0] * num_pages
    for step in range(steps):
        r = rng.random()
        if owners and r < 0.35:
            pages = owners.pop(int(rng.integers(len(owners))))
            kept(alloc.free, pages, f"step {step}: free({pages})")
            for p in pages:
                counts[p] -= 1
        elif owners and r < 0.6:
            parent = owners[int(rng.integers(len(owners)))]
            pages = ids(kept(alloc.fork, parent, f"step {step}: fork({parent})"), "fork")
            owners.append(pages)
            for p in pages:
                counts[p] += 1
        else:
            n = int(rng.integers(1, 3))
            if n > counts.count(0):
                continue
            pages = allocated(alloc, n, f"step {step}: allocate({n})", (cls, num_pages))
            if any(counts[p] for p in pages):
                raise Mismatch(f"step {step}: allocate({n}) returned {pages}, but "
                               f"{[p for p in pages if counts[p]]} still have owners",
                               SHARED_FREE_HINT)
            owners.append(pages)
            for p in pages:
                counts[p] = 1
        got = ref_counts(alloc, range(num_pages))
        if got != counts:
            page = next(p for p in range(num_pages) if got[p] != counts[p])
            raise Mismatch(f"after step {step}: ref_count({page})",
                           "allocate sets 1, fork adds 1, free subtracts 1.",
                           str(counts[page]), str(got[page]))
        _expect_free_shared(alloc, counts.count(0), f"after step {step}")


def refcounts(cls) -> CheckResult:
    """Check sharing: `fork(pages)` adds an owner; `free` releases a page at count 0."""
    cases = [
        Case("fork shares pages", {"num_pages": 4}, lambda: _fork_basic(cls)),
        Case("a shared page outlives one free", {"num_pages": 4}, lambda: _fork_free(cls)),
        Case("free of a sequence and its fork at once", {"num_pages": 5},
             lambda: _fork_free_both(cls)),
        Case("fork of a free page", {"num_pages": 4}, lambda: _fork_free_page(cls)),
        Case("fork of an empty table", {"table": "[]"}, lambda: _fork_empty(cls)),
        Case("fork of a table listing a page twice", {"table": "[a, b, a]"},
             lambda: _fork_repeats(cls)),
        Case("fork keeps the block table's order", {"table": "[7, 2, 5, 0]"},
             lambda: _fork_keeps_order(cls)),
        Case("a bad id among good ones changes nothing", {"num_pages": 6},
             lambda: _fork_bad_lists(cls)),
        Case("150 random allocate/fork/free", {"num_pages": 10, "seed": 2},
             lambda: _fork_random(cls, 2)),
    ]
    return run_cases("refcounts", f"{getattr(cls, '__name__', cls)}: reference counts", cases)
