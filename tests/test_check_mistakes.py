"""Every Python check fails plausible wrong answers, with a hint that names the mistake.

The wrong versions are written the way a learner gets them wrong. Each asserts that the check
fails (not "not attempted"), that a failed case's hint holds the phrase that points at the
mistake and, where a wrong hint would be tempting, that no hint names a mistake the evidence
does not show. This file: the counting tasks (workbooks 00 and 08) and the rule that every
task has its mistakes; the other workbooks are in test_check_mistakes_*.py.
"""
import contextlib
import math

import numpy as np
import pytest

from tests.check_helpers import (as_params, assert_caught, mutate, run_check,  # noqa: F401
                                 solution_source)  # (workbooks 03 and 06 import them from here)

MISTAKES = [
    ("pages_needed", lambda n, p: n // p, "round up"),
    ("pages_needed", lambda n, p: n // p + 1, "one page too many"),
    ("pages_needed", lambda n, p: n, "one page per token"),
    ("reserved_waste", lambda L, m: 1 - L.sum() / (len(L) * L.max()), "reserves max_len"),
    ("reserved_waste", lambda L, m: len(L) * m - L.sum(), "fraction"),
    ("reserved_waste", lambda L, m: L.sum() / (len(L) * m), "used fraction"),
    ("paged_waste", lambda L, p: 1 - L.sum() / max((L // p).sum() * p, 1),
     "round the page count up"),
    ("paged_waste", lambda L, p: 1 - L.sum() / ((L // p + 1).sum() * p), "one too many"),
    ("paged_waste", lambda L, p: ((-(-L // p)).sum() * p - L.sum()) / L.sum(),
     "divide by the allocated"),
    ("kv_bytes", lambda L, h, kv, d, dt: int(np.sum(L)) * kv * d * np.dtype(dt).itemsize,
     "both K and V"),
    ("kv_bytes", lambda L, h, kv, d, dt: int(np.sum(L)) * 2 * h * d * np.dtype(dt).itemsize,
     "not num_heads"),
    ("kv_bytes", lambda L, h, kv, d, dt: int(np.sum(L)) * 2 * kv * d * 4, "itemsize"),
    ("decode_floor_ms", lambda b, bw: b / (bw * 1e9), "milliseconds"),
    ("decode_floor_ms", lambda b, bw: b / (bw * 2**30) * 1e3, "not 2**30"),
    ("decode_floor_ms", lambda b, bw: bw * 1e9 / b * 1e3, "bytes / bandwidth"),
]


def _waste(L, p):
    L = np.asarray(L)
    return 1 - L.sum() / ((-(-L // p)).sum() * p)


def choose_smallest(L, cands, w):
    ok = [p for p in cands if _waste(L, p) <= w]
    return min(ok) if ok else min(cands)


def choose_ignoring_limit(L, cands, w):
    return max(cands)


def choose_with_floor(L, cands, w):
    L = np.asarray(L)
    ok = [p for p in cands if 1 - L.sum() / max((L // p).sum() * p, 1) <= w]
    return max(ok) if ok else min(cands)


MISTAKES += [
    ("choose_page_size", choose_smallest, "pick the largest"),
    ("choose_page_size", choose_ignoring_limit, "wastes more than max_waste"),
    ("choose_page_size", choose_with_floor, "wastes more than max_waste"),
]




# -- boundaries and more wrong answers (issue 9) ----------------------------------------------

def reserved_floor_division(L, m):
    return 1 - L.sum() // (len(L) * m)


def reserved_mean(L, m):
    return 1 - np.mean(L) / m          # right, except for no requests (nan)


def paged_mean_of_fractions(L, p):
    return float(np.mean(1 - L / (-(-L // p) * p)))


def paged_no_empty_guard(L, p):
    return 1 - L.sum() / ((-(-L // p)).sum() * p)


def kv_bytes_int32(L, h, kv, d, dt):
    return int((L * 2 * kv * d * np.dtype(dt).itemsize).sum())   # L is int32


def choose_strict(L, cands, w):
    ok = [p for p in cands if _waste(L, p) < w]
    return max(ok) if ok else min(cands)


def choose_stop_at_first_failure(L, cands, w):
    best = min(cands)
    for p in sorted(cands):
        if _waste(L, p) > w:
            break
        best = p
    return best


def choose_index(L, cands, w):
    ok = [i for i, p in enumerate(cands) if _waste(L, p) <= w]
    return max(ok, key=lambda i: cands[i]) if ok else 0


def choose_none_when_nothing_fits(L, cands, w):
    ok = [p for p in cands if _waste(L, p) <= w]
    return max(ok) if ok else None


MISTAKES += [
    ("pages_needed", lambda n, p: math.ceil(n / p), "2**53"),
    ("pages_needed", lambda n, p: int(np.ceil(n / p)), "2**53"),
    ("pages_needed", lambda n, p: int(n / p) + (n % p > 0), "2**53"),
    ("pages_needed", lambda n, p: (n + p) // p, "one page too many"),
    ("reserved_waste", reserved_floor_division, "true division"),
    ("reserved_waste", reserved_mean, "return 0.0", ["max_len for every"]),
    ("reserved_waste", lambda L, m: (len(L) * m - L.sum()) / m, "one max_len per request"),
    ("paged_waste", paged_mean_of_fractions, "mean of the sequences"),
    ("paged_waste", paged_no_empty_guard, "return 0.0", ["round the page count up"]),
    ("paged_waste", lambda L, p: 1 - L.sum() / (len(L) * p), "not one"),
    ("kv_bytes", lambda L, h, kv, d, dt: int(max(L, default=0)) * len(L) * 2 * kv * d
     * np.dtype(dt).itemsize, "sum the lengths"),
    ("kv_bytes", kv_bytes_int32, "overflowed int32"),
    ("kv_bytes", lambda L, h, kv, d, dt: int(np.sum(L)) * 16 * kv * d * np.dtype(dt).itemsize,
     "bits"),
    ("decode_floor_ms", lambda b, bw: b / (bw * 1e9) * 1e6, "microseconds"),
    ("decode_floor_ms", lambda b, bw: b / bw, "not yet seconds"),
    ("decode_floor_ms", lambda b, bw: 8 * b / (bw * 1e9) * 1e3, "no factor 8"),
    ("choose_page_size", choose_strict, "at most", ["does not always grow"]),
    ("choose_page_size", choose_stop_at_first_failure, "does not always grow"),
    ("choose_page_size", choose_index, "not its position"),
    ("choose_page_size", choose_none_when_nothing_fits, "smallest"),
    # a NaN or inf answer: no known mistake gives it, the hint says where such numbers come from
    ("pages_needed", lambda n, p: float("nan"), "0 / 0"),
    ("reserved_waste", lambda L, m: float("nan") if len(L) else 0.0, "0 / 0"),
    ("paged_waste", lambda L, p: np.float64("inf") if len(L) else 0.0, "dividing by 0"),
    ("kv_bytes", lambda L, h, kv, d, dt: float("nan"), "0 / 0"),
    ("decode_floor_ms", lambda b, bw: b / (bw * 1e9) * 1e3 if b else float("nan"), "0 / 0"),
]


# -- right answers that write into their inputs: the caller's seq_lens changes ----------------

def reserved_sorting(L, m):            # sorts the caller's array (to read the longest, say)
    L.sort()
    return float(1 - L.sum() / (len(L) * m)) if len(L) else 0.0


def paged_rounding_in_place(L, p):     # the lengths rounded up to page counts in place
    used = int(L.sum())
    L += p - 1
    L //= p
    allocated = int(L.sum()) * p
    return 1 - used / allocated if allocated else 0.0


def kv_bytes_sorting(L, h, kv, d, dt):
    L.sort()
    return int(np.sum(L)) * 2 * kv * d * np.dtype(dt).itemsize


def choose_sorting_candidates(L, cands, w):   # largest first, then the first that fits
    cands.sort(reverse=True)
    return next((p for p in cands if _waste(L, p) <= w), cands[-1])


def choose_sorting_lens(L, cands, w):
    L.sort()
    return choose_page_size_right(L, cands, w)


def choose_page_size_right(L, cands, w):
    ok = [p for p in cands if _waste(L, p) <= w]
    return max(ok) if ok else min(cands)


MISTAKES += [
    ("reserved_waste", reserved_sorting, "changed its input seq_lens"),
    ("paged_waste", paged_rounding_in_place, "changed its input seq_lens"),
    ("kv_bytes", kv_bytes_sorting, "changed its input seq_lens"),
    ("choose_page_size", choose_sorting_candidates, "changed its input candidates"),
    ("choose_page_size", choose_sorting_lens, "changed its input seq_lens"),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


def test_every_python_task_has_its_mistakes():
    """At least six wrong answers per Python task: the classic three and three more."""
    from pagedattn_lab.lessons import LESSONS
    from tests import (test_check_mistakes_access, test_check_mistakes_paging,
                       test_check_mistakes_prefill, test_check_mistakes_system)
    kernel_tasks = {"gather_kernel", "naive_kernel", "tiled_kernel"}
    every = (MISTAKES + test_check_mistakes_paging.MISTAKES
             + test_check_mistakes_access.MISTAKES + test_check_mistakes_system.MISTAKES
             + test_check_mistakes_prefill.MISTAKES)
    counts = {}
    for task, *_ in every:
        counts[task] = counts.get(task, 0) + 1
    own_files = {"03", "06", "09", "11", "12", "13"}  # their tasks are in tests/test_check_mistakes_<topic>.py
    for task in (t for lesson in LESSONS if lesson.number not in own_files
                 for t in lesson.tasks if t not in kernel_tasks):
        assert counts.get(task, 0) >= 6, task


# -- an attack on workbooks 00 and 08 (floats for ints, dtypes, fallbacks, near limits) ------

def kv_bytes_two_dtypes(L, h, kv, d, dt):
    """Right for the fp16 and fp32 of the notebook only."""
    return int(np.sum(L)) * 2 * kv * d * (2 if dt == np.float16 else 4)


def kv_bytes_fp16_only(L, h, kv, d, dt):
    return int(np.sum(L)) * 2 * kv * d * 2


def choose_first_when_nothing_fits(L, cands, w):
    ok = [p for p in cands if _waste(L, p) <= w]
    return max(ok) if ok else cands[0]


def choose_rounded_waste(L, cands, w):
    ok = [p for p in cands if round(_waste(L, p), 2) <= w]
    return max(ok) if ok else min(cands)


def choose_right(L, cands, w):
    ok = [p for p in cands if _waste(L, p) <= w]
    return max(ok) if ok else min(cands)


def paged_waste_page_at_least(L, p):
    allocated = np.maximum(-(-L // p), 1).sum() * p
    return float(1 - L.sum() / allocated) if allocated else 0.0


ATTACK = [
    ("kv_bytes", kv_bytes_two_dtypes, "int8 is 1 byte"),
    ("kv_bytes", kv_bytes_fp16_only, "float32 is 4 bytes, not 2", ["both K and V"]),
    ("kv_bytes", lambda L, h, kv, d, dt: float(np.sum(L)) * 2 * kv * d * np.dtype(dt).itemsize,
     "return it as an int"),
    ("pages_needed", lambda n, p: float(-(-n // p)), "return it as an int"),
    ("pages_needed", lambda n, p: max(1, -(-n // p)), "0 tokens owns no page",
     ["+ 1 is one page too many"]),
    ("paged_waste", paged_waste_page_at_least, "no tokens yet holds no page",
     ["+ 1 pages is one too many"]),
    ("decode_floor_ms", lambda b, bw: 2 * b / (bw * 1e9) * 1e3, "no factor 2"),
    ("choose_page_size", choose_first_when_nothing_fits, "min(candidates)",
     ["wastes more than max_waste"]),
    ("choose_page_size", choose_rounded_waste, "just above max_waste"),
    ("choose_page_size", lambda L, c, w: float(choose_right(L, c, w)),
     "return it as an int"),
    # True == 1 in Python: a comparison where the count is 0 or 1 passed an int check.
    ("pages_needed", lambda n, p: -(-n // p) if n > p else n > 0, "a truth value"),
    # float("0.25") reads text: a waste returned as its text passed; a count as text was told
    # about floats and 2**53.
    ("reserved_waste", lambda L, m: str(1 - L.sum() / (len(L) * m)) if len(L) else "0.0",
     "not its text"),
    ("paged_waste", lambda L, p: f"{_waste(L, p) if L.sum() else 0.0}", "not its text"),
    ("pages_needed", lambda n, p: str(-(-n // p)), "not its text", ["2**53"]),
]


# -- a wrong waste formula picks a smaller page: the hint names the waste, not the choice ----

def choose_by(waste):
    def fn(L, cands, w):
        ok = [p for p in cands if waste(np.asarray(L, np.int64), p) <= w]
        return max(ok) if ok else min(cands)
    return fn


def _alloc(L, p):
    return (-(-L // p)).sum() * p


# (each is "the largest candidate under the limit", with the wrong waste: no hint on the choice)
CHOICE_HINTS = ["pick the largest", "at most' (<=)", "does not always grow"]
WASTE_FORMULAS = [
    ("choose_page_size", choose_by(lambda L, p: (_alloc(L, p) - L.sum()) / L.sum()),
     "check the waste your code computes", CHOICE_HINTS),
    ("choose_page_size", choose_by(lambda L, p: float(np.mean(1 - L / (-(-L // p) * p)))),
     "check the waste your code computes", CHOICE_HINTS),
    ("choose_page_size", choose_by(lambda L, p: float(np.max(1 - L / (-(-L // p) * p)))),
     "check the waste your code computes", CHOICE_HINTS),
    ("choose_page_size", choose_by(lambda L, p: 1 - L.sum() / ((L // p + 1).sum() * p)),
     "check the waste your code computes", CHOICE_HINTS),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(ATTACK + WASTE_FORMULAS))
def test_attack_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


@pytest.mark.parametrize("salt", [None, 7, 2**40 + 3])
@pytest.mark.parametrize("task, impl", [   # (inline: a module-level list reads as mistakes)
    ("pages_needed", lambda n, p: len(range(0, n, p))),
    ("pages_needed", lambda n, p: (n - 1) // p + 1),
    ("paged_waste", lambda L, p: float(((-L) % p).sum() / ((-(-L // p)).sum() * p))
     if L.sum() else 0.0),
    ("reserved_waste", lambda L, m: float((m - L).sum() / (len(L) * m)) if len(L) else 0.0),
    ("kv_bytes", lambda L, h, kv, d, dt: int(np.sum(L)) * 2 * kv * np.zeros(d, dt).nbytes),
    ("kv_bytes", lambda L, h, kv, d, dt: math.prod([int(np.sum(L, dtype=np.int64)), 2, kv, d,
                                                    np.dtype(dt).itemsize])),
    ("decode_floor_ms", lambda b, bw: b / bw / 1e6),
    ("choose_page_size", lambda L, c, w: next((p for p in sorted(c, reverse=True)
                                               if _waste(L, p) <= w), min(c))),
    ("choose_page_size", lambda L, c, w: np.int64(choose_right(L, c, w))),
])
def test_right_answers_in_another_style_pass(task, impl, salt):
    from pagedattn_lab.grading import seeds
    with seeds.salted(salt) if salt is not None else contextlib.nullcontext():
        result, printed = run_check(task, impl)
    assert result.passed, printed
