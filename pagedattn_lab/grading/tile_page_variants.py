"""The tiled prefill kernel's K/V confusion on a block's last page only (checks_kernels.py):
a branch for the last tile (p == pages - 1) that loads v_tile from k_cache, or weighs k_tile,
so the keys of that page are summed as its values. Pages before it are right, which the
whole-cache swaps of variants.attention_variant do not model. And the tile's load loop with
the key taken as i % page_size (i the element's index in the tile, not the key's), which
fills each tile element from another key of the same page."""
from __future__ import annotations

import numpy as np

from ..addressing import token_slots
from .variants import attention_variant

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


TILE_KEY_HINT = ("the tile's key was taken as i % page_size, i the element's index in the "
                 "tile: element i is key i / head_dim (dim i % head_dim), so its slot is page "
                 "* page_size + i / head_dim.")


def _tile_key_cache(cache) -> np.ndarray:
    """The cache as tiles loaded at slot page * page_size + i % page_size read it: element
    (key j, dim d) of a page, i = j * head_dim + d, holds key i % page_size's dim d of that
    same page (a page's position only: it holds whatever count of keys is live)."""
    cache = np.asarray(cache, np.float64)
    _, page_size, _, head_dim = cache.shape
    j, d = np.ogrid[:page_size, :head_dim]
    key = np.broadcast_to(((j * head_dim + d) % page_size)[None, :, None, :], cache.shape)
    return np.take_along_axis(cache, key, axis=1)


def tile_page_mistakes(case, block_queries: int):
    """(hint, thunk) pairs for compare.diagnose."""
    return [(LAST_PAGE_KEYS_HINT, lambda: last_page_keys(case, block_queries)),
            (TILE_KEY_HINT, lambda: attention_variant(
                case.q, _tile_key_cache(case.k_cache), _tile_key_cache(case.v_cache),
                case.block_tables, case.seq_lens, case.scale))]
