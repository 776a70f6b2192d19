"""The tiled prefill kernel's K/V confusion on a block's last page only (checks_kernels.py):
a branch for the last tile (p == pages - 1) that loads v_tile from k_cache, or weighs k_tile,
so the keys of that page are summed as its values. Pages before it are right, which the
whole-cache swaps of variants.attention_variant do not model."""
from __future__ import annotations

import numpy as np

from ..addressing import token_slots

LAST_PAGE_KEYS_HINT = ("on each block's last page (p == pages - 1) the keys were summed as "
                       "the values: every page, the last too, loads v_tile from v_cache and "
                       "weighs v_tile (weight * v_tile[j * head_dim + d]), never k_cache or "
                       "k_tile.")


def last_page_keys(case, block_queries: int) -> np.ndarray:
    """Causal prefill (float64, q's shape) where query t of block t / block_queries weighs,
    for each key on that block's last page, its K row instead of its V row."""
    q = np.asarray(case.q, np.float64)
    _, page_size, num_kv_heads, head_dim = case.k_cache.shape
    keys = np.asarray(case.k_cache, np.float64).reshape(-1, num_kv_heads, head_dim)
    values = np.asarray(case.v_cache, np.float64).reshape(-1, num_kv_heads, head_dim)
    group = q.shape[2] // num_kv_heads
    out = np.zeros(q.shape)
    for b, n in enumerate(int(x) for x in case.seq_lens):
        if n == 0:
            continue   # (an empty sequence's rows are all padding: zeros)
        t = np.arange(n)
        slots = token_slots(case.block_tables[b], n, page_size)
        needed = np.minimum(n, (t // block_queries + 1) * block_queries)
        on_last = (t[None, :] // page_size) == ((needed - 1) // page_size)[:, None]
        for h in range(q.shape[2]):
            k, v = keys[slots, h // group], values[slots, h // group]
            logits = np.where(t[None, :] <= t[:, None], q[b, :n, h] @ k.T * case.scale,
                              -np.inf)
            w = np.exp(logits - logits.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            out[b, :n, h] = w @ v + (w * on_last) @ (k - v)
    return out


def tile_page_mistakes(case, block_queries: int):
    """(hint, thunk) pairs for compare.diagnose."""
    return [(LAST_PAGE_KEYS_HINT, lambda: last_page_keys(case, block_queries))]
