"""Seeded random inputs sized so that the classic mistakes show.

Every paged problem scatters each sequence over random physical pages (so a kernel that
ignores the block table reads someone else's data), gives the sequences different
lengths that are not multiples of the page size (so off-by-ones in the last page show),
makes sequence 0 the longest (so a kernel that reads row 0 for everyone stays in bounds
and is recognized), fills unused pages and padded query rows with random numbers (so
reading them changes the answer), and uses several KV heads (so a head stride without
`num_kv_heads` is wrong for every head but 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..addressing import token_slots
from ..reference import reference_decode, reference_prefill
from .seeds import case_rng


@dataclass
class PagedProblem:
    q: np.ndarray
    k_cache: np.ndarray
    v_cache: np.ndarray
    block_tables: np.ndarray
    seq_lens: np.ndarray
    scale: float
    mode: str
    params: dict = field(default_factory=dict)
    _expected: np.ndarray | None = None

    @property
    def expected(self) -> np.ndarray:
        if self._expected is None:
            fn = reference_prefill if self.mode == "prefill" else reference_decode
            self._expected = fn(self.q, self.k_cache, self.v_cache, self.block_tables,
                                self.seq_lens, self.scale)
        return self._expected

    @property
    def shape(self) -> dict:
        num_pages, page_size, num_kv_heads, head_dim = self.k_cache.shape
        return {"batch": int(self.q.shape[0]), "num_heads": int(self.q.shape[-2]),
                "num_kv_heads": int(num_kv_heads), "head_dim": int(head_dim),
                "page_size": int(page_size), "num_pages": int(num_pages),
                "max_pages": int(self.block_tables.shape[1]),
                "max_len": int(self.q.shape[1]) if self.mode == "prefill" else 1}

    def valid_rows(self) -> np.ndarray:
        """Prefill: bool [batch, max_len, 1, 1], True for tokens < seq_lens[b]."""
        max_len = self.q.shape[1]
        return (np.arange(max_len)[None, :] < self.seq_lens[:, None])[:, :, None, None]


def nan_tails(prob: PagedProblem) -> PagedProblem:
    """Put NaN in every cache slot that is not one of a sequence's first seq_len tokens (the
    tail of a last page, unused pages): a kernel that reads one and weighs it by 0 leaks
    0 * NaN = NaN, as it would leak the garbage of uninitialized memory."""
    num_pages, page_size = prob.k_cache.shape[:2]
    used = np.zeros(num_pages * page_size, bool)
    for row, n in zip(prob.block_tables, prob.seq_lens):
        used[token_slots(row, int(n), page_size)] = True
    for cache in (prob.k_cache, prob.v_cache):
        cache.reshape(num_pages * page_size, -1)[~used] = np.nan
    return prob


def block_tables_for(rng, seq_lens, page_size: int, num_pages: int, width: int) -> np.ndarray:
    """Scattered, distinct pages per sequence; -1 past each sequence's last page."""
    need = [-(-int(n) // page_size) for n in seq_lens]
    perm = rng.permutation(num_pages)
    tables = np.full((len(seq_lens), width), -1, dtype=np.int32)
    start = 0
    for b, n in enumerate(need):
        tables[b, :n] = perm[start:start + n]
        start += n
    return tables


def paged_problem(seed: int, *, mode: str, seq_lens, num_heads: int, num_kv_heads: int,
                  head_dim: int, page_size: int, extra_pages: int = 3, max_len: int | None = None,
                  extra_width: int = 1, scale: float | None = None,
                  negative_scores: bool = False,
                  score_shift: float | None = None,
                  score_rise: float | None = None) -> PagedProblem:
    """A random decode or prefill problem (float32 on the host).

    negative_scores: every q.k * scale is far below -88, where expf underflows to 0 in
    float32 (a running max started at 0 then divides 0 by 0).
    score_shift: every key's dim 0 is 1 and every query's dim 0 is score_shift / scale, so
    each score is moved by score_shift, which the softmax ignores (the same problem with
    score_shift 0 has the same answer); past about 88, expf(score) overflows float32.
    score_rise: the key at position p has dim 0 p and every query's dim 0 is score_rise /
    (scale * the longest seq_len), so the scores climb by up to score_rise along the keys:
    an exponent taken against the first key's score (a max not kept up) overflows."""
    rng = case_rng(seed)
    seq_lens = np.asarray(seq_lens, dtype=np.int32)
    need = [-(-int(n) // page_size) for n in seq_lens]
    num_pages = sum(need) + extra_pages
    width = max(need + [1]) + extra_width
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k_cache = rng.standard_normal(shape).astype(np.float32)
    v_cache = rng.standard_normal(shape).astype(np.float32)
    tables = block_tables_for(rng, seq_lens, page_size, num_pages, width)
    batch = len(seq_lens)
    if mode == "prefill":
        max_len = int(max_len if max_len is not None else max(int(seq_lens.max()), 1))
        q = rng.standard_normal((batch, max_len, num_heads, head_dim)).astype(np.float32)
    else:
        q = rng.standard_normal((batch, num_heads, head_dim)).astype(np.float32)
    scale = float(1.0 / np.sqrt(head_dim)) if scale is None else float(scale)
    if negative_scores:
        k_cache = (np.abs(k_cache) + 3).astype(np.float32)
        q = (-(np.abs(q) + 3) * 4).astype(np.float32)
    if score_shift is not None:
        k_cache[..., 0] = 1.0
        q[..., 0] = score_shift / scale
    if score_rise is not None:
        slots = k_cache.reshape(num_pages * page_size, num_kv_heads, head_dim)
        for row, n in zip(tables, seq_lens):
            slots[token_slots(row, int(n), page_size), :, 0] = np.arange(n)[:, None]
        q[..., 0] = score_rise / (scale * max(int(seq_lens.max()), 1))
    params = {"batch": batch, "seq_lens": [int(n) for n in seq_lens], "num_heads": num_heads,
              "num_kv_heads": num_kv_heads, "head_dim": head_dim, "page_size": page_size}
    return PagedProblem(q, k_cache, v_cache, tables, seq_lens, scale, mode, params)
