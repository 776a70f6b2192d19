"""What the online-softmax and attend_one checks (checks_softmax.py) say about a wrong answer:
the online softmax's usual mistakes, each with the hint that names it (matched by the
mistake models in checks_softmax), and the hints read off a NaN, an overflow or a write
into the cache."""
from __future__ import annotations

import numpy as np

from .compare import fmt
from .report import Mismatch

SOFTMAX_MISTAKES = [
    ("the accumulator is not rescaled when the max grows: acc = acc * exp(m_old - m_new) + "
     "exp(score - m_new) * value.", "no_rescale_acc"),
    ("the running sum is not rescaled when the max grows: l = l * exp(m_old - m_new) + "
     "exp(score - m_new).", "no_rescale_l"),
    ("result() must divide by the running sum l: the weights have to add up to 1.",
     "no_normalize"),
    ("neither l nor acc is rescaled when the max grows: compute exp(m_old - m_new) before "
     "m is overwritten (after `m = max(m, score)` it is exp(0) = 1).", "no_rescale"),
    ("the rescale factor is exp(m_old - m_new), at most 1: the old terms shrink when the "
     "max grows (yours is the inverse).", "inverted"),
    ("l must sum the weights exp(score - m), not count the keys.", "count"),
    ("result() is the last value alone: the running max is never stored, so with m still "
     "-inf, exp(m - m_new) is 0 at every update and each key wipes out the ones before. Set "
     "m = m_new at the end of update().", "max_stuck"),
    ("each key is weighed against the max before it, exp(score - m_old), while l and acc "
     "are rescaled to the new one: weigh it with exp(score - m_new).", "old_max_first"),
    ("a score that raises the max restarts l and acc from that key alone, so the keys "
     "before it are lost: keep them, scaled down by exp(m_old - m_new) (l = l * "
     "exp(m_old - m_new) + exp(score - m_new), and acc likewise).", "reset"),
    ("acc holds only the last key's term: each update must add exp(score - m_new) * value "
     "to the rescaled acc (acc = acc * exp(m_old - m_new) + ...), not assign it.",
     "acc_assigned"),
]
NON_FINITE_MISTAKES = [  # mistakes that are right on ordinary scores come first
    ("exp(score) overflowed to inf: always exponentiate score - running_max, never the raw "
     "score.", "nomax"),
    ("exp(score - m) underflowed to 0 and you divided 0 by 0: start the running max at -inf "
     "(not 0), so the first score becomes the max.", "max0"),
    ("NaN from ordinary scores, from the first key on: with m = -inf, both exp(score - m) "
     "and exp(m_new - m) are inf. Weigh each key with exp(score - m_new) and rescale with "
     "exp(m_old - m_new), which is at most 1.", "old_max"),
    ("the running max is max(m, score), not min: a min stays at its start, -inf, and "
     "exp(m_old - m_new) = exp(-inf - (-inf)) is NaN.", "min_max"),
    ("exp(score - m) overflowed to inf: m stayed at the first score while later scores rose "
     "far above it. m is the max so far: when a score raises it, set m to it and rescale l and "
     "acc by exp(m_old - m_new) before adding the new key.", "first_max"),
]

EXPONENT_ABOVE_0_HINT = (
    "exp overflowed (math.exp raises OverflowError past 709.78): one of your exponents was far "
    "above 0. With m the running max, the largest score so far, both exponents, score - m_new "
    "and m_old - m_new, are at most 0: exponentiate only those (a max, not a min; the old max "
    "minus the new, not the reverse).")


def nomax_hint(scores) -> str:
    """The missing max, as this case's scores show it: exp overflows high scores (past 709
    in float64, 88 in float32) and underflows very negative ones to 0, then 0/0."""
    if scores.max() < 0:
        return (f"exp(score) underflowed to 0 (the scores are near {fmt(scores.max())} here) "
                "and 0/0 is NaN: you exponentiate the raw score. Keep a running max m and "
                "exponentiate score - m, never the raw score.")
    return (f"exp(score) overflowed to inf (the scores reach {fmt(scores.max())} here; exp "
            "overflows past 709 in float64, past 88 in float32): you exponentiate the raw "
            "score. Keep a running max m and exponentiate score - m, never the raw score.")


def overflow_hint(got, prob, b, t, h) -> str | None:
    """inf or NaN where the scores reach past 709, where exp overflows float64."""
    if np.isfinite(got).all():
        return None
    row, page_size = prob.block_tables[b], prob.shape["page_size"]
    kvh = h // (prob.shape["num_heads"] // prob.shape["num_kv_heads"])
    j = np.arange(t + 1)
    keys = prob.k_cache[row[j // page_size], j % page_size, kvh].astype(np.float64)
    top = float((keys @ prob.q[b, t, h].astype(np.float64)).max() * prob.scale)
    if top < 709:
        return None
    return (f"the scores reach {top:.4g} here, and exp of anything past 709 overflows float64 "
            "(past 88 in float32; inf / inf is NaN): exponentiate score - running_max "
            "(OnlineSoftmax does), never the raw score.")


def kept_first_value(changed: Mismatch, given: dict, passed: dict, t: int, kvh: int):
    """changed_input's Mismatch; where only v_cache changed, and of the t + 1 value rows the
    query read only the first key's, the hint of a state that kept that row as its
    accumulator (acc = value, a view of the cache) and then updated it in place (a scaled
    `value` would change every row read)."""
    if t == 0 or not np.array_equal(passed["k_cache"], given["k_cache"], equal_nan=True):
        return changed
    v, was = np.asarray(passed["v_cache"]), given["v_cache"]
    rows = {tuple(int(i) for i in at[:3])
            for at in np.argwhere(~((v == was) | (np.isnan(v) & np.isnan(was))))}
    if rows == {(int(given["block_table_row"][0]), 0, kvh)}:
        changed.hint = (f"of the {t + 1} value rows this query read, only the first key's "
                        "changed: your online softmax keeps the first value it is given as its "
                        "accumulator (acc = value: a view of v_cache) and then updates acc in "
                        "place (acc *= ..., acc += ...), writing into the cache. Start acc "
                        "from np.zeros(head_dim), or from a copy (value * weight).")
    return changed


CACHE_VIEWS = {  # the inputs an index turns into a view: a write through it reaches the cache
    cache: f"an index like {cache}[page, offset, kv_head] is a view of the cache, so `{row} *= "
           f"scale` (or {row}[...] = ...) writes into the cache; compute a new array ({row} * "
           "scale)" for cache, row in (("k_cache", "key"), ("v_cache", "value"))}


TAIL_HINT = ("right when the unused cache slots hold numbers, NaN when they hold NaN (as "
             "garbage may): you read keys past t (whole pages, or the tail of the last page) "
             "and weigh them by 0, but 0 * NaN is NaN. Read only keys 0..t.")
