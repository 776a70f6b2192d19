"""Helper 234: an outsider's seeded grid over the public attention API, on the CPU executor.

Written against the docstrings, with its own float64 attention (a walk of each block-table row,
nothing taken from the package) and tolerances from the dtype. Where the other grids did not
go: head sizes the kernels take that nobody uses (4, 8, 112, 192 on SIMT decode; 1, 3, 17,
100, 127 on the naive prefill), groups of 3, 5, 7 and 12 on the group-4 and group-8 kernels,
a non-default scale on every entry point, `out=` poisoned with NaN, unused slots and pages
poisoned with NaN and inf, pages shared by every row and scattered page ids, sequences with
no new query (q_len 0) and non-causal rows in the packed prefill, empty batches; refusals
named up front. The kernel variants are those tests/test_random_grid.py and the decode and
prefill wrapper tests already build.

Found (each test below the grid failed before its fix):
- a torch.uint16 tensor of integers passed as q, K, V or out was taken as bfloat16 bits (both
  share as uint16 arrays): BatchDecodeWrapper.run read the integers as bfloat16 values and
  returned a torch.uint16 "result", write_kv wrote bfloat16 bits into the integer cache, and
  the one-shot decode blamed q ("expected dtype uint16") for the cache's mistake;
- run(out=t) and the one-shot calls with a torch tensor `out` returned a new tensor sharing
  t's memory, not t itself, though each says it returns out (NumPy's out came back itself);
- `split_k.merge_partials` (lesson 06's merge) took num_parts past the P partitions it holds
  (merging P, as if the count were right) and below 0 (a NaN row);
- the one-shot prefill told a torch.bfloat16 q that BatchPrefillWrapper runs bfloat16, but
  the same data as ml_dtypes.bfloat16 arrays got a bare dtype error naming k_cache.
"""
import re

import numpy as np
import pytest

from pagedattn_lab import (BatchDecodeWrapper, BatchPrefillWrapper, from_csr,
                           paged_attention_decode, paged_attention_prefill, to_csr, write_kv)

EPS = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}   # one unit in the last place


def _np_dtype(name):
    if name == "bfloat16":
        import ml_dtypes  # noqa: PLC0415 - only the bfloat16 cases need it
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# ---- the float64 oracle ---------------------------------------------------------------------
def _tokens(cache, row, n, page):
    """The first n tokens a block-table row points at, [n, kv_heads, dim] in float64."""
    return np.array([cache[row[t // page], t % page] for t in range(n)], np.float64)


def _attend(q, keys, values, scale):
    """Softmax(scale * q . k) @ v for one query head over its keys, in float64."""
    s = keys @ q.astype(np.float64) * scale
    p = np.exp(s - s.max())
    return (p / p.sum()) @ values, float(np.abs(s).max())


def _decode_oracle(q, k, v, tables, lens, scale):
    heads, group = q.shape[1], q.shape[1] // k.shape[2]
    out, top = np.zeros(q.shape), 0.0
    for b, n in enumerate(lens):
        keys, values = _tokens(k, tables[b], n, k.shape[1]), _tokens(v, tables[b], n, k.shape[1])
        for h in range(heads):
            out[b, h], s = _attend(q[b, h], keys[:, h // group], values[:, h // group], scale)
            top = max(top, s)
    return out, top


def _prefill_oracle(q, k, v, indptr, tables, lens, scale, causal):
    """Packed q: sequence b's q_len queries are its last q_len tokens (bottom-right causal)."""
    heads, group = q.shape[1], q.shape[1] // k.shape[2]
    out, top = np.zeros(q.shape), 0.0
    for b, n in enumerate(lens):
        keys, values = _tokens(k, tables[b], n, k.shape[1]), _tokens(v, tables[b], n, k.shape[1])
        first, last = indptr[b], indptr[b + 1]
        for i in range(first, last):
            seen = n - (last - i) + 1 if causal else n
            for h in range(heads):
                out[i, h], s = _attend(q[i, h], keys[:seen, h // group],
                                       values[:seen, h // group], scale)
                top = max(top, s)
    return out, top


def _assert_close(got, want, top_score, v, dtype, what):
    """Within a few units of the dtype's last place of the largest value read, plus float32's
    error on exp of the largest score (|s| * 2^-23 relative), for every element."""
    got = np.asarray(got).astype(np.float64)
    assert np.isfinite(got).all(), f"{what}: non-finite output (poison read, or unwritten)"
    vmax = float(np.abs(v.astype(np.float64)).max()) if v.size else 1.0
    tol = vmax * (4 * EPS[dtype] + 8 * EPS["float32"] * max(1.0, top_score))
    err = np.abs(got - want)
    if err.size and err.max() > tol:
        at = np.unravel_index(err.argmax(), err.shape)
        pytest.fail(f"{what}: max error {err.max():.3g} > {tol:.3g} at {at}")


# ---- problems -------------------------------------------------------------------------------
def _pages(rng, lens, page, share):
    """Block tables of scattered page ids (a shuffled pool with room to spare), garbage past
    each row's last page, and with `share` every row of a full first page reading one page."""
    need = [-(-n // page) for n in lens]
    pool = list(rng.permutation(sum(need) + 3))
    tables = np.full((len(lens), max(need + [1]) + 1), -7, np.int32)
    shared = None
    for b, count in enumerate(need):
        for j in range(count):
            if share and j == 0 and lens[b] >= page:
                shared = pool.pop() if shared is None else shared
                tables[b, j] = shared
            else:
                tables[b, j] = pool.pop()
    return tables, sum(need) + 3


def _caches(rng, tables, lens, page, kv_heads, dim, dtype, num_pages):
    """K and V with NaN, inf and -inf in every slot no sequence reads."""
    k, v = (rng.standard_normal((num_pages, page, kv_heads, dim)).astype(np.float32)
            for _ in "kv")
    used = np.zeros((num_pages, page), bool)
    for b, n in enumerate(lens):
        for t in range(n):
            used[tables[b, t // page], t % page] = True
    for c in (k, v):
        c[~used] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32),
                              size=int((~used).sum()))[:, None, None]
    return k.astype(_np_dtype(dtype)), v.astype(_np_dtype(dtype))


def _lengths(rng, page, count, longest):
    pool = [1, max(page - 1, 1), page, page + 1, 3 * page + 2, int(rng.integers(1, longest))]
    return [int(rng.choice(pool)) for _ in range(count)]


# Decode variants (dtype, head_dim, groups, KV heads) the random grid and the wrapper tests
# also build (with the split-K merge): on SIMT, GQA 3, 5, 7, 12 ride on GMAX 4 and 8; on the
# tensor cores two KV heads of multi-head attention are fused into one tile of twice the size.
SIMT = [("float32", 4, [3, 4], [1, 2]), ("float32", 32, [5, 7, 8, 12], [1, 2]),
        ("float32", 256, [1], [1, 2]), ("float32", 192, [6, 8], [1, 2]),
        ("float16", 8, [3, 4], [1, 2]), ("float16", 64, [1], [1, 2]),
        ("float16", 96, [5, 7, 12], [1, 2]), ("float16", 256, [3, 4], [1, 2]),
        ("float16", 80, [5, 8], [1, 2]), ("bfloat16", 112, [2], [1, 2]),
        ("bfloat16", 96, [7, 8], [1, 2])]
TENSOR_CORE = [("float16", 96, [1], [1]), ("bfloat16", 128, [1], [1, 2]),
               ("bfloat16", 80, [1], [1, 2])]


def _decode_case(seed):
    rng = np.random.default_rng(seed)
    kernel = "tensor_core" if seed % 4 == 3 else "simt"
    table = TENSOR_CORE if kernel == "tensor_core" else SIMT
    dtype, dim, groups, kv_counts = table[int(rng.integers(len(table)))]
    page = int(rng.choice([1, 2, 3, 16, 64]))
    kv_heads, group = int(rng.choice(kv_counts)), int(rng.choice(groups))
    return dict(rng=rng, kernel=kernel, dtype=dtype, dim=dim, page=page, kv_heads=kv_heads,
                group=group, lens=_lengths(rng, page, int(rng.integers(1, 6)), 400),
                scale=[None, 0.02, 2.5][int(rng.integers(3))], share=bool(rng.random() < 0.5),
                one_shot=bool(rng.random() < 0.5), splits=[None, 1, 3][int(rng.integers(3))])


@pytest.mark.parametrize("seed", range(24))
def test_decode_grid_against_float64(seed):
    c = _decode_case(seed)
    rng, page, lens, dtype = c["rng"], c["page"], c["lens"], c["dtype"]
    heads = c["kv_heads"] * c["group"]
    tables, num_pages = _pages(rng, lens, page, c["share"])
    k, v = _caches(rng, tables, lens, page, c["kv_heads"], c["dim"], dtype, num_pages)
    q = rng.standard_normal((len(lens), heads, c["dim"])).astype(np.float32).astype(k.dtype)
    seq_lens = np.array(lens, np.int32)
    out = np.full(q.shape, np.nan, np.float32).astype(q.dtype)
    if c["one_shot"]:
        got = paged_attention_decode(q, k, v, tables, seq_lens, c["scale"], out=out,
                                     kernel=c["kernel"], num_splits=c["splits"])
    else:
        w = BatchDecodeWrapper().plan(tables, seq_lens, heads, c["kv_heads"], c["dim"], page,
                                      dtype, kernel=c["kernel"], num_splits=c["splits"])
        got = w.run(q, k, v, out=out, scale=c["scale"])
    assert got is out
    scale = c["scale"] or 1 / np.sqrt(c["dim"])
    want, top = _decode_oracle(q, k, v, tables, lens, scale)
    read = np.concatenate([_tokens(v, tables[b], n, page).ravel() for b, n in enumerate(lens)])
    what = {key: val for key, val in c.items() if key != "rng"}
    _assert_close(got, want, top, read, dtype, f"seed {seed}: {what}")


PREFILL_DIMS = [32, 64, 80, 96, 128, 192, 256]   # the packed prefill's (prefill_plan.HEAD_DIMS)


@pytest.mark.parametrize("seed", range(14))
def test_packed_prefill_grid_against_float64(seed):
    rng = np.random.default_rng(100 + seed)
    dim, dtype = PREFILL_DIMS[seed % 7], ["float16", "bfloat16"][seed // 7]
    page = int(rng.choice([1, 3, 16, 17]))
    kv_heads, group = int(rng.choice([1, 2])), int(rng.choice([1, 3, 4, 5, 8, 16]))
    lens = _lengths(rng, page, int(rng.integers(1, 5)), 90)
    # q_len 0 (a sequence in the batch with nothing new), 1 (decode), 16 // group and one past
    # it (the packed launch's edge), the whole sequence, or any
    q_lens = [min(n, int(rng.choice([0, 1, 16 // group, 16 // group + 1, n,
                                     int(rng.integers(0, n + 1))]))) for n in lens]
    causal, scale = bool(rng.random() < 0.6), [None, 0.05, 2.0][int(rng.integers(3))]
    tables, num_pages = _pages(rng, lens, page, share=False)
    k, v = _caches(rng, tables, lens, page, kv_heads, dim, dtype, num_pages)
    indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = rng.standard_normal((int(indptr[-1]), kv_heads * group, dim)).astype(np.float32)
    q = q.astype(k.dtype)
    w = BatchPrefillWrapper().plan(indptr, tables, np.array(lens, np.int32), kv_heads * group,
                                   kv_heads, dim, page, dtype, causal=causal)
    out = np.full(q.shape, np.nan, np.float32).astype(q.dtype)
    assert w.run(q, k, v, out=out, scale=scale) is out
    want, top = _prefill_oracle(q, k, v, indptr, tables, lens, scale or 1 / np.sqrt(dim), causal)
    read = np.concatenate([_tokens(v, tables[b], n, page).ravel() for b, n in enumerate(lens)])
    _assert_close(out, want, top, read, dtype,
                  f"seed {seed}: {dtype} dim {dim} page {page} heads {kv_heads * group}/"
                  f"{kv_heads} lens {lens} q_lens {q_lens} causal {causal} scale {scale}")


# The naive kernel takes the head size at run time: odd sizes cost no compile.
ONE_SHOT = [("naive", d) for d in (1, 3, 17, 64, 100, 127, 128)] + [("tiled", 64), ("tiled", 128)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kernel, dim", ONE_SHOT)
def test_one_shot_prefill_grid_against_float64(kernel, dim, dtype):
    rng = np.random.default_rng(dim * 7 + len(kernel) + len(dtype))
    page = int(rng.choice([1, 3, 5, 16]))
    kv_heads, group = int(rng.choice([1, 2])), int(rng.choice([1, 3, 4]))
    lens = [0] + _lengths(rng, page, 2, 80)   # a sequence of no token: its rows stay zero
    max_len = max(lens) + 2
    tables, num_pages = _pages(rng, lens, page, share=True)
    k, v = _caches(rng, tables, lens, page, kv_heads, dim, dtype, num_pages)
    q = rng.standard_normal((len(lens), max_len, kv_heads * group, dim)).astype(dtype)
    out = np.full(q.shape, np.nan, dtype)
    scale = 0.3
    got = paged_attention_prefill(q, k, v, tables, np.array(lens, np.int32), scale, kernel,
                                  out=out)
    assert got is out
    want, top = np.zeros(q.shape), 0.0
    for b, n in enumerate(lens):
        w, s = _prefill_oracle(q[b, :n], k, v, [0, n], tables[b:b + 1], [n], scale, True)
        want[b, :n], top = w, max(top, s)
    read = np.concatenate([_tokens(v, tables[b], n, page).ravel() for b, n in enumerate(lens)])
    _assert_close(out, want, top, read, dtype, f"{kernel} {dtype} dim {dim} lens {lens}")


def test_empty_batches_come_back_empty_of_the_right_shape():
    k = np.zeros((2, 16, 2, 64), np.float16)
    tables, lens = np.zeros((0, 1), np.int32), np.zeros(0, np.int32)
    q = np.zeros((0, 4, 64), np.float16)
    assert paged_attention_decode(q, k, k.copy(), tables, lens).shape == (0, 4, 64)
    w = BatchDecodeWrapper().plan(tables, lens, 4, 2, 64, 16, "float16")
    assert w.run(q, k, k.copy()).shape == (0, 4, 64)
    p = BatchPrefillWrapper().plan(np.zeros(1, np.int32), tables, lens, 4, 2, 64, 16, "float16")
    assert p.run(q, k, k.copy()).shape == (0, 4, 64)
    assert paged_attention_prefill(np.zeros((0, 3, 4, 64), np.float16), k, k.copy(), tables,
                                   lens).shape == (0, 3, 4, 64)
    indptr, indices, last = to_csr(tables, lens, 16)
    assert indptr.tolist() == [0] and indices.size == 0 and last.size == 0
    assert from_csr(indptr, indices, last, 16)[1].shape == (0,)


# ---- refusals: up front, naming the argument and the reason ---------------------------------
P, KVH, D, H = 16, 2, 64, 4
TABLES, LENS = np.array([[0, 1], [2, 3]], np.int32), np.array([20, 5], np.int32)


def _fp16(*shape):
    return np.zeros(shape, np.float16)


def _decode(**changed):
    args = dict(q=_fp16(2, H, D), k_cache=_fp16(6, P, KVH, D), v_cache=_fp16(6, P, KVH, D),
                block_tables=TABLES, seq_lens=LENS)
    args.update(changed)
    return lambda: paged_attention_decode(**args)


def _run(**changed):
    args = dict(q=_fp16(2, H, D), k_cache=_fp16(6, P, KVH, D), v_cache=_fp16(6, P, KVH, D))
    args.update(changed)
    return lambda: BatchDecodeWrapper().plan(TABLES, LENS, H, KVH, D, P, "float16").run(**args)


def _prefill_plan(indptr, dim=D, dtype="float16"):
    return lambda: BatchPrefillWrapper().plan(np.array(indptr, np.int32), TABLES, LENS, H, KVH,
                                              dim, P, dtype)


COMBINED = _fp16(6, 2, P, KVH, D)   # vLLM's [pages, 2, ...] K/V tensor: its halves are strided
REFUSED = [
    (_decode(seq_lens=np.array([0, 5], np.int32)), ValueError, r"^seq_lens\[0\]: .*>= 1"),
    (_decode(k_cache=COMBINED[:, 0], v_cache=COMBINED[:, 1]), ValueError,
     r"^k_cache: expected a C-contiguous array"),
    (_decode(q=_fp16(2, 2 * H, D)[:, ::2]), ValueError, r"^q: expected a C-contiguous array"),
    (_decode(out=_fp16(2, H, 2 * D)[:, :, ::2]), ValueError, r"^out: expected a C-contiguous"),
    (_decode(out=np.zeros((2, H, D), np.float32)), TypeError, r"^out: expected dtype float16"),
    (_decode(q=np.zeros((2, H, D), np.float32)), TypeError, r"^q: expected dtype float16"),
    (_decode(scale=np.array(0.1)), TypeError, r"^scale: expected a float"),
    (_decode(num_splits=0), ValueError, r"^num_splits: expected an int >= 1"),
    (_decode(block_tables=np.array([[0, 9], [2, 3]], np.int32)), ValueError,
     r"^block_tables\[0, 1\]: page id 9 is out of range for a cache of 6 pages"),
    (_decode(q=_fp16(2, H, D).astype(">f2")), TypeError, r"^q: .*non-native byte order"),
    (_run(q=_fp16(2, 2 * H, D)), ValueError, r"^q: expected shape \(2, 4, 64\)"),
    (_run(k_cache=_fp16(6, 8, KVH, D), v_cache=_fp16(6, 8, KVH, D)), ValueError,
     r"^k_cache: expected shape \[num_pages, 16, 2, 64\]"),
    (_run(k_cache=_fp16(2, P, KVH, D), v_cache=_fp16(2, P, KVH, D)), ValueError,
     r"^k_cache: the plan reads page 2, but the cache has only 2 pages"),
    (lambda: BatchDecodeWrapper().plan(TABLES, LENS, H, KVH, 20, P, "float16"), ValueError,
     r"^head_dim: 20 with float16 caches: .*multiple of 8"),
    (lambda: BatchDecodeWrapper().plan(TABLES, LENS, H, KVH, 24, P, "bfloat16",
                                       kernel="tensor_core"), ValueError,
     r"^head_dim: 24 .*multiple of 16"),
    (lambda: BatchDecodeWrapper().plan(TABLES, LENS, H, KVH, 2, P, "float32"), ValueError,
     r"^head_dim: 2 with float32 caches: .*multiple of 4"),
    (lambda: BatchDecodeWrapper().plan(TABLES, LENS, 3, 2, D, P, "float16"), ValueError,
     r"^num_heads: 3 is not a multiple of num_kv_heads 2"),
    (_prefill_plan([0, 21, 22]), ValueError, r"^qo_indptr: sequence 0 has 21 queries but "),
    (_prefill_plan([0, 3, 2]), ValueError, r"^qo_indptr\[2\]: 2 is less than qo_indptr\[1\]"),
    (_prefill_plan([0, 3, 4], dim=48), ValueError, r"^head_dim: expected one of \(32, 64,"),
    (_prefill_plan([0, 3, 4], dtype="float32"), TypeError, r"^dtype: expected float16 or bf"),
    (lambda: paged_attention_prefill(np.zeros((2, 20, H, 129), np.float32),
                                     *[np.zeros((6, P, KVH, 129), np.float32)] * 2, TABLES,
                                     LENS, kernel="naive"), ValueError,
     r"^q: head_dim 129 is too large for the naive kernel"),
    (lambda: paged_attention_prefill(_fp16(2, 10, H, D), _fp16(6, P, KVH, D),
                                     _fp16(6, P, KVH, D), TABLES, LENS), ValueError,
     r"^seq_lens\[0\]: 20 tokens but q holds only 10 query rows"),
    (lambda: from_csr(np.array([0, 1], np.int32), np.array([3], np.int32),
                      np.array([0], np.int32), P), ValueError,
     r"^last_page_len\[0\]: expected 1..16"),
]


@pytest.mark.parametrize("call, error, message", REFUSED,
                         ids=[m.split(":")[0].strip("^\\") + f"-{i}"
                              for i, (_, _, m) in enumerate(REFUSED)])
def test_refused_up_front_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---- what the grid found --------------------------------------------------------------------
def _torch():
    return pytest.importorskip("torch")


def _uint16_calls(torch):
    """Each entry point given torch.uint16 integers where values go, the rest right."""
    tables, lens = torch.from_numpy(TABLES), torch.from_numpy(LENS)
    ints = torch.randint(0, 200, (6, P, KVH, D)).to(torch.uint16)
    bf = torch.zeros(6, P, KVH, D, dtype=torch.bfloat16)
    q = torch.zeros(2, H, D, dtype=torch.bfloat16)
    slots = torch.tensor([0, 1])
    return {
        "k_cache": lambda: BatchDecodeWrapper().plan(tables, lens, H, KVH, D, P,
                                                     torch.bfloat16).run(q, ints, ints.clone()),
        "q": lambda: BatchDecodeWrapper().plan(tables, lens, H, KVH, D, P, torch.bfloat16).run(
            q.view(torch.uint16), bf, bf.clone()),
        "v_cache": lambda: paged_attention_decode(q, bf, ints, tables, lens),
        "out": lambda: BatchPrefillWrapper().plan(
            torch.tensor([0, 3, 4], dtype=torch.int32), tables, lens, H, KVH, D, P,
            torch.bfloat16).run(torch.zeros(4, H, D, dtype=torch.bfloat16), bf, bf.clone(),
                                out=torch.zeros(4, H, D, dtype=torch.uint16)),
        "k": lambda: write_kv(torch.zeros(2, KVH, D, dtype=torch.uint16),
                              torch.zeros(2, KVH, D, dtype=torch.bfloat16), bf, bf.clone(), slots),
    }


@pytest.mark.parametrize("name", ["k_cache", "q", "v_cache", "out", "k"])
def test_torch_uint16_integers_are_not_taken_for_bfloat16_bits(name):
    # Shared with NumPy or CuPy, a torch.bfloat16 tensor becomes uint16 bits, and so did a
    # torch.uint16 tensor of integers: the decode run read them as bfloat16 values, write_kv
    # wrote bfloat16 bits into them, the one-shot decode blamed q.
    torch = _torch()
    if not hasattr(torch, "uint16"):
        pytest.skip("this torch has no uint16")
    with pytest.raises(TypeError, match=rf"^{name}: expected a float32, float16 or bfloat16 "
                                        rf"tensor, got torch\.uint16, which holds integers; "
                                        rf".*{re.escape(name)}\.view\(torch\.bfloat16\)"):
        _uint16_calls(torch)[name]()


def test_a_torch_out_comes_back_itself():
    torch = _torch()
    k, v = (torch.randn(6, P, KVH, D, dtype=torch.float16) for _ in "kv")
    q, tables, lens = torch.randn(2, H, D, dtype=torch.float16), torch.from_numpy(TABLES), \
        torch.from_numpy(LENS)
    outs = [torch.full((2, H, D), float("nan"), dtype=torch.float16) for _ in range(3)]
    w = BatchDecodeWrapper().plan(TABLES, LENS, H, KVH, D, P, "float16")
    assert w.run(q, k, v, out=outs[0]) is outs[0]
    assert w.run(q.numpy(), k.numpy(), v.numpy(), out=outs[1]) is outs[1]   # a NumPy q
    assert paged_attention_decode(q, k, v, tables, lens, out=outs[2]) is outs[2]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    packed = BatchPrefillWrapper().plan(torch.tensor([0, 3, 4], dtype=torch.int32), tables,
                                        lens, H, KVH, D, P, "float16")
    out = torch.full((4, H, D), float("nan"), dtype=torch.float16)
    assert packed.run(torch.randn(4, H, D, dtype=torch.float16), k, v, out=out) is out
    out = torch.full((2, 20, H, D), float("nan"), dtype=torch.float16)
    assert paged_attention_prefill(torch.randn(2, 20, H, D, dtype=torch.float16), k, v, tables,
                                   lens, out=out) is out
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1, :5]).all()


@pytest.mark.parametrize("num_parts, match", [
    (5, r"^num_parts: expected a count from 0 to 3 \(the partitions m holds\), got 5$"),
    (-1, r"^num_parts: expected a count from 0 to 3 .*, got -1$"),
    (np.array([3, 4]), r"^num_parts\[1\]: expected a count from 0 to 3 .*, got 4$"),
])
def test_merge_partials_refuses_counts_past_the_partitions_it_holds(num_parts, match):
    # A count past P merged the P partitions there are, as if it were P; a negative one
    # merged none, a NaN row with NumPy's warning.
    from pagedattn_lab.split_k import merge_partials   # noqa: PLC0415 - lesson 06's oracle
    with pytest.raises(ValueError, match=match):
        merge_partials(np.zeros((2, 3)), np.ones((2, 3)), np.ones((2, 3, 4)), num_parts)


def test_one_shot_prefill_points_ml_dtypes_bfloat16_to_the_wrapper_as_torch_s():
    # A torch.bfloat16 q was told BatchPrefillWrapper runs bfloat16; the same NumPy data
    # (ml_dtypes.bfloat16, the CPU's bfloat16) got only "k_cache: expected dtype float32 or
    # float16", naming the cache for q's dtype too.
    bf16 = _np_dtype("bfloat16")
    q, k = np.zeros((2, 20, H, D), bf16), np.zeros((6, P, KVH, D), bf16)
    with pytest.raises(TypeError, match=r"^q: expected dtype float32 or float16 \(the one-shot "
                                        r"prefill's kernels\), got bfloat16; "
                                        r"BatchPrefillWrapper runs bfloat16$"):
        paged_attention_prefill(q, k, k.copy(), TABLES, LENS)
