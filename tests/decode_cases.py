"""Decode problems for the tests: random, seeded, awkward on purpose.

Every problem has its pages scattered over a cache with spare pages, NaN in the slots of
each sequence's last page past its length (a kernel that reads them, or multiplies them by a
zero weight, gives NaN), and optionally pages shared by several sequences (a common prefix,
as prefix caching makes). bfloat16 problems are drawn in float32 and rounded; the reference
gets the rounded values in float32 (exact).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import pagedattn_lab
from pagedattn_lab import reference_decode

TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}


def bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def np_dtype(name: str):
    return bf16() if name == "bfloat16" else np.dtype(name)


def decode_problem(rng, lens, *, page_size=16, num_heads=4, num_kv_heads=2, head_dim=64,
                   dtype="float16", shared_prefix=0, spare_pages=3):
    """(q, k_cache, v_cache, block_tables, seq_lens) as NumPy arrays of `dtype`.

    shared_prefix=n: every sequence's first n pages are sequence 0's first n pages (each
    sequence must then have more than n pages' worth of tokens, except sequence 0).
    """
    pages = [-(-n // page_size) for n in lens]
    own = [p - (shared_prefix if b else 0) for b, p in enumerate(pages)]
    num_pages = sum(own) + spare_pages
    perm = rng.permutation(num_pages).astype(np.int32)
    tables = np.full((len(lens), max(pages) + 1), -1, dtype=np.int32)
    start = 0
    for b, n in enumerate(own):
        first = shared_prefix if b else 0
        tables[b, first:first + n] = perm[start:start + n]
        start += n
    if shared_prefix:
        assert lens[0] >= shared_prefix * page_size and all(p > shared_prefix for p in pages[1:]), \
            "shared pages must be whole pages of every sequence"
        tables[1:, :shared_prefix] = tables[0, :shared_prefix]
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal(shape).astype(np.float32)
    for b, n in enumerate(lens):   # NaN in the unused slots of each last page
        tail = n % page_size
        if tail:
            k[tables[b, pages[b] - 1], tail:] = np.nan
            v[tables[b, pages[b] - 1], tail:] = np.nan
    q = rng.standard_normal((len(lens), num_heads, head_dim)).astype(np.float32)
    dt = np_dtype(dtype)
    return q.astype(dt), k.astype(dt), v.astype(dt), tables, np.array(lens, dtype=np.int32)


def reference(args, scale=None):
    """float64 reference of a decode problem (bfloat16 inputs through float32, exactly)."""
    q, k, v, tables, lens = (np.asarray(a) for a in args)
    as32 = [a.astype(np.float32) if a.dtype == bf16() else a for a in (q, k, v)]
    return reference_decode(*as32, tables, lens, scale)


def check_close(out, ref, dtype: str):
    """Every output written (outputs are poisoned with NaN before launch) and close."""
    out = np.asarray(out).astype(np.float64)
    assert np.isfinite(out).all(), "some outputs were not written (still NaN) or NaN was read"
    err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    assert err < TOL[dtype], f"relative error {err:.2e} (tolerance {TOL[dtype]:g})"
    return err


def poisoned(shape, dtype: str):
    return np.full(shape, np.nan, dtype=np.float32).astype(np_dtype(dtype))


def cpu_executor_has(header: str) -> bool:
    """Whether the CPU executor's shim implements `header` (mma.h: WMMA; cuda_bf16.h:
    bfloat16) rather than refusing it with #error."""
    path = Path(pagedattn_lab.__file__).parent / "cpu" / "include" / header
    return "#error" not in path.read_text()
