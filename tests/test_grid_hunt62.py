"""Found by a seeded grid over the public attention API (hunt 62): the tensor-core prefill
kernels (`BatchPrefillWrapper`, prefill_mma.cu and the WMMA prefill_tc.cu) took
p = 2^fmaf(s, scale_log2, -m). The fused product is exact while the row maximum m is rounded,
so the largest score of a row got 2^(the rounding error of m): past |m| ~ 2^31 (log2 units)
that is inf or 0, and the row came out inf or NaN. Valid fp16 inputs reach it (q, k entries
~1e4 at the default scale); the decode kernels, which round the product first, were exact."""
import numpy as np
import pytest

import pagedattn_lab as pl

HEAD_DIM, PAGE, HEADS, KV_HEADS = 128, 16, 4, 2


def _large_scores_case():
    """Entries of +-3e4 (valid fp16): a query equal to a cached key of its KV head scores
    128 * 9e8 = 1.2e11, 1.5e10 in log2 units at the default scale, past 2^31."""
    rng = np.random.default_rng(62)
    lens = np.array([20, 33], np.int32)
    tables = np.array([[3, 0, -1], [1, 4, 2]], np.int32)
    shape = (5, PAGE, KV_HEADS, HEAD_DIM)
    k = (np.sign(rng.standard_normal(shape)) * 3e4).astype(np.float16)
    v = rng.standard_normal(shape).astype(np.float16)
    indptr = np.array([0, 20, 29], np.int32)   # a whole prompt, then a chunk over a prefix
    q = np.empty((29, HEADS, HEAD_DIM), np.float16)
    for row, (b, pos) in enumerate([(0, i) for i in range(20)] + [(1, 24 + i) for i in range(9)]):
        page, slot = tables[b, pos // PAGE], pos % PAGE
        q[row] = np.repeat(k[page, slot], HEADS // KV_HEADS, axis=0)   # its own key: seen
    return q, k, v, indptr, tables, lens


@pytest.mark.parametrize("variant", [None, "w1r1k32u2"])   # mma.sync (default), WMMA
def test_prefill_wrapper_rows_with_huge_scores_stay_finite_and_right(variant):
    q, k, v, indptr, tables, lens = _large_scores_case()
    w = pl.BatchPrefillWrapper()
    w.plan(indptr, tables, lens, HEADS, KV_HEADS, HEAD_DIM, PAGE, "float16", variant=variant)
    out = w.run(q, k, v).astype(np.float64)
    ref = pl.reference_prefill_packed(q, k, v, indptr, tables, lens)
    assert np.isfinite(out).all(), f"{np.count_nonzero(~np.isfinite(out))} non-finite outputs"
    np.testing.assert_allclose(out, ref, atol=2e-3, rtol=2e-3)


def test_prefill_wrapper_huge_explicit_scale_matches_reference():
    q, k, v, indptr, tables, lens = _large_scores_case()
    q, k = (x / np.float16(2e4) for x in (q, k))   # +-1.5: the scale makes the scores huge
    w = pl.BatchPrefillWrapper()
    w.plan(indptr, tables, lens, HEADS, KV_HEADS, HEAD_DIM, PAGE, "float16")
    out = w.run(q, k, v, scale=1e10).astype(np.float64)
    ref = pl.reference_prefill_packed(q, k, v, indptr, tables, lens, scale=1e10)
    np.testing.assert_allclose(out, ref, atol=2e-3, rtol=2e-3)
