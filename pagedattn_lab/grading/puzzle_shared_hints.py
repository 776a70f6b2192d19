"""What puzzle 4 of workbook 03 (dot_scores, checks_onramp.py) says when it fails: an index
past a fixed-size array, and the hints read off its scores, each a callable (diff) -> str |
None that names one mistake only where the scores are that mistake's, for
puzzle_hints.check_output."""
from __future__ import annotations

import re

import numpy as np


def fixed_size_array(fault, head_dim) -> str | None:
    """The hint for an index past a fixed-size array (a local or static __shared__ one) that
    holds fewer floats than head_dim: its size, not the loop, is the mistake."""
    size = re.search(r"\[(\d+)\]", getattr(fault, "array_type", None) or "")
    if getattr(fault, "region", None) != "local or shared array" or not size or \
            int(size.group(1)) >= head_dim:
        return None
    return (f"that array holds {size.group(1)} floats, fewer than head_dim = {head_dim} here: "
            "a fixed size fits only the head sizes it was written for. Stage q in the "
            "`extern __shared__ float q_shared[];` array, which the launch sizes to "
            "head_dim * 4 bytes.")


def shared_hints(got, q, k, expected, counts, threads: int) -> list:
    """The hints, first to last, for the scores `got` [n] of q [head_dim] against the keys
    k [n, head_dim], launched on blocks of `threads` threads with `counts` counted."""
    n, head_dim = k.shape

    def gives(candidate):   # (1e-4: a float32 dot product of up to 48 terms)
        return np.allclose(got, candidate, rtol=1e-4, atol=1e-4)

    def q_not_all_staged(diff):
        stored = counts.shared_writes.sum(axis=1)    # per block
        if not diff.unwritten.any() or stored.min() >= head_dim:
            return None
        short = int(np.argmin(stored))
        said = (f"a block stored only {int(stored.min())} of q's {head_dim} values in shared "
                "memory (NaN is what the executor leaves in the rest)")
        keys = short * threads + np.arange(threads)
        idle = counts.shared_writes[short] == 0
        if idle[keys >= n].all() and (keys >= n).any() and not idle[keys < n].all():
            # the threads with a key stored, those past the last key none: a guard on the load
            return (f"{said}: its threads past the last key (key >= n = {n}) stored none of "
                    "it. They have no key, but they must still help load q: guard the dot "
                    "product and the store of scores, not the load.")
        if head_dim > threads:
            return (f"{said}: with {threads} threads and head_dim {head_dim}, some threads "
                    "must load more than one.")
        return f"{said}: every one of q's values must be stored before the barrier."

    def q_stored_over_itself(diff):
        # every score stored once and every value of q stored, yet the scores are NaN: the
        # stores shared slots of q_shared, and the others kept the NaN it starts with
        stored = counts.shared_writes.sum(axis=1)
        if counts.by_buffer["scores"].writes != n or not np.isnan(got).all() or \
                stored.min() < head_dim:
            return None
        return (f"every block stored q's {head_dim} values in shared memory and every score "
                "was stored once, yet the scores are NaN: the stores went to too few slots of "
                "q_shared (one written again and again, as q_shared[threadIdx.x] = q[d] does), "
                "so the rest still hold the NaN shared memory starts with on the CPU executor. "
                "Store q[d] at q_shared[d].")

    def k_by_columns(diff):
        columns = k.reshape(-1).reshape(head_dim, n).T.astype(np.float64) @ q
        return ("k was read column after column, k[d * n + t]: k is [n, head_dim] row-major, "
                "so key t's element d is k[t * head_dim + d]." if n > 1 and gives(columns)
                else None)

    def scaled(diff):
        return ("the scores are q . k[t] divided by sqrt(head_dim): this puzzle asks for the "
                "plain dot product (the attention kernels scale it later, by their argument)."
                if gives(expected / np.sqrt(head_dim)) else None)

    def score_mistake(diff):
        t = np.arange(n)
        forms = [(f"keys {threads} and up got the score of key t % {threads}: a thread's key "
                  "is t = blockIdx.x * blockDim.x + threadIdx.x, in k too, not threadIdx.x "
                  "alone.", k[t % threads].astype(np.float64) @ q),
                 (f"q_shared[d] holds q[d % {threads}]: each thread stored its own q[threadIdx.x] "
                  "at every d it loaded, so the dims from blockDim.x on hold the wrong values. "
                  "Store q_shared[d] = q[d].",
                  k.astype(np.float64) @ q[np.arange(head_dim) % threads]),
                 ("the dot product skips d = head_dim - 1: its loop runs d < head_dim.",
                  k[:, :-1].astype(np.float64) @ q[:-1]),
                 ("the dot product skips d = 0: its loop starts at 0.",
                  k[:, 1:].astype(np.float64) @ q[1:])]
        if n > 1 and np.array_equal(diff.unwritten, t == n - 1) and \
                np.array_equal(diff.bad, diff.unwritten):
            return (f"only the last key, {n - 1}, got no score: it is the last one that "
                    "exists, so the guard is t < n (yours stops one short).")
        return next((text for text, wrong in forms
                     if not np.allclose(wrong, expected, rtol=1e-4, atol=1e-4) and gives(wrong)),
                    None)

    def whole_numbers(diff):
        # an int truncated the scores: the score's fraction cut off at the end, or at every
        # step of an int sum (acc = (int)(acc + product)), or each term's (int products)
        products = k.astype(np.float64) * q
        stepped = np.zeros(n)
        for d in range(head_dim):
            stepped = np.trunc(stepped + products[:, d])
        forms = [("every score is the dot product with its fraction cut off: an (int) cast "
                  "or an int variable truncates the score; keep it a float.",
                  np.trunc(expected)),
                 ("the sum is kept in an int: each += cuts off the fraction as it goes; keep "
                  "the sum a float.", stepped),
                 ("each term q[d] * k[t, d] lost its fraction before it was added (an int "
                  "product); keep the terms float.", np.trunc(products).sum(axis=1))]
        if not np.isfinite(got).all() or not np.array_equal(got, np.trunc(got)):
            return None
        # (nine in ten exactly, the rest within 1: the kernel's float32 rounding may land a
        # sum on the other side of a whole number where this float64 one does not)
        return next((text for text, wrong in forms
                     if not np.allclose(wrong, expected, rtol=1e-4, atol=1e-4)
                     and np.mean(got == wrong) >= 0.9 and np.abs(got - wrong).max() <= 1),
                    None)

    def shifted(diff):
        # every score off by one amount: the sum started from it, not from 0
        shift = got.astype(np.float64) - expected
        if not np.isfinite(shift).all() or not np.allclose(shift, shift[0], atol=1e-4) or \
                np.isclose(shift[0], 0, atol=1e-4):
            return None
        return (f"every score is q . k[t] + {shift[0]:.4g}: the dot product's sum starts "
                "at 0.0f.")

    return [q_not_all_staged, q_stored_over_itself, k_by_columns, scaled, score_mistake,
            whole_numbers, shifted]
