"""The online softmax with its classic mistakes switched on, as a learner's kernel runs it:
the one model of it that attention_variant (variants.py) and the split-K partitions
(decode_variants.py) share.

    bug="acc" / "sum" / "both"   acc / the running sum / both not rescaled when the max grows
    bug="max0"                   the running max starts at 0, not -inf
    bug="old_max"                a key weighed against the max before it, exp(s - m_old)
    bug="new_term"               acc + rescale * weight * v: the rescale on the new term
    bug="max_stuck"              the running max never set to the new one
    bug="acc_reset"/"sum_reset"  acc / the running sum set to 0 at every key
    (bug="no_div", acc never divided by l, is the caller's: acc is returned undivided)

A key scored -inf is one the mask leaves out, which a kernel never visits. Any other key is
visited as a kernel visits it, a NaN score (a key read from a slot holding NaN) included:
fmaxf keeps the running max, and exp(NaN) makes l and acc NaN, as the model without an
online bug makes the row.
"""
from __future__ import annotations

import numpy as np


def online_state(logits, values, bug: str):
    """(m, l, acc): the running max, the running sum and the accumulator (not divided by l)
    after the keys in order, for every query row of `logits` [rows, keys] at once."""
    rows = logits.shape[0]
    m = np.full(rows, 0.0 if bug == "max0" else -np.inf)
    total = np.zeros(rows)
    acc = np.zeros((rows, values.shape[1]))
    for j in range(logits.shape[1]):
        s = logits[:, j]
        live = s != -np.inf   # (True for NaN)
        m_new = np.where(live, np.fmax(m, s), m)
        alpha = np.where(live, np.exp(m - m_new), 1.0)
        p = np.where(live, np.exp(s - (m if bug == "old_max" else m_new)), 0.0)
        if bug == "max0":  # the kernel's expf: float32 underflows to 0 below about -104
            p = p.astype(np.float32).astype(np.float64)
        total, acc = (np.where(live, 0.0, total) if bug == "sum_reset" else total,
                      np.where(live[:, None], 0.0, acc) if bug == "acc_reset" else acc)
        total = (total if bug in ("sum", "both") else total * alpha) + p
        if bug == "new_term":
            acc = acc + (alpha * p)[:, None] * values[j]
        else:
            acc = (acc if bug in ("acc", "both") else acc * alpha[:, None]) + \
                p[:, None] * values[j]
        if bug != "max_stuck":
            m = m_new
    return m, total, acc
