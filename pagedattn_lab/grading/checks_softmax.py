"""Checks for lesson 04 in Python: online softmax, and what one thread of the naive kernel does.

Online softmax keeps three things while keys stream past: the running max m, the running
sum l of exp(score - m), and the running weighted sum acc of values. When a new score
raises the max, both l and acc must be rescaled by exp(m_old - m_new). The cases stream
scores that rise (every step rescales), scores near +1000 (exp overflows unless the max is
subtracted) and scores near -1000 (starting the max at 0 instead of -inf underflows to 0/0).
A right final answer is then asked for after every key, twice (result() must not change the
state); update(), like attend_one, must leave the arrays it is given as they were. An
OverflowError (math.exp's inf) is read as the overflow it is, not as a crash.
The hints are in softmax_hints.py; the mistake models that pick one (`_simulate`) are here;
the checks of the state besides its answer are in checks_softmax_state.py.
"""
from __future__ import annotations

import re

import numpy as np

from .cases import nan_tails, paged_problem
from .checks_softmax_state import kept_value, result_keeps_state
from .compare import POW2_HINT, changed_input, describe_difference, diagnose, fmt, pow2_div
from .escaped_errors import where_raised
from .report import Case, CheckResult, Mismatch, as_array, probe, run_cases, several_fit
from .seeds import case_rng
from .softmax_hints import (CACHE_VIEWS, EXPONENT_ABOVE_0_HINT, NON_FINITE_MISTAKES,
                            SOFTMAX_MISTAKES, TAIL_HINT, kept_first_value, nomax_hint,
                            overflow_hint)
from .variants import (HEAD_STRIDE_HINT, PAGE_ONLY_HINT, SCALED_VALUES_HINT, SWAPPED_SLOT_HINT,
                       UNSCALED_PAGES_HINT, attention_variant, twice_hint)


def _softmax_average(scores, values) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    w = np.exp(scores - scores.max())
    return (w / w.sum()) @ np.asarray(values, dtype=np.float64)


def _simulate(scores, values, bug: str) -> np.ndarray:
    """The online softmax as commonly mis-written (float64)."""
    m, acc = (0.0 if bug == "max0" else -np.inf), np.zeros(values.shape[1])
    total = 0.0
    with np.errstate(all="ignore"):
        for i, (s, v) in enumerate(zip(scores, values)):
            if bug == "first_max":   # m set by the first key, never raised: no rescale at all
                m = s if i == 0 else m
                total, acc = total + np.exp(s - m), acc + np.exp(s - m) * v
                continue
            if bug == "nomax":
                total, acc = total + np.exp(s), acc + np.exp(s) * v
                continue
            if bug == "reset" and s > m:   # a new max restarts the sums: the keys before lost
                m, total, acc = s, 1.0, v.astype(np.float64)
                continue
            if bug in ("inverted", "old_max_first") and i == 0:
                # the first key set apart (m = -inf there), so the rest is finite
                m, total, acc = s, 1.0, v.astype(np.float64)
                continue
            m_new = min(m, s) if bug == "min_max" else max(m, s)
            alpha = {"no_rescale": 1.0, "inverted": np.exp(m_new - m)}.get(bug, np.exp(m - m_new))
            p = np.exp(s - (m if bug in ("old_max", "old_max_first") else m_new))
            total = total + 1 if bug == "count" else \
                (total if bug == "no_rescale_l" else total * alpha) + p
            acc = p * v if bug == "acc_assigned" else \
                (acc if bug == "no_rescale_acc" else acc * alpha) + p * v
            m = m if bug == "max_stuck" else m_new
        if bug == "no_normalize":
            return acc
        return acc / total


def _same(got, candidate) -> bool:
    return bool(np.allclose(got, candidate, rtol=1e-6, atol=1e-9, equal_nan=True))


def _online_case(cls, scores, values) -> None:
    scores = np.asarray(scores, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    expected = _softmax_average(scores, values)
    state = cls(values.shape[1])
    passed = [v.copy() for v in values]
    for i, s in enumerate(scores):
        try:
            state.update(float(s), passed[i])
        except OverflowError as exc:   # math.exp's way of saying inf
            raise _overflow_mismatch(cls, scores, i, exc) from None
        # (checked as the call returns: the grader copies a changed argument back only then)
        changed = changed_input(f"update() of key {i}", {"value": values[i]},
                                {"value": passed[i]})
        if changed is not None:
            raise changed
        kept = kept_value(values, passed, i)
        if kept is not None:
            raise kept
    try:
        got = state.result()
    except OverflowError as exc:
        raise _overflow_mismatch(cls, scores, len(scores), exc) from None
    if got is None:
        raise Mismatch("result() returned None", "return acc / l.")
    got = as_array(got, "result()")
    single = got.dtype == np.float32   # float32 state, as in the kernel: its rounding, not a
    got = got.astype(np.float64)       # mistake
    if got.shape != expected.shape:
        raise Mismatch("result() shape", "one value per dim: [head_dim].", str(expected.shape),
                       str(got.shape))
    # a state that keeps the scores in float32 (as the kernel does; the sums may still be
    # float64) rounds scores near +-1000 by up to 3e-5, which moves the weights past either
    # tolerance: compare with the exact answer for the rounded scores and values as well
    rounded = _softmax_average(scores.astype(np.float32), values.astype(np.float32))
    if any(np.allclose(got, want, rtol=2e-5 if single else 1e-6, atol=2e-6 if single else 1e-9)
           for want in (expected, rounded)):
        result_keeps_state(cls, scores, values)
        return
    mistakes = SOFTMAX_MISTAKES
    cause = _non_finite_cause(cls) if not np.isfinite(got).all() else None
    if cause is not None:
        hint = nomax_hint(scores) if cause == "nomax" else dict(
            (bug, text) for text, bug in NON_FINITE_MISTAKES)[cause]
        d = int(np.argmax(np.abs(np.nan_to_num(got - expected, nan=np.inf))))
        raise Mismatch(f"{len(scores)} scores from {fmt(scores.min())} to "
                       f"{fmt(scores.max())}; first wrong dim {d}", hint,
                       expected=fmt(expected[d]), got=fmt(got[d]))
    if not np.isfinite(got).all():
        # on very negative scores a missing max and a max started at 0 give the same 0/0
        first = "max0" if scores.max() < 0 else "nomax" if scores[0] > scores.max() - 700 \
            else "first_max"
        mistakes = sorted(NON_FINITE_MISTAKES, key=lambda mistake: mistake[1] != first)
    default = ("a NaN or inf appeared: is every exp taken of a score minus the running max, "
               "and is the max updated before it is used?" if mistakes is NON_FINITE_MISTAKES
               else "after each update, acc / l must equal softmax(scores so far) @ values "
                    "so far.")
    fitting = [text for text, bug in mistakes if _same(got, _simulate(scores, values, bug))
               and not _same(expected, _simulate(scores, values, bug))]
    hint = several_fit(fitting) if fitting else default
    d = int(np.argmax(np.abs(np.nan_to_num(got - expected, nan=np.inf))))
    raise Mismatch(f"{len(scores)} scores from {fmt(scores.min())} to {fmt(scores.max())}; "
                   f"first wrong dim {d}", hint, expected=fmt(expected[d]), got=fmt(got[d]))


def _overflow_mismatch(cls, scores, i: int, exc: OverflowError) -> Mismatch:
    """The Mismatch of an OverflowError (math.exp raises one where np.exp gives inf) from
    update() of key i (i == len(scores): from result()): the raw score's exp when a single
    key of 800 overflows too, else an exponent that the running max did not keep at or
    below 0 (a min, a stale or reversed difference)."""
    call = "result()" if i == len(scores) else f"update() of key {i} (score {fmt(scores[i])})"
    message = (f"{len(scores)} scores from {fmt(scores.min())} to {fmt(scores.max())}; "
               f"{call} raised OverflowError: {exc}{where_raised(exc)}")
    if _non_finite_cause(cls) == "nomax":
        return Mismatch(message, nomax_hint(scores))
    return Mismatch(message, EXPONENT_ABOVE_0_HINT)


def _non_finite_cause(cls) -> str | None:
    """Which of the NaN/inf mistakes `cls` makes, asked on one-key and two-key streams that
    tell them apart (the case's own scores cannot: near -1000, a missing max and a max
    started at 0 both give 0/0; and float32 overflows where the float64 simulation does
    not), or None when no probe shows one, or when `cls` is wrong on ordinary scores too
    (that is another mistake: the simulations name it)."""
    def answer(scores):
        def run():
            with np.errstate(all="ignore"):    # (the overflow is the question asked)
                state = cls(1)
                for i, s in enumerate(scores):
                    state.update(float(s), np.array([float(i + 1)]))
                return float(np.asarray(state.result(), dtype=np.float64).reshape(-1)[0])

        def run_or_inf():   # (math.exp raises where np.exp gives inf)
            try:
                return run()
            except OverflowError:
                return np.inf
        return probe(run_or_inf)

    def non_finite(scores):
        got = answer(scores)
        return got is not None and not np.isfinite(got)

    ordinary = [0.3, 1.2]
    right = float(_softmax_average(ordinary, [[1.0], [2.0]])[0])
    got = answer(ordinary)
    if got is None or not np.isclose(got, right, rtol=1e-4):
        return None
    return next((bug for bug, scores in (("nomax", [800.0]), ("max0", [-800.0]),
                                         ("first_max", [0.0, 800.0])) if non_finite(scores)),
                None)


def online_softmax(cls) -> CheckResult:
    """Check `cls(head_dim)` with update(score, value) and result() == softmax(scores) @ values."""
    rng = case_rng(5)
    dim = 6
    rand = rng.standard_normal(12), rng.standard_normal((12, dim))
    rising = np.linspace(-3, 5, 9), rng.standard_normal((9, dim))
    falling = np.linspace(4, -2, 7), rng.standard_normal((7, dim))
    huge = 1000 + 5 * rng.standard_normal(10), rng.standard_normal((10, dim))
    tiny = -1000 + 5 * rng.standard_normal(10), rng.standard_normal((10, dim))
    one = np.array([0.3]), rng.standard_normal((1, dim))
    # the max must move: exp of the rise over the first score overflows float64
    soaring = np.array([-400.0, -150.0, 100.0, 350.0, 360.0]), rng.standard_normal((5, dim))
    ties = np.array([1.5, 1.5, 0.5, 1.5, 1.5]), rng.standard_normal((5, dim))
    cases = [
        Case("random scores", {"n": 12, "head_dim": dim}, lambda: _online_case(cls, *rand)),
        Case("rising scores (the max changes every step)", {"n": 9},
             lambda: _online_case(cls, *rising)),
        Case("falling scores", {"n": 7}, lambda: _online_case(cls, *falling)),
        Case("one key", {"n": 1}, lambda: _online_case(cls, *one)),
        Case("equal scores (the max does not move)", {"n": 5},
             lambda: _online_case(cls, *ties)),
        Case("scores near +1000", {"n": 10}, lambda: _online_case(cls, *huge)),
        Case("scores near -1000", {"n": 10}, lambda: _online_case(cls, *tiny)),
        Case("scores rising by 760 (exp of the rise overflows)", {"n": 5},
             lambda: _online_case(cls, *soaring)),
    ]
    return run_cases("online_softmax", f"{getattr(cls, '__name__', cls)}: online softmax", cases)


# -- task: one query of the naive kernel, in Python --------------------------------------

def _attend_case(fn, seed: int, nan_fill: bool = False, **sizes) -> None:
    prob = paged_problem(seed, mode="prefill", **sizes)
    finite = paged_problem(seed, mode="prefill", **sizes) if nan_fill else None
    if nan_fill:
        nan_tails(prob)
    shape = prob.shape
    group = shape["num_heads"] // shape["num_kv_heads"]
    rng = case_rng(seed + 100)
    last_head = shape["num_heads"] - 1  # its kv head is not 0 when there are several
    queries = [(b, t, last_head) for b in range(shape["batch"])
               for t in (0, int(prob.seq_lens[b]) - 1)]          # first and last position
    for _ in range(4):
        b = int(rng.integers(shape["batch"]))
        queries.append((b, int(rng.integers(prob.seq_lens[b])),
                        int(rng.integers(shape["num_heads"]))))
    for b, t, h in queries:
        n = int(prob.seq_lens[b])
        kvh = h // group
        expected = prob.expected[b, t, h]
        given = {"q_vec": prob.q[b, t, h], "k_cache": prob.k_cache, "v_cache": prob.v_cache,
                 "block_table_row": prob.block_tables[b]}
        passed = {name: array.copy() for name, array in given.items()}
        try:
            got = fn(*passed.values(), n, t, kvh, prob.scale)
        except IndexError as exc:
            # t >> log2(page_size) runs past the row where // stays in it
            page_size = shape["page_size"]
            row_len = len(given["block_table_row"])
            if page_size & (page_size - 1) and pow2_div(t, page_size) >= row_len > \
                    t // page_size and not _past_another_axis(exc, row_len):
                raise Mismatch(f"sequence {b}, token {t}: IndexError: {exc}", POW2_HINT.format(
                    name="page_size", n=page_size)) from exc
            raise
        changed = changed_input("attend_one", given, passed, CACHE_VIEWS)
        if changed is not None:
            raise kept_first_value(changed, given, passed, t, kvh)
        if got is None:
            raise Mismatch("returned None", "return the [head_dim] output vector.")
        got = np.asarray(got, dtype=np.float64)
        if got.shape != expected.shape:
            raise Mismatch("output shape", "[head_dim]", str(expected.shape), str(got.shape))
        diff = describe_difference(got, expected, ("dim",), unwritten=False)
        if diff is None:
            continue
        one = slice(b, b + 1)

        def variant(**bugs):
            scale = bugs.pop("scale", prob.scale)
            return lambda: attention_variant(prob.q[one], prob.k_cache, prob.v_cache,
                                             prob.block_tables[one], prob.seq_lens[one], scale,
                                             **bugs)[0, t, h]

        if finite is not None and np.isnan(got).any() and probe(lambda: describe_difference(
                np.asarray(fn(finite.q[b, t, h].copy(), finite.k_cache, finite.v_cache,
                              finite.block_tables[b].copy(), n, t, kvh, finite.scale),
                           dtype=np.float64), expected, ("dim",), unwritten=False) is None):
            raise Mismatch(f"sequence {b} (seq_len {n}), token {t}, head {h}: "
                           + diff.message(), TAIL_HINT)
        no_key = t == 0 and (not got.any() or np.isnan(got).all())
        head_dim = prob.k_cache.shape[-1]
        hint = ("query 0 attended to no key at all (zeros or 0/0): query t attends to keys "
                "0..t inclusive, its own token too.") if no_key else overflow_hint(
            got, prob, b, t, h) or diagnose(got, expected, [
            ("scale the scores: score = (q . k) * scale.", variant(scale=1.0)),
            (f"use the scale you are given ({prob.scale:.4g} here), not 1/sqrt(head_dim) "
             f"({1 / np.sqrt(head_dim):.4g}): the caller chooses it.",
             variant(scale=float(1 / np.sqrt(head_dim)))),
            (POW2_HINT.format(name="page_size", n=prob.shape["page_size"]),
             variant(pow2_pages=True)),
            (twice_hint(prob.scale, head_dim), variant(scale=prob.scale ** 2)),
            (f"multiply q . k by `scale` ({prob.scale:.4g} here), not divide by it: it is "
             "the factor itself (1/sqrt(head_dim) by default).", variant(scale=1 / prob.scale)),
            ("read the kv head you were given: k_cache[page, offset, kv_head], not kv head 0.",
             variant(kv_map="zero")),
            ("the values come from v_cache: the weights multiply v, not k.",
             variant(values_from_keys=True)),
            (SCALED_VALUES_HINT, variant(scaled_values=True)),
            ("no causal mask: query t attends to keys 0..t only, not all seq_len keys.",
             variant(mask="none")),
            ("query t must attend to keys 0..t inclusive (its own token too).",
             variant(mask="strict")),
            ("one key too many, the one after the query's own: query t attends to keys "
             "0..t (range(t + 1)), not 0..t + 1.", variant(mask="past")),
            ("the page offset is off by one: token j is at offset j % page_size.",
             variant(offset_shift=1)),
            ("translate each key position through block_table_row; the cache is not contiguous.",
             variant(identity_pages=True)),
            (PAGE_ONLY_HINT, variant(slot_bug="page_only")),
            (UNSCALED_PAGES_HINT, variant(slot_bug="unscaled")),
            (SWAPPED_SLOT_HINT, variant(slot_bug="swap")),
            (HEAD_STRIDE_HINT, variant(head_stride_bug=True)),
        ], nan_is_evidence=finite is None) \
            or "loop j = 0..t: slot = row[j // page_size] * page_size + j % page_size; score " \
               "= q . k_cache[slot, kv_head] * scale; online softmax over the scores."
        raise Mismatch(f"sequence {b} (seq_len {n}), token {t}, head {h} (kv head {kvh}): "
                       + diff.message(), hint)


def _past_another_axis(exc: IndexError, row_len: int) -> bool:
    """NumPy's IndexError names an axis or a size that is not the block-table row's: the
    index ran past another array (a row read past its end names axis 0 and the row's size)."""
    found = re.search(r"out of bounds for axis (\d+) with size (\d+)", str(exc))
    return found is not None and (int(found[1]), int(found[2])) != (0, row_len)


def attend_one(fn) -> CheckResult:
    """Check `fn(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale)`: one causal query."""
    cases = [
        Case("2 sequences", {"page_size": 4, "num_kv_heads": 2, "head_dim": 8},
             lambda: _attend_case(fn, 11, seq_lens=[13, 6], num_heads=2, num_kv_heads=2,
                                  head_dim=8, page_size=4)),
        Case("GQA, page_size 8", {"page_size": 8, "num_heads": 4, "num_kv_heads": 2},
             lambda: _attend_case(fn, 12, seq_lens=[21, 17, 9], num_heads=4, num_kv_heads=2,
                                  head_dim=16, page_size=8)),
        Case("unused cache slots hold NaN", {"page_size": 8, "num_heads": 2},
             lambda: _attend_case(fn, 13, seq_lens=[11, 20], num_heads=2, num_kv_heads=1,
                                  head_dim=8, page_size=8, nan_fill=True)),
        # the page sizes above are powers of two and the scale is 1/sqrt(head_dim): shifts
        # for // and %, or a scale of one's own, would pass them
        Case("page_size 6, scale 0.3", {"page_size": 6, "num_heads": 6, "num_kv_heads": 2,
                                        "scale": 0.3},
             lambda: _attend_case(fn, 14, seq_lens=[17, 10], num_heads=6, num_kv_heads=2,
                                  head_dim=8, page_size=6, scale=0.3)),
        Case("scores past 709 (scale 200): exp overflows", {"page_size": 4, "scale": 200},
             lambda: _attend_case(fn, 15, seq_lens=[9, 14], num_heads=2, num_kv_heads=2,
                                  head_dim=8, page_size=4, scale=200.0)),
    ]
    return run_cases("attend_one", "attend_one: one query token over its paged keys", cases)
