"""Probes of a learner's allocator for the lesson 01 checks: read its counts, demand an
error, and demand that a refused call changed nothing."""
from __future__ import annotations

from ..validate_kinds import is_int
from .escaped_errors import where_raised
from .report import Mismatch, probe

FREE_LIST_HINT = ("freed pages must go back to the free list and be handed out again (the "
                  "guide's `next_page++` counter never frees, so a long-running server runs out).")
ALL_FREE_HINT = ("asking for exactly the free pages is fine: raise OutOfPagesError only when "
                 "n > num_free (>, not >=).")


def num_free(alloc) -> int:
    value = getattr(alloc, "num_free")
    return int(value() if callable(value) else value)


def ids(pages, what: str) -> list[int]:
    if pages is None:
        raise Mismatch(f"{what} returned None", "return the list of page ids you took.")
    try:
        return [int(p) for p in pages]
    except TypeError as exc:
        raise Mismatch(f"{what} returned {pages!r}", "return a list of int page ids.") from exc


ZERO_HINT = ("zero pages is a valid request: allocate(0) returns [] (a sequence whose new "
             "tokens fit in its last page asks for none); raise only when n > num_free.")


def past_last_id_hint(num_pages: int) -> str:
    """The hint for an IndexError (KeyError) from allocate with enough pages free: an id it
    took indexed a per-page list (dict) past its end."""
    return (f"allocate raised it with enough pages free: a page id it took indexed past the "
            f"end of a list indexed by page id (num_pages = {num_pages} entries). Page ids are "
            f"0..num_pages-1 = 0..{num_pages - 1} (range(num_pages)); 1..num_pages runs one "
            "past the end.")


def _free_or_none(alloc) -> int | None:
    """num_free, or None where reading it fails (its own failure is told where it is read)."""
    try:
        return num_free(alloc)
    except Exception:   # noqa: BLE001 - the learner's property, any error
        return None


def _one_page_at_a_time(cls, num_pages: int) -> tuple[list[int], bool]:
    """The ids a fresh pool of `cls` hands out to allocate(1) after allocate(1), and whether
    an IndexError or KeyError stopped it before its num_pages-th page."""
    alloc, taken = cls(num_pages), []
    for _ in range(num_pages):
        try:
            taken += [int(p) for p in alloc.allocate(1)]
        except (IndexError, KeyError):
            return taken, True
    return taken, False


def _ids_from_one(pool) -> bool:
    """Whether the allocator class of `pool` (cls, num_pages) numbers its pages
    1..num_pages, as a fresh pool shows it: page 0 never handed out, and an IndexError
    (KeyError) before the pool runs dry, where page num_pages is taken. (A free list emptied
    by taking more pages than asked, a pop from an empty heap or list, raises the same
    errors, but hands out page 0 first.)"""
    seen = probe(_one_page_at_a_time, *pool)
    return seen is not None and seen[1] and 0 not in seen[0]


def allocated(alloc, n: int, what: str, pool: tuple | None = None) -> list[int]:
    """`alloc.allocate(n)` as ids; an error raised for n == 0 names the call (the spec's
    allocate(0) returns []), and, given `pool`, the (cls, num_pages) that made `alloc`, an
    IndexError or KeyError with at least n pages free, from a class whose fresh pool shows
    ids 1..num_pages, names a page id past the pool's last. (The class, not type(alloc):
    under the grader `alloc` is a stand-in for the learner's instance.)"""
    free = _free_or_none(alloc) if pool is not None else None
    try:
        pages = alloc.allocate(n)
    except (ValueError, TypeError, IndexError, KeyError, AssertionError) as exc:
        message = f"{what} raised {type(exc).__name__}: {exc}"
        if n and isinstance(exc, (IndexError, KeyError)) and free is not None and free >= n \
                and _ids_from_one(pool):
            raise Mismatch(message + where_raised(exc), past_last_id_hint(pool[1])) from exc
        if n:
            raise
        raise Mismatch(message, ZERO_HINT, expected="[]",
                       got=f"{type(exc).__name__} raised") from exc
    return ids(pages, what)


def ref_counts(alloc, pages) -> list[int]:
    """alloc.ref_count(p) for each page, as plain ints (an int subclass, or any object, may
    lie with its ==: a list of them would equal any expected counts)."""
    out = []
    for p in pages:
        count = alloc.ref_count(p)
        if not is_int(count):
            raise Mismatch(f"ref_count({p}) returned {type(count).__name__} {count!r:.60}",
                           "return the page's count of owners, an int.")
        out.append(int(count))
    return out


def kept(method, pages: list, what: str):
    """`method(a copy of pages)`; a Mismatch if it changed that copy: the list is the caller's
    block table, still read after the call (and a check that keeps its own list would read
    the emptied one, and blame the counts)."""
    given = list(pages)
    result = method(given)
    if given != pages:
        raise Mismatch(f"{what} changed the list it was given: {pages} became {given}",
                       "leave the caller's list as it was (it is a sequence's block table): "
                       "loop over it, do not pop, remove or clear its entries.",
                       expected=repr(pages), got=repr(given))
    return result


def valid_call(call, what: str, hint: str):
    """`call()`, a call the allocator must accept: a ValueError refuses a valid call (an id
    check that leaves page 0 out, say), named with `hint`."""
    try:
        return call()
    except ValueError as exc:
        raise Mismatch(f"{what} raised ValueError: {exc}", hint, expected="no error",
                       got="ValueError raised") from exc


def legal_free(alloc, pages: list, what: str) -> None:
    """`alloc.free(pages)` of pages each allocated once and not freed since (valid_call)."""
    valid_call(lambda: kept(alloc.free, pages, what), what, f"pages {pages} are in use "
               "(allocated, not freed since), so freeing them is valid: raise only for an id "
               "outside 0..num_pages-1 or a page already free (ref_count 0).")


def expect_free(alloc, expected: int, when: str, hint: str) -> None:
    got = num_free(alloc)
    if got != expected:
        raise Mismatch(f"num_free {when}", hint, expected=str(expected), got=str(got))


def expect_returned(alloc, expected: int, when: str) -> None:
    """num_free after frees: too few means freed pages did not come back."""
    got = num_free(alloc)
    if got != expected:
        hint = FREE_LIST_HINT if got < expected else (
            "more pages are free than were ever given back: a page freed once must enter "
            "the free list once (and a page in use must not be in it).")
        raise Mismatch(f"num_free {when}", hint, expected=str(expected), got=str(got))


def expect_raises(fn, exc_type, what: str, hint: str) -> BaseException:
    try:
        fn()
    except NotImplementedError:
        raise
    except exc_type as exc:
        return exc
    except Exception as exc:  # the wrong kind of error
        raise Mismatch(f"{what} raised {type(exc).__name__}: {exc}", hint,
                       expected=exc_type.__name__, got=type(exc).__name__) from exc
    raise Mismatch(f"{what} did not raise", hint, expected=f"{exc_type.__name__} raised",
                   got="no error")


def state(alloc, num_pages: int) -> tuple[int, list[int]]:
    return num_free(alloc), [int(alloc.ref_count(p)) for p in range(num_pages)]


ALL_OR_NOTHING_IDS = ("check every id of the list before changing any count: a call that "
                      "raises halfway has already changed the pages before the bad one, and "
                      "the caller, told it failed, will not undo that.")


def refused(alloc, num_pages: int, call, what: str, unrefused_hint: str) -> None:
    """`call` must raise ValueError and leave every count and the free list as they were."""
    before = state(alloc, num_pages)
    try:
        call()
    except NotImplementedError:
        raise
    except ValueError:
        pass
    except Exception as exc:  # the wrong kind of error (an IndexError from a list, say)
        raise Mismatch(f"{what} raised {type(exc).__name__}: {exc}",
                       "refuse a bad id with ValueError, raised by your own check before "
                       "anything changes.", expected="ValueError",
                       got=type(exc).__name__) from exc
    else:
        raise Mismatch(f"{what} did not raise", unrefused_hint, expected="ValueError raised",
                       got="no error")
    after = state(alloc, num_pages)
    if after != before:
        changed = [p for p in range(num_pages) if before[1][p] != after[1][p]]
        raise Mismatch(f"{what} raised ValueError, but it changed the reference counts of "
                       f"pages {changed} (num_free {before[0]} -> {after[0]})",
                       ALL_OR_NOTHING_IDS, expected=f"counts {[before[1][p] for p in changed]}",
                       got=f"counts {[after[1][p] for p in changed]}")


NEGATIVE_ID_HINT = ("page ids are 0..num_pages-1, so -1 is not one; a Python list reads "
                    "refs[-1] as the LAST page, so test 0 <= page < num_pages yourself.")
