"""Checks for the counting tasks of lesson 00: pages per sequence and wasted memory.

Lesson 00 (why paging): how many pages a sequence needs and how much of a contiguous or a
paged reservation holds no token. Lesson 08's counting tasks (bytes, the copy-rate
yardstick, the page size) are in checks_performance.py and use the helpers here.

Each case compares a number with the spec and, when it is wrong, with the numbers the
usual mistakes give (floor instead of ceil, a page for an empty sequence, the waste of the
last page only...), to say which mistake it was.
"""
from __future__ import annotations

import math

import numpy as np

from ..validate_kinds import is_int
from .compare import FIXED_PAGE_HINT, POW2_HINT, fmt, on_copies, pow2_ceils
from .report import Case, CheckResult, Mismatch, WrongNumber, probe, run_cases, several_fit
from .seeds import case_ints, case_rng


def _ceil_div(a, b):
    return -(-np.asarray(a, dtype=np.int64) // b)


def _number(got, what: str, expected: str) -> float:
    if got is None:
        raise Mismatch(f"{what} returned None", "return the number (a `return` is missing?).")
    if isinstance(got, (str, bytes, np.str_, np.bytes_)):   # float() would read "0.25"
        raise Mismatch(f"{what} returned text, {got!r:.40}", "return the number itself, not "
                       "its text (no str(), f-string or format()).", expected=expected,
                       got=repr(got)[:40])
    try:
        return float(got)
    except (TypeError, ValueError) as exc:
        raise Mismatch(f"{what} returned {got!r}", "return a single number.") from exc


def _first_variant(value, expected, variants, same) -> str:
    """The hint of the first variant that gives `value` (and not the right answer)."""
    for text, candidate in variants:
        candidate = candidate() if callable(candidate) else candidate   # (a probe: lazily)
        if candidate is None or (isinstance(candidate, float) and np.isnan(candidate)):
            continue
        if not same(candidate, expected) and same(value, candidate):
            return text
    return ""


def _scalar_case(fn, args: tuple, expected: float, variants: list[tuple[str, float]],
                 what: str, *, rel: float = 1e-6, default_hint: str = "") -> None:
    value = _number(fn(*args), what, fmt(expected))

    def same(a, b):
        return bool(np.isclose(float(a), float(b), rtol=rel, atol=1e-12))

    if same(value, expected):
        return
    hint = _first_variant(value, expected, variants, same) or _unknown(value, default_hint)
    raise WrongNumber(what, hint, expected=fmt(expected), got=fmt(value))


NON_FINITE_HINT = ("a count, a fraction or a time is a finite number: NaN comes from 0 / 0 or "
                   "inf - inf, inf from dividing by 0.")


def _unknown(value, default_hint: str) -> str:
    """The hint for a wrong number no known mistake gives: a NaN or inf shows what went
    wrong by itself; any other number shows nothing more than expected vs got."""
    return default_hint if math.isfinite(value) else NON_FINITE_HINT


def _int_case(fn, args: tuple, expected: int, variants: list[tuple[str, float]], what: str,
              *, default_hint: str = "") -> None:
    """An exact integer answer, as an int (a float is refused even when it is whole)."""
    got = fn(*args)
    if isinstance(got, (bool, np.bool_)):
        raise Mismatch(f"{what} returned {got!r}, a truth value", "return the count itself, "
                       "an int: a comparison (==, <, >) gives True or False, not a number.",
                       expected=str(expected), got=repr(got))
    value = _number(got, what, str(expected))
    whole = is_int(got)
    exact = int(got) if whole else value
    if exact == expected and whole:
        return
    if exact == expected:
        raise Mismatch(f"{what} returned a {type(got).__name__}", "the number is right, but "
                       "return it as an int: a float holds integers exactly only up to 2**53 "
                       "(stay in integers: //, %, Python int).", expected=str(expected),
                       got=repr(got))
    hint = (_first_variant(exact, expected, variants, lambda a, b: a == b)
            or _unknown(value, default_hint))
    shown = str(exact) if isinstance(exact, int) else repr(value)
    raise WrongNumber(what, hint, expected=str(expected), got=shown)


def _lens(seed: int, n: int, low: int, high: int) -> np.ndarray:
    return case_rng(seed).integers(low, high, size=n).astype(np.int64)


# -- lesson 00 --------------------------------------------------------------------------

PERCENT_HINT = "that is a percentage: return the fraction (between 0 and 1), not 100 times it."

CONSTANT_HINT = ("your function gives this number whatever seq_len and page_size are (a value "
                 "written into the code?): compute it from the arguments.")


def _gives(fn, args: tuple, value: int) -> bool:
    """`fn(*args)` asked again is the int `value` (a probe confirming a suspected mistake)."""
    got = probe(fn, *args)
    return is_int(got) and int(got) == value


def _gives_fraction(fn, args: tuple, value: float) -> bool:
    """`fn(*args)` asked again is the number `value` (to float rounding)."""
    got = probe(fn, *args)
    return isinstance(got, (int, float, np.number)) and bool(np.isclose(float(got), value))


def _constant(fn, args_list):
    """The one answer `fn` gives to every argument tuple asked, or None."""
    answers = [probe(fn, *args) for args in args_list]
    number = isinstance(answers[0], (int, float, np.number)) and not isinstance(
        answers[0], (bool, np.bool_))
    return answers[0] if number and len({repr(a) for a in answers}) == 1 else None


FLOAT_HINT = ("{a} / {b} is a float, and a float holds integers exactly only up to 2**53: "
              "above that the division rounds before the ceil sees it. Stay in integers "
              "(//, %).")


def _pages_needed_case(fn, seq_len: int, page_size: int) -> None:
    expected = -(-seq_len // page_size)
    _int_case(fn, (seq_len, page_size), expected, [
        (CONSTANT_HINT, lambda: _constant(fn, [(0, 16), (100, 7), (5, 1), (4096, 16)])),
        (FLOAT_HINT.format(a="seq_len", b="page_size"), math.ceil(seq_len / page_size)),
        ("/ is true division: seq_len / page_size is a fraction of a page, not a count; a "
         "partly filled last page is still a whole page, so round up, in integers: "
         "-(-seq_len // page_size).", seq_len / page_size),
        # (seq_len - 1) // page_size is the floor at most lengths: confirmed where it is not,
        # twice (at (8, 4) alone, ceil(page_size / seq_len) gives 1 too)
        ("(seq_len - 1) // page_size is the index of the last token's page, one less than the "
         "count: ceil is (seq_len - 1) // page_size + 1 (0 for seq_len 0).",
         lambda: (seq_len - 1) // page_size if _gives(fn, (8, 4), 1)
         and _gives(fn, (33, 16), 2) else None),
        # (confirmed at (5, 4), where a mask's ceil is right and only the floor gives 1)
        ("round up: a partly filled last page is still a whole page.",
         lambda: seq_len // page_size if _gives(fn, (5, 4), 1) else None),
        *[(POW2_HINT.format(name="page_size", n=page_size), int(pages))
          for pages, _ in pow2_ceils(seq_len, page_size)],
        ("a sequence of 0 tokens owns no page: ceil(0 / page_size) is 0.",
         1 if seq_len == 0 else None),
        ("seq_len // page_size + 1 is one page too many when seq_len is an exact multiple "
         "of page_size (and for seq_len 0).", seq_len // page_size + 1),
        ("that is one page per token: a page holds page_size tokens.", seq_len),
        # (small counts fit several mistakes: each is confirmed at a second seq_len)
        (FIXED_PAGE_HINT.format(n=page_size), lambda: -(-seq_len // 16) if page_size != 16
         and _gives(fn, (272, page_size), 17) else None),   # (17 only with pages of 16)
        ("the arguments come as (seq_len, page_size): that is ceil(page_size / seq_len).",
         lambda: -(-page_size // seq_len) if seq_len and page_size > 1
         and _gives(fn, (1, page_size), page_size) else None),
    ], f"pages_needed({seq_len}, {page_size})")


def pages_needed(fn) -> CheckResult:
    """Check `fn(seq_len, page_size) == ceil(seq_len / page_size)`, in integers."""
    pairs = [(10, 4), (8, 4), (1, 16), (0, 16), (17, 1), (4095, 16), (4096, 16), (4097, 16),
             (2**53 + 1, 1), (2**60 + 1, 2**30), (3 * 2**55 + 7, 3)]
    drawn = case_ints(11, seq_len=(0, 2**40), page_size=(1, 4096))
    pairs.append((drawn["seq_len"], drawn["page_size"]))
    cases = [Case("pages for one sequence", {"seq_len": n, "page_size": p},
                  lambda n=n, p=p: _pages_needed_case(fn, n, p)) for n, p in pairs]
    return run_cases("pages_needed", "pages_needed(seq_len, page_size)", cases)


EMPTY_VALUE_HINT = ("with nothing {what} there is nothing to waste: return 0.0 for that "
                    "case, not {got}.")
EMPTY_HINT = ("with nothing {what} there is nothing to waste: 0 / 0 is undefined, so return "
              "0.0 for that case (test for it before dividing).")


FLOOR_HINT = "// rounds the fraction down to a whole number: use true division (/)."
EMPTY_ANSWER_HINT = ("the 0.0 of a batch with nothing {what} came back for one with {what} "
                     "slots: return 0.0 only when nothing is {what} (== 0, not != 0).")


def _zero_hint(used: int, what: str) -> str:
    """The hint of (slots - used) // slots: 0 wherever a token is used, as the empty batch's
    0.0 returned for every batch is."""
    return FLOOR_HINT if not used else several_fit([FLOOR_HINT,
                                                    EMPTY_ANSWER_HINT.format(what=what)])

# (slots / used is at least 1, so 1 minus it is never a fraction between 0 and 1)
UPSIDE_DOWN_HINT = ("the division is upside down: the empty share is 1 - used / {slots} "
                    "(tokens over slots), not 1 - {slots} / used, which is negative.")


ROUNDED_HINT = ("that is the fraction rounded to {k} decimal place{s}: return it unrounded "
                "(round only where you print it).")


def _rounded(expected: float) -> list[tuple[str, float]]:
    """The fraction as round(x, k) gives it, k = 1..6 (k = 0 is //'s and int()'s 0 or 1)."""
    return [(ROUNDED_HINT.format(k=k, s="s" if k > 1 else ""), round(expected, k))
            for k in range(1, 7)]


def _fraction_case(fn, args: tuple, expected: float, variants, what: str, *,
                   empty: str | None = None) -> None:
    """A waste fraction; `empty` names what is missing when the denominator is 0."""
    try:
        _scalar_case(fn, args, expected, variants + _rounded(expected), what)
    except (ZeroDivisionError, FloatingPointError) as exc:
        if empty is None:
            raise
        raise Mismatch(f"{what} raised {type(exc).__name__}: {exc}",
                       EMPTY_HINT.format(what=empty), expected="0.0",
                       got=type(exc).__name__) from None
    except Mismatch as mm:
        if empty is not None and mm.got == "nan":
            mm.hint = EMPTY_HINT.format(what=empty)
        elif empty is not None and isinstance(mm, WrongNumber):   # (where 0.0 is the answer)
            # a guard returning another number gives it, as may a mistake that divides by
            # something else: both named where both fit
            mm.hint = several_fit([h for h in (mm.hint, EMPTY_VALUE_HINT.format(
                what=empty, got=mm.got)) if h])
        raise


def _reserved_case(fn, lens: np.ndarray, max_len: int) -> None:
    used, reserved = int(lens.sum()), len(lens) * max_len
    expected = 1 - used / reserved if reserved else 0.0
    with np.errstate(all="ignore"):
        longest = 1 - used / (len(lens) * lens.max()) if len(lens) else None
    _fraction_case(on_copies(fn, "reserved_waste", "seq_lens"), (lens, max_len), expected, [
        ("you reserved max(seq_lens) per sequence; the server reserves max_len for every "
         "request because it cannot know the final length in advance.", longest),
        ("return a fraction of the reserved slots (between 0 and 1), not a count.",
         reserved - used),
        ("that is the empty slots per request, a count: divide the wasted slots by every "
         "reserved slot, len(seq_lens) * max_len, for a fraction between 0 and 1.",
         (reserved - used) / len(lens) if len(lens) else None),
        ("divide the wasted slots by the reserved slots, not by the used ones.",
         (reserved - used) / used if used else None),
        ("that is the used fraction; the question asks for the wasted one.",
         used / reserved if reserved else None),
        # (the longest request filling max_len gives 0, as a floor does: asked again with
        # one shorter than max_len to tell them apart)
        ("that is the waste of the longest request alone: every request reserves max_len, "
         "so divide all the tokens by all the reserved slots.",
         lambda: 1 - lens.max() / max_len if len(lens) and _gives_fraction(
             fn, (np.array([1, 3]), 4), 0.25) else None),
        (FLOOR_HINT, 1 - used // reserved if reserved else None),
        (_zero_hint(used, "reserved"), (reserved - used) // reserved if reserved else None),
        (UPSIDE_DOWN_HINT.format(slots="reserved"), 1 - reserved / used if used else None),
        *[("divide by every slot reserved for the batch (one max_len per request), not by "
           "one max_len.", v) for v in ((reserved - used) / max_len, 1 - used / max_len)],
        ("that is 1 - max_len / sum(seq_lens): the used share is the tokens over every "
         "reserved slot, sum(seq_lens) / (len(seq_lens) * max_len), so the waste is 1 minus "
         "that.", 1 - max_len / used if used else None),
        (PERCENT_HINT, 100 * expected),
    ], f"reserved_waste(seq_lens, max_len={max_len})",
        empty=None if reserved else "reserved")


def reserved_waste(fn) -> CheckResult:
    """Check `fn(seq_lens, max_len)`: the share of the reserved slots that hold no token
    (0.0 for no requests)."""
    cases = [
        Case("four requests", {"seq_lens": [100, 300, 20, 2048], "max_len": 2048},
             lambda: _reserved_case(fn, np.array([100, 300, 20, 2048]), 2048)),
        Case("64 random requests", {"seed": 0, "max_len": 4096},
             lambda: _reserved_case(fn, _lens(0, 64, 1, 4096), 4096)),
        Case("all full", {"seq_lens": [512, 512], "max_len": 512},
             lambda: _reserved_case(fn, np.array([512, 512]), 512)),
        Case("requests with no tokens yet", {"seq_lens": [0, 0, 7], "max_len": 64},
             lambda: _reserved_case(fn, np.array([0, 0, 7]), 64)),
        Case("no requests", {"seq_lens": [], "max_len": 2048},
             lambda: _reserved_case(fn, np.array([], dtype=np.int64), 2048)),
    ]
    return run_cases("reserved_waste", "reserved_waste(seq_lens, max_len)", cases)


def paged_waste_fraction(lens, page_size: int) -> float:
    """The share of the allocated slots that hold no token (0.0 when nothing is allocated)."""
    lens = np.asarray(lens, dtype=np.int64)
    allocated = int(_ceil_div(lens, page_size).sum()) * page_size
    return 1 - int(lens.sum()) / allocated if allocated else 0.0


def _paged_case(fn, lens: np.ndarray, page_size: int) -> None:
    used = int(lens.sum())
    pages = _ceil_div(lens, page_size)
    allocated = int(pages.sum()) * page_size
    expected = paged_waste_fraction(lens, page_size)
    floor_alloc = int((lens // page_size).sum()) * page_size
    plus_one = int((lens // page_size + 1).sum()) * page_size
    one_at_least = int(np.maximum(pages, 1).sum()) * page_size
    with np.errstate(all="ignore"):
        per_sequence = float(np.mean(1 - lens / (pages * page_size))) if allocated else None
        # rounded up with a mask or shifts, right for a power of two page_size only
        masked = int(((lens + page_size - 1) & -page_size).sum())
        # pages by shifts or masks for some or all of //, % and *
        pow2_allocated = sorted({int(slots.sum()) for _, slots in pow2_ceils(lens, page_size)})
    # the empty slots of each last page as page_size - L % page_size: page_size where L is a
    # multiple of page_size (a full page), or 0 (no page at all), where (-L) % page_size is 0
    last_free = page_size - lens % page_size
    shown = [("the last page is full (L a multiple of page_size)",
              bool(((lens > 0) & (lens % page_size == 0)).any())),
             ("a request has no token and no page", bool((lens == 0).any()))]

    def free_hint(mistakes):
        return ("page_size - L % page_size counts page_size empty slots where " + " and ".join(
            text for text, show in mistakes if show) + ": a sequence's empty slots are "
            "(-L) % page_size (or pages * page_size - L).")
    _fraction_case(on_copies(fn, "paged_waste", "seq_lens"), (lens, page_size), expected, [
        ("round the page count up: a sequence of L tokens holds ceil(L / page_size) pages.",
         1 - used / floor_alloc if floor_alloc else None),
        ("a request with no tokens yet holds no page (ceil(0 / page_size) is 0), and with "
         "nothing allocated nothing is wasted.",
         1 - used / one_at_least if (lens == 0).any() else None),
        ("L // page_size + 1 pages is one too many when L is a multiple of page_size.",
         1 - used / plus_one if plus_one else None),
        (free_hint(shown[:1]), int(last_free[lens > 0].sum()) / allocated if allocated
         else None),
        (free_hint(shown), int(last_free.sum()) / allocated if allocated else None),
        ("that rounds up the batch's tokens all together, ceil(sum(seq_lens) / page_size) "
         "pages, as if one sequence: each sequence rounds up its own last page, so allocated "
         "= sum of ceil(L / page_size) over the sequences, times page_size.",
         1 - used / (-(-used // page_size) * page_size) if used else None),
        ("the allocated slots are pages * page_size: that divides the tokens by the number "
         "of pages, not by the slots the pages hold.",
         1 - used / int(pages.sum()) if allocated else None),
        ("that gives every request the longest one's pages, as a reservation does: paging "
         "allocates each sequence its own ceil(L / page_size) pages.",
         1 - used / (len(lens) * int(pages.max()) * page_size) if allocated else None),
        ("that is the wasted slots per page: divide by the allocated slots (pages * "
         "page_size), not by the number of pages.",
         (allocated - used) / int(pages.sum()) if allocated else None),
        ("return a fraction of the allocated slots, not a count of slots.", allocated - used),
        ("that is the empty slots per request, a count: divide the batch's empty slots by its "
         "allocated slots, for a fraction between 0 and 1.",
         (allocated - used) / len(lens) if len(lens) else None),
        ("divide by the allocated slots, not by the used ones.",
         (allocated - used) / used if used else None),
        ("that is the used fraction; return the wasted one.",
         used / allocated if allocated else None),
        ("that is the mean of the sequences' own waste fractions, which weighs a 3-token "
         "request like a 2048-token one: divide the batch's wasted slots by its allocated "
         "slots.", per_sequence),
        (FLOOR_HINT, 1 - used // allocated if allocated else None),
        (_zero_hint(used, "allocated"), (allocated - used) // allocated if allocated else None),
        (UPSIDE_DOWN_HINT.format(slots="allocated"), 1 - allocated / used if used else None),
        ("a sequence of L tokens holds ceil(L / page_size) pages, not one.",
         1 - used / (len(lens) * page_size) if len(lens) else None),
        (POW2_HINT.format(name="page_size", n=page_size),
         1 - used / masked if masked > 0 else None),
        # (confirmed at one request of 33 tokens, pages of 40: pages of 16 hold it in 48
        # slots, which no shift or mask of 40 gives (they make pages of 32); at 24 one of
        # them is pages of 16 exactly, and on a batch, as [100, 300, 20, 2048] at 24, more
        # of them give pages of 16's fraction)
        (FIXED_PAGE_HINT.format(n=page_size), lambda: paged_waste_fraction(lens, 16)
         if page_size != 16 and _gives_fraction(fn, (np.array([33]), 40), 1 - 33 / 48)
         else None),
        *[(POW2_HINT.format(name="page_size", n=page_size), 1 - used / slots)
          for slots in pow2_allocated if slots > 0],
        (PERCENT_HINT, 100 * expected),
    ], f"paged_waste(seq_lens, page_size={page_size})",
        empty=None if allocated else "allocated")


def paged_waste(fn) -> CheckResult:
    """Check `fn(seq_lens, page_size)`: the share of the allocated slots that hold no token
    (0.0 when nothing is allocated)."""
    cases = [
        Case("four requests", {"seq_lens": [100, 300, 20, 2048], "page_size": 16},
             lambda: _paged_case(fn, np.array([100, 300, 20, 2048]), 16)),
        Case("exact multiples", {"seq_lens": [32, 64, 16], "page_size": 16},
             lambda: _paged_case(fn, np.array([32, 64, 16]), 16)),
        Case("64 random requests", {"seed": 0, "page_size": 64},
             lambda: _paged_case(fn, _lens(0, 64, 1, 4096), 64)),
        Case("page_size 24, not a power of two", {"seq_lens": [100, 300, 20, 2048],
                                                  "page_size": 24},
             lambda: _paged_case(fn, np.array([100, 300, 20, 2048]), 24)),
        Case("short requests, big pages", {"seq_lens": [3, 5, 7], "page_size": 256},
             lambda: _paged_case(fn, np.array([3, 5, 7]), 256)),
        Case("a request with no tokens yet", {"seq_lens": [0, 40, 9], "page_size": 8},
             lambda: _paged_case(fn, np.array([0, 40, 9]), 8)),
        Case("nothing allocated", {"seq_lens": [0, 0], "page_size": 16},
             lambda: _paged_case(fn, np.array([0, 0]), 16)),
        Case("no requests", {"seq_lens": [], "page_size": 16},
             lambda: _paged_case(fn, np.array([], dtype=np.int64), 16)),
    ]
    return run_cases("paged_waste", "paged_waste(seq_lens, page_size)", cases)
