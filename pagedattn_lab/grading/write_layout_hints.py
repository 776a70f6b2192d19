"""Hints for quantize_write's codes or per-token scales stored at a wrong index
(checks_quant.py): each speaks only where what the kernel left fits that index. Where
several blocks store to one place the last one wins, and the order of blocks is not defined:
any of their values fits there."""
from __future__ import annotations

import numpy as np

from .quant_variants import FILL


def _fits(got, starts, values, unwritten) -> bool:
    """Whether flat `got` holds, at each index start + i, one of the `values` [rows, n] stored
    there (start [rows]: where each row's first value went), and `unwritten` elsewhere.
    Every index is inside `got`: each row a caller places ends no later than its live
    slot's own entries do."""
    flat = got.reshape(-1)
    at = (starts[:, None] + np.arange(values.shape[1])).ravel()
    held = np.zeros(flat.size, bool)
    held[at[np.isclose(flat[at], values.ravel(), rtol=1e-6, atol=0)]] = True
    stored = np.zeros(flat.size, bool)
    stored[at] = True
    return bool((held | (~stored & unwritten(flat))).all())


def slot_only_hint(got, want, heads, rows, dim=None) -> str | None:
    """When every live slot's k_scale[slot] (`dim` given: codes k_cache[slot * head_dim:])
    holds one of its token's heads': the head left out of the index, as they overwrote it."""
    unit = dim or 1
    flat, per_head = got.reshape(-1, unit), want.reshape(-1, heads, unit)
    if heads == 1 or not all(any(np.allclose(flat[s], row, rtol=1e-6, atol=0)
                                 for row in per_head[s]) for s in rows):
        return None
    if dim:
        return ("the codes of (slot, head) go to k_cache[(slot * num_kv_heads + head) * "
                "head_dim + d], not k_cache[slot * head_dim + d] (there the heads of a token "
                "overwrite each other).")
    return ("one per-token scale per (slot, KV head): write k_scale[slot * num_kv_heads + "
            "head], not k_scale[slot] (there the heads of a token overwrite each other).")


def codes_by_head_offset_hint(got, want, rows) -> str | None:
    """The codes of (slot, head) stored from k_cache[slot * head_dim + head] on: the heads'
    rows overlap, one element apart."""
    _, _, heads, dim = want.shape
    codes = want.reshape(-1, heads, dim)[rows].reshape(-1, dim)
    starts = (rows[:, None] * dim + np.arange(heads)).ravel()
    if heads == 1 or not _fits(got, starts, codes, lambda flat: flat == FILL):
        return None
    return ("the codes of (slot, head) go to k_cache[(slot * num_kv_heads + head) * head_dim "
            "+ d], not k_cache[slot * head_dim + head + d]: a slot holds num_kv_heads rows of "
            "head_dim codes, so the row's start is (slot * num_kv_heads + head) * head_dim "
            "(yours overlap, one element apart, and overwrite each other).")


def scale_at_head_hint(got, want, rows) -> str | None:
    """Every per-token scale stored at k_scale[head], the static scales' index: the tokens of
    a head overwrite each other there, and no slot's own entry is written."""
    heads = want.shape[-1]
    scales = want.reshape(-1, heads)[rows].T.reshape(-1, 1)   # head by head
    starts = np.repeat(np.arange(heads), len(rows))
    if not (rows > 0).any() or not _fits(got, starts, scales, np.isnan):
        return None
    return ("a per-token scale goes to k_scale[slot * num_kv_heads + head], one per (slot, "
            "head), laid out like the pages: yours wrote every token's scale at "
            "k_scale[head], the static scales' index, so the tokens of a head overwrite each "
            "other there and the slots' own entries are never written.")
