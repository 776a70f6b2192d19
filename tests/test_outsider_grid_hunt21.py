"""An outsider's grid over the public API (hunt 21), on the CPU executor.

Written from DESIGN.md's "Public API" and the docstrings only, against its own float64
attention (a token-by-token walk of the block table, nothing shared with the package or with
tests/random_grid.py): head sizes, GQA/MQA ratios, page sizes 1, 3, 16, 17, 256, lengths at
page edges, garbage padding, pages shared by rows, NaN in slots no sequence owns, float32,
float16 and bfloat16; plus the documented contracts the grid found broken (each failed
before its fix): the references refused bfloat16, `reference_prefill_packed` read any value
as `causal`, decode refused NumPy subclasses (np.memmap) naming them "not a NumPy array",
and gather_kv's errors named arguments it does not have.
"""
import ml_dtypes
import numpy as np
import pytest

import pagedattn_lab as pl

BF16 = np.dtype(ml_dtypes.bfloat16)
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float16): 3e-3, BF16: 2e-2}


# ---- the oracle: token by token through the block table, float64 -------------------------

def oracle(q, k_cache, v_cache, tables, lens, scale=None, q_lens=None, causal=True):
    """Packed attention: sequence b's queries are its last q_lens[b] tokens (decode: one each,
    q [batch, heads, dim]); query i sees keys 0 .. seq_len - q_len + i (all when not causal)."""
    q = np.asarray(q).astype(np.float64)
    k = np.asarray(k_cache).astype(np.float64)
    v = np.asarray(v_cache).astype(np.float64)
    page, kv_heads, dim = k.shape[1:]
    group = q.shape[1] // kv_heads
    scale = 1 / np.sqrt(dim) if scale is None else scale
    q_lens = np.ones(len(lens), int) if q_lens is None else q_lens
    out, row = np.zeros(q.shape), 0
    for b, n in enumerate(int(x) for x in lens):
        slots = [(int(tables[b, t // page]), t % page) for t in range(n)]
        keys = np.array([k[p, s] for p, s in slots]).reshape(n, kv_heads, dim)
        values = np.array([v[p, s] for p, s in slots]).reshape(n, kv_heads, dim)
        for i in range(int(q_lens[b])):
            seen = n - int(q_lens[b]) + i + 1 if causal else n
            for h in range(q.shape[1]):
                logits = keys[:seen, h // group] @ q[row, h] * scale
                w = np.exp(logits - logits.max())
                out[row, h] = (w / w.sum()) @ values[:seen, h // group]
            row += 1
    return out


def paged(rng, lens, page, kv_heads, dim, dtype, *, share=False, junk=True):
    """Caches and tables for `lens`: pages shuffled, padding entries garbage (-1, 2^31 - 1,
    an in-range id), slots no sequence owns NaN; `share`: rows after the first reuse its pages."""
    width = max([-(-n // page) for n in lens] + [1]) + 1
    num_pages = len(lens) * width + 2
    shape = (num_pages, page, kv_heads, dim)
    k = rng.standard_normal(shape).astype(dtype)
    v = rng.standard_normal(shape).astype(dtype)
    tables = rng.choice([-1, 2**31 - 1, 0], size=(len(lens), width)).astype(np.int32)
    order, taken, owned = rng.permutation(num_pages), 0, np.zeros(shape[:2], bool)
    for b, n in enumerate(lens):
        pages = -(-n // page)
        if share and b:
            tables[b, :pages] = tables[0, :pages] if pages <= -(-lens[0] // page) else \
                order[taken:taken + pages]
        else:
            tables[b, :pages] = order[taken:taken + pages]
        taken += pages
        for t in range(n):
            owned[tables[b, t // page], t % page] = True
    if junk:
        k[~owned], v[~owned] = np.nan, np.nan
    return k, v, tables, np.array(lens, np.int32)


def lengths(rng, page, batch):
    picks = [1, max(1, page - 1), page, page + 1, int(rng.integers(1, 3 * page + 2))]
    return [min(int(rng.choice(picks)), 300) for _ in range(batch)]


def close(got, want, dtype):
    got = np.asarray(got, np.float64)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, atol=10 * TOL[np.dtype(dtype)], rtol=0)


# ---- the grid ------------------------------------------------------------------------------

DECODE_DIMS = [(4, np.float32), (32, np.float32), (256, np.float32), (8, np.float16),
               (64, np.float16), (80, BF16), (128, BF16), (256, np.float16)]


@pytest.mark.parametrize("head_dim, dtype", DECODE_DIMS)
def test_decode_grid(head_dim, dtype):
    rng = np.random.default_rng(2100 + head_dim)
    for ratio in rng.choice([1, 2, 4, 8, 64], size=2, replace=False):
        kv_heads = 1 if ratio == 64 else int(rng.integers(1, 3))
        page = int(rng.choice([1, 3, 16, 17, 256]))
        lens = lengths(rng, page, int(rng.choice([1, 3, 5])))
        k, v, tables, seq_lens = paged(rng, lens, page, kv_heads, head_dim, dtype,
                                       share=bool(rng.integers(2)))
        q = rng.standard_normal((len(lens), int(ratio) * kv_heads, head_dim)).astype(dtype)
        scale = None if rng.integers(2) else 0.3
        kernel = "tensor_core" if dtype != np.float32 and head_dim % 16 == 0 else "simt"
        out = pl.paged_attention_decode(q, k, v, tables, seq_lens, scale, kernel=kernel,
                                        num_splits=int(rng.integers(1, 4)))
        assert type(out) is np.ndarray and out.dtype == dtype and out.shape == q.shape
        close(out, oracle(q, k, v, tables, seq_lens, scale), dtype)


@pytest.mark.parametrize("kernel, head_dim", [("naive", 8), ("naive", 32), ("tiled", 64),
                                              ("tiled", 128)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_prefill_grid_zeroes_rows_past_each_length(kernel, head_dim, dtype):
    rng = np.random.default_rng(2200 + head_dim)
    page = int(rng.choice([1, 3, 16, 17]))
    lens = [0] + lengths(rng, page, 2)
    k, v, tables, seq_lens = paged(rng, lens, page, 2, head_dim, dtype)
    q = rng.standard_normal((3, max(lens) + 2, 4, head_dim)).astype(dtype)
    want = np.zeros(q.shape)
    for b, n in enumerate(lens):
        want[b, :n] = oracle(q[b, :n], k, v, tables[b:b + 1], [n], q_lens=[n])
        q[b, n:] = np.nan   # rows past the length: never read
    out = pl.paged_attention_prefill(q, k, v, tables, seq_lens, kernel=kernel,
                                     out=np.full(q.shape, 7, dtype))
    close(out, want, dtype)


@pytest.mark.parametrize("head_dim", [32, 96, 192])
@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_prefill_wrapper_grid(head_dim, dtype):
    rng = np.random.default_rng(2300 + head_dim)
    page = int(rng.choice([1, 3, 16, 17, 256]))
    lens = [0] + lengths(rng, page, 3)
    q_lens = [int(rng.integers(0, n + 1)) if rng.integers(2) else min(n, 1) for n in lens]
    indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    k, v, tables, seq_lens = paged(rng, lens, page, 2, head_dim, dtype)
    q = rng.standard_normal((int(indptr[-1]), 8, head_dim)).astype(dtype)
    causal = bool(rng.integers(2))
    w = pl.BatchPrefillWrapper().plan(indptr, tables, seq_lens, 8, 2, head_dim, page, dtype,
                                      causal=causal)
    close(w.run(q, k, v), oracle(q, k, v, tables, seq_lens, q_lens=q_lens, causal=causal),
          dtype)


def test_decode_wrapper_plans_once_and_runs_layers_with_other_caches():
    rng = np.random.default_rng(2400)
    lens = [17, 1, 40]
    k, v, tables, seq_lens = paged(rng, lens, 16, 2, 32, np.float32)
    w = pl.BatchDecodeWrapper().plan(tables, seq_lens, 8, 2, 32, 16, "float32")
    planned = tables.copy()
    tables[:] = 0   # the plan keeps its own copy
    for _ in range(3):
        k_layer = rng.standard_normal(k.shape).astype(np.float32)
        q = rng.standard_normal((3, 8, 32)).astype(np.float32)
        out = w.run(q, k_layer, v, out=np.empty_like(q))
        close(out, oracle(q, k_layer, v, planned, seq_lens), np.float32)
    read = max(int(planned[b, :-(-n // 16)].max()) for b, n in enumerate(lens))
    short = np.zeros((read,) + k.shape[1:], np.float32)   # one page short of the plan's
    with pytest.raises(ValueError, match=f"^k_cache: the plan reads page {read}, but the "
                                         f"cache has only {read} pages"):
        w.run(q, short, short)
    close(w.run(q, k[:read + 1].copy(), v[:read + 1].copy()), oracle(q, k, v, planned,
                                                                     seq_lens), np.float32)


# ---- the defects ---------------------------------------------------------------------------

def test_references_take_bfloat16_like_the_kernels_they_check():
    """reference_decode/prefill/prefill_packed refused ml_dtypes bfloat16 (TypeError), though
    the decode kernels, the prefill wrapper and PagedKVCache take it."""
    rng = np.random.default_rng(2500)
    k, v, tables, seq_lens = paged(rng, [5, 20], 16, 2, 64, BF16, junk=False)
    q = rng.standard_normal((2, 4, 64)).astype(BF16)
    want = oracle(q, k, v, tables, seq_lens)
    np.testing.assert_allclose(pl.reference_decode(q, k, v, tables, seq_lens), want, atol=1e-12)
    close(pl.paged_attention_decode(q, k, v, tables, seq_lens), pl.reference_decode(
        q, k, v, tables, seq_lens), BF16)
    qp = rng.standard_normal((2, 20, 4, 64)).astype(BF16)
    got = pl.reference_prefill(qp, k, v, tables, seq_lens)
    np.testing.assert_allclose(got[1], oracle(qp[1], k, v, tables[1:], [20], q_lens=[20]),
                               atol=1e-12)
    indptr = np.array([0, 2, 5], np.int32)
    packed = rng.standard_normal((5, 4, 64)).astype(BF16)
    np.testing.assert_allclose(
        pl.reference_prefill_packed(packed, k, v, indptr, tables, seq_lens),
        oracle(packed, k, v, tables, seq_lens, q_lens=[2, 3]), atol=1e-12)


@pytest.mark.parametrize("causal", [None, "no", 0, np.array(False)])
def test_reference_prefill_packed_refuses_a_causal_that_is_not_a_bool(causal):
    """causal=None ran without the mask, "no" with it: the wrapper's plan refuses both."""
    rng = np.random.default_rng(2600)
    k, v, tables, seq_lens = paged(rng, [5], 4, 1, 8, np.float32)
    q = rng.standard_normal((2, 2, 8)).astype(np.float32)
    with pytest.raises(TypeError, match="^causal: expected True or False"):
        pl.reference_prefill_packed(q, k, v, np.array([0, 2]), tables, seq_lens, causal=causal)


def test_decode_takes_numpy_subclasses_such_as_memmap(tmp_path):
    """A memory-mapped cache (np.memmap, an ndarray) was refused by decode with "expected a
    NumPy array ..., got numpy.memmap"; prefill and the references took it."""
    rng = np.random.default_rng(2700)
    k, v, tables, seq_lens = paged(rng, [17, 3], 16, 2, 32, np.float32, junk=False)

    def mapped(a, name, mode="r"):
        a.tofile(tmp_path / name)
        return np.memmap(tmp_path / name, dtype=a.dtype, mode=mode, shape=a.shape)

    q = rng.standard_normal((2, 4, 32)).astype(np.float32)
    want = oracle(q, k, v, tables, seq_lens)
    km, vm, qm = mapped(k, "k"), mapped(v, "v"), mapped(q, "q")
    close(pl.paged_attention_decode(qm, km, vm, tables, seq_lens), want, np.float32)
    out = mapped(np.zeros_like(q), "out", "r+")
    got = pl.BatchDecodeWrapper().plan(tables, seq_lens, 4, 2, 32, 16, "float32").run(
        qm, km, vm, out=out)
    assert got is out
    close(out, want, np.float32)


def test_gather_errors_name_gathers_own_arguments():
    """gather_kv(k, v, block_table_row, seq_len) said "block_tables[0, 1]" and "seq_lens[0]"."""
    rng = np.random.default_rng(2800)
    k, v, tables, _ = paged(rng, [9], 4, 2, 8, np.float32)
    row = tables[0].copy()
    row[1] = 10_000
    for gather in (pl.gather_kv, pl.gather_kv_reference):
        with pytest.raises(ValueError, match=r"^block_table_row\[1\]: page id 10000 is out of "
                                             r"range for a cache of \d+ pages"):
            gather(k, v, row, 9)
        with pytest.raises(ValueError, match=r"^seq_len: 20 tokens do not fit in a block "
                                             r"table row of 4 pages x 4 tokens = 16"):
            gather(k, v, tables[0], 20)


def test_one_array_for_both_caches_is_refused_without_saying_the_kernel_only_reads_one():
    """write_kv writes K and V: with k_cache is v_cache the message said the kernel "reads
    k_cache while it writes v_cache"."""
    cache = np.zeros((2, 4, 1, 8), np.float32)
    rows = np.ones((1, 1, 8), np.float32)
    with pytest.raises(ValueError, match=r"^v_cache: shares memory with k_cache \(the kernel "
                                         r"uses k_cache while it writes v_cache"):
        pl.write_kv(rows, rows.copy(), cache, cache, np.array([0], np.int64))
    assert not cache.any()
