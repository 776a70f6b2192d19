"""Bytes of one page of the paged KV cache, and how many pages a memory holds: what the
capacity plots, the serving simulator and the engine's store size their pools by."""

from __future__ import annotations

import numpy as np

from .attention_common import element_dtype
from .quant import check_scheme, kv_format
from .validate import INT32_MAX, check_int
from .validate_memory import check_memory


def page_bytes(page_size: int, num_kv_heads: int, head_dim: int, dtype=np.float16,
               kv_dtype: str | None = None, scale_scheme: str = "static") -> int:
    """Bytes of one page (K and V): `page_size * num_kv_heads * 2 * head_dim` elements of
    `dtype`, or one byte each for a quantized cache plus 2 float32 per-token scales per
    (token, KV head) with `scale_scheme="per_token"` (static scales are a few bytes per
    layer, not per page). dtype: float32, float16 or bfloat16, as `PagedKVCache` takes it;
    sizes and scale_scheme refused by name as it refuses them."""
    page_size = check_int(page_size, "page_size", minimum=1, maximum=INT32_MAX)
    tokens_heads = page_size * check_int(num_kv_heads, "num_kv_heads", minimum=1)
    head_dim = check_int(head_dim, "head_dim", minimum=1)
    scheme = check_scheme(scale_scheme)
    itemsize = element_dtype(dtype).itemsize   # (refused with a compressed cache too, as there)
    if kv_dtype is None:
        return tokens_heads * 2 * head_dim * itemsize
    kv_format(kv_dtype)
    per_token = 2 * 4 if scheme == "per_token" else 0
    return tokens_heads * (2 * head_dim + per_token)


def pages_in(memory_bytes: int, **page) -> int:
    """How many pages of `page_bytes(**page)` fit in `memory_bytes` (an int >= 0)."""
    memory_bytes = check_int(memory_bytes, "memory_bytes", minimum=0)
    return memory_bytes // page_bytes(**page)


def check_cache_memory(page_nbytes: int, num_pages: int, device: str) -> None:
    """Refuse a cache larger than the memory of the device it would live on, before allocating.

    NumPy's zeros() of a few terabytes can succeed lazily and then kill the process when the
    pages are touched; a clear error up front is better.
    """
    check_page_memory(page_nbytes, device)
    check_memory(page_nbytes * num_pages, device, "num_pages", "the K and V caches",
                 "; use fewer pages")


def check_page_memory(page_nbytes: int, device: str,
                      sizes: str = "num_kv_heads x head_dim x page_size",
                      what: str = "one page (K and V)") -> None:
    """Refuse one page past the device's memory: fewer pages cannot help, so the error names
    the `sizes` that make the page absurd, not num_pages."""
    check_memory(page_nbytes, device, sizes, what, "; no number of pages fits: use smaller sizes")
