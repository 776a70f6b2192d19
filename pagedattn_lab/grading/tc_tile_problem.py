"""Lesson 09 task 2's problem (the group-as-rows tile step): one paged fp16 sequence with NaN
wherever no token is, and the scores S = Q K^T worked out in float64 the way the kernel's
WMMA loads read its tiles, so a wrong leading dimension or layout can be replayed by name.
"""
from __future__ import annotations

import numpy as np

from .checks_tc_rows import TILE, reference_group_rows
from .seeds import case_rng


class TileProblem:
    """One sequence of a paged fp16 cache; unused slots and pages hold NaN; q is followed by
    16 NaN rows (a read past the last group shows as NaN, not a fault)."""

    def __init__(self, seed, num_heads, num_kv_heads, head_dim, page_size, seq_len):
        rng = case_rng(seed)
        n_pages = -(-seq_len // page_size)
        num_pages = n_pages + 3     # table entries past the sequence point at NaN pages
        table = self.block_table = rng.permutation(num_pages)[:n_pages + 2].astype(np.int32)
        self.k_cache = np.full((num_pages, page_size, num_kv_heads, head_dim), np.nan,
                               np.float16)
        keys = rng.standard_normal((seq_len, num_kv_heads, head_dim)).astype(np.float16)
        t = np.arange(seq_len)
        self.k_cache[table[t // page_size], t % page_size] = keys
        self.q_buffer = np.full((num_heads + TILE, head_dim), np.nan, np.float16)
        self.q_buffer[:num_heads] = rng.standard_normal((num_heads, head_dim))
        self.q, self.keys = self.q_buffer[:num_heads], keys
        self.sizes = (num_heads, num_kv_heads, head_dim, page_size, seq_len)
        self.n_tiles = -(-seq_len // TILE)

    def expected(self, q_rows=None, k_tile=None, short_copy=False, **how):
        """Scores [num_kv_heads, n_tiles, 16, 16] in float64; q_rows(kv) and k_tile(kv)
        give the two 16-row operands (default: the spec's); `how` goes to product.
        short_copy: row 15 of both operands never written (NaN: the CPU executor's)."""
        num_heads, num_kv_heads, head_dim, _, seq_len = self.sizes
        group = num_heads // num_kv_heads
        out = np.zeros((num_kv_heads, self.n_tiles, TILE, TILE))
        keys = np.zeros((self.n_tiles * TILE, num_kv_heads, head_dim))
        keys[:seq_len] = self.keys
        for j in range(num_kv_heads):
            qr = q_rows(j) if q_rows else reference_group_rows(
                self.q.astype(np.float64), j, group)[0]
            for t in range(self.n_tiles):
                kt = k_tile(j, t) if k_tile else keys[t * TILE:(t + 1) * TILE, j]
                a, b = (np.vstack([x[:TILE - 1], np.full((1, x.shape[1]), np.nan)])
                        if short_copy else x for x in (qr, kt))
                out[j, t] = self.product(a, b, **how)
        return out

    @staticmethod
    def product(q_rows, k_rows, lda=None, ldb=None, b_row_major=False, a_col_major=False,
                step_past=False, a_step=1):
        """S = A B over 16-column steps the way load_matrix_sync reads the shared tiles:
        A from q_rows [16, d] with leading dimension lda read row-major (or column-major),
        B from k_rows [16, d] (token rows) read column-major with ldb (or row-major).
        step_past: a step at k0 = d too, past the rows (NaN: the CPU executor's unwritten).
        a_step: A loaded from q_rows + k0 * a_step (what it reads past the tile is NaN:
        unknown, it lies after q_tile in shared memory)."""
        d = q_rows.shape[1]
        lda, ldb = lda or d, ldb or d
        qa, ka = np.ravel(q_rows), np.ravel(k_rows)
        if a_step != 1:
            qa = np.concatenate([qa, np.full((d - TILE) * (a_step - 1), np.nan)])
        if step_past:
            qa, ka = (np.concatenate([x, np.full(TILE, np.nan)]) for x in (qa, ka))
        s = np.zeros((TILE, TILE))
        r, c = np.meshgrid(np.arange(TILE), np.arange(TILE), indexing="ij")
        for k0 in range(0, d + TILE * step_past, TILE):
            base = k0 * a_step
            a = qa[base + c * lda + r] if a_col_major else qa[base + r * lda + c]   # a[row, k]
            b = ka[k0 + r * ldb + c] if b_row_major else ka[k0 + c * ldb + r]  # b[k, token]
            s += a @ b
        return s
