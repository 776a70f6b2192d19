"""Another team's test grid (hunt 126): everything but decode, on the CPU executor, against
float64 references and an e4m3 quantizer written here from the definitions (not the
package's reference or quant module). Random cases are seeded; shapes come from small sets
so the compiled kernels are reused."""
import re

import ml_dtypes
import numpy as np
import pytest

from pagedattn_lab import (BatchPrefillWrapper, BlockAllocator, OutOfPagesError, PagedKVCache,
                           from_csr, slot_mapping, to_csr, write_kv)
from pagedattn_lab import quant
from pagedattn_lab.cache_write_quant import write_kv_quant

torch = pytest.importorskip("torch")
BF16, E4M3 = ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn

# -- independent definitions -----------------------------------------------------------------

# e4m3fn by its bit layout: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is
# subnormal (m / 8 * 2^-6); 0x7f / 0xff are NaN; no infinities.
_CODES = np.arange(256)
_SIGN = np.where(_CODES & 0x80, -1.0, 1.0)
_EXP, _MAN = (_CODES >> 3) & 0xF, _CODES & 7
E4M3_VALUES = _SIGN * np.where(_EXP == 0, _MAN / 8 * 2.0 ** -6, (1 + _MAN / 8) * 2.0 ** (_EXP - 7))
E4M3_VALUES[[0x7F, 0xFF]] = np.nan


def e4m3_encode(x):
    """Nearest finite e4m3 value of each float64 x saturated to +-448, ties to the even
    mantissa; NaN to 0x7f (0xff for a negative NaN); zero keeps its sign."""
    x = np.asarray(x, np.float64).ravel()
    finite = np.flatnonzero(np.isfinite(E4M3_VALUES))
    out = np.empty(x.size, np.uint8)
    for i, xi in enumerate(x):
        if np.isnan(xi):
            out[i] = 0xFF if np.signbit(xi) else 0x7F
            continue
        xs = min(max(xi, -448.0), 448.0)
        d = np.abs(E4M3_VALUES[finite] - xs)
        cand = finite[d == d.min()]
        if len(cand) > 1:   # a tie: the even mantissa; between +0 and -0 the sign of x
            even = cand[cand % 2 == 0]
            cand = even if even.size else cand
            cand = cand[(cand >> 7) == int(np.signbit(xs))] if cand.size > 1 else cand
        out[i] = cand[0]
    return out


def int8_encode(y):
    y = np.asarray(y, np.float64)
    return np.where(np.isnan(y), 0, np.clip(np.round(y), -127, 127)).astype(np.int8)


def dequant(codes, fmt, scale):
    values = codes.astype(np.float64) if fmt == "int8" else E4M3_VALUES[codes.astype(np.int64)]
    return values * np.asarray(scale, np.float64)[..., None]


def prefill_ref(q, k, v, indptr, tables, lens, group, causal, scale):
    """float64 attention, loop over sequences: query i of sequence b (q_len queries) sits at
    position lens[b] - q_len + i and sees keys 0..that position (all of them if not causal)."""
    q = q.astype(np.float64)
    out = np.zeros(q.shape)
    page, heads = k.shape[1], q.shape[1]
    for b in range(len(lens)):
        start, end, n = int(indptr[b]), int(indptr[b + 1]), int(lens[b])
        if end == start:
            continue
        pos = np.arange(n)
        kv_head = np.arange(heads) // group
        kk = k[tables[b, pos // page], pos % page][:, kv_head].astype(np.float64)   # [n, H, D]
        vv = v[tables[b, pos // page], pos % page][:, kv_head].astype(np.float64)
        s = np.einsum("ihd,jhd->hij", q[start:end], kk) * scale
        query_pos = n - (end - start) + np.arange(end - start)
        if causal:
            s[:, pos[None, :] > query_pos[:, None]] = -np.inf
        p = np.exp(s - s.max(-1, keepdims=True))
        out[start:end] = np.einsum("hij,jhd->ihd", p / p.sum(-1, keepdims=True), vv)
    return out


# -- prefill grid ----------------------------------------------------------------------------

# Tolerances: the reference takes the rounded fp16/bf16 inputs, so what is left is the
# kernel's own rounding: P (in [0, 1]) rounded to the element type before P @ V, and the
# output stored in it, a few ulps of |out| <= max|V| ~ 4 (measured over this grid: fp16
# 1.1e-3, bf16 8.5e-3). 4 ulps of 1.0 each: fp16 4 * 2^-10, bf16 4 * 2^-7.
PREFILL_TOL = {np.float16: 4 * 2.0 ** -10, BF16: 4 * 2.0 ** -7}
HEAD_DIMS = (32, 64, 128, 256)
KV_HEADS_GROUPS = ((1, 1), (2, 2), (1, 8), (2, 4), (1, 64), (4, 1))
PAGE_SIZES = (1, 5, 16, 256)


# The CPU executor runs a block's warps as fibers: a case costs about heads x sum(q_len x
# kv_len) x head_dim x 1.3e-7 s; drawn again past this budget (~1 s a case).
CASE_BUDGET = 8e6


def _prefill_case(rng):
    """One random batch: q_lens from 0 (nothing new) and 1 (decode) to past a tile, each
    over a random cached prefix; tables drawn from a shared pool, some rows sharing pages,
    unused entries garbage (-1 or ids past the pool, never read)."""
    while True:
        kv_heads, group = KV_HEADS_GROUPS[rng.integers(len(KV_HEADS_GROUPS))]
        dim = int(rng.choice(HEAD_DIMS))
        page = int(rng.choice(PAGE_SIZES))
        batch = int(rng.integers(1, 4))
        q_lens = rng.choice([0, 1, 2, 7, 16, 17, 65, 70], batch)
        lens = q_lens + rng.choice([0, 1, 15, 33, 100], batch)
        if lens.max() == 0:
            lens[0] = q_lens[0] = 1
        if kv_heads * group * (q_lens * lens).sum() * dim <= CASE_BUDGET:
            break
    width = int(-(-lens.max() // page)) + 1
    pool = batch * width + 1
    tables = rng.permutation(pool)[:batch * width].reshape(batch, width).astype(np.int32)
    if batch > 1:   # a shared prefix: row 1 reads row 0's first pages
        shared = int(min(-(-lens[0] // page), -(-lens[1] // page))) // 2
        tables[1, :shared] = tables[0, :shared]
    for b in range(batch):   # the unused entries: never read
        tables[b, -(-lens[b] // page):] = rng.choice([-1, pool + 5, 2**31 - 1])
    return kv_heads, group, dim, page, q_lens, lens.astype(np.int32), tables, pool


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["fp16", "bf16"])
def test_prefill_grid_against_float64(dtype):
    rng = np.random.default_rng(126 if dtype is np.float16 else 127)
    worst = 0.0
    for case in range(40):
        kv_heads, group, dim, page, q_lens, lens, tables, pool = _prefill_case(rng)
        heads = kv_heads * group
        causal = bool(case % 3)
        indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        k, v = (rng.standard_normal((pool, page, kv_heads, dim)).astype(dtype) for _ in "kv")
        for b in range(len(lens)):   # NaN in every slot past a sequence's end: never read
            for t in range(int(lens[b]), -(-int(lens[b]) // page) * page):
                k[tables[b, t // page], t % page] = np.nan
                v[tables[b, t // page], t % page] = np.nan
        used = {int(p) for b in range(len(lens)) for p in tables[b, :-(-lens[b] // page)]}
        for p in set(range(pool)) - used:
            k[p], v[p] = np.nan, np.nan
        q = rng.standard_normal((int(indptr[-1]), heads, dim)).astype(dtype)
        w = BatchPrefillWrapper().plan(indptr, tables, lens, heads, kv_heads, dim, page, dtype,
                                       causal=causal)
        out = np.full(q.shape, np.nan, dtype)   # poisoned: every row must be written
        scale = float(rng.choice([0.05, 1 / np.sqrt(dim)]))
        got = w.run(q, k, v, out=out, scale=scale)
        assert got is out
        want = prefill_ref(q, k, v, indptr, tables, lens, group, causal, scale)
        err = np.abs(got.astype(np.float64) - want).max(initial=0.0)
        where = f"case {case}: heads {heads}/{kv_heads} dim {dim} page {page} q_lens " \
                f"{q_lens.tolist()} lens {lens.tolist()} causal {causal} ({w.variant})"
        assert err <= PREFILL_TOL[dtype], where + f": error {err}"
        worst = max(worst, err)
    assert worst > 0   # the comparison saw rounding: it compares the outputs


def test_prefill_mask_matters_and_torch_agrees():
    """The grid can fail: causal and not differ beyond the tolerance where q_len > 1; and
    torch CPU tensors give the NumPy result bit for bit."""
    rng = np.random.default_rng(5)
    indptr, tables, lens = (np.array([0, 9], np.int32), np.array([[2, 0, 1]], np.int32),
                            np.array([40], np.int32))
    k, v = (rng.standard_normal((3, 16, 2, 64)).astype(np.float16) for _ in "kv")
    q = rng.standard_normal((9, 8, 64)).astype(np.float16)
    outs = [BatchPrefillWrapper().plan(indptr, tables, lens, 8, 2, 64, 16, "float16",
                                       causal=c).run(q, k, v).copy() for c in (True, False)]
    gap = np.abs(outs[0].astype(float) - outs[1].astype(float)).max()
    assert gap > 10 * PREFILL_TOL[np.float16]
    w = BatchPrefillWrapper().plan(torch.from_numpy(indptr), torch.from_numpy(tables),
                                   torch.from_numpy(lens), 8, 2, 64, 16, torch.float16)
    got = w.run(*(torch.from_numpy(x) for x in (q, k, v)))
    assert isinstance(got, torch.Tensor) and np.array_equal(got.numpy(), outs[0])


@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
def test_quantized_prefill_against_float64_of_dequantized_pages(fmt, scheme):
    """Codes written by write_kv_quant, read by the prefill kernel: the output matches the
    float64 attention over the pages dequantized here (code x scale); the slots no sequence
    holds carry NaN codes and scales, which must not be read."""
    # seeded from the names' bytes: hash() of a str differs from one process to the next
    rng = np.random.default_rng(list(f"{fmt}/{scheme}".encode()))
    pool, page, kv_heads, dim, heads = 6, 16, 2, 64, 8
    tables, lens = np.array([[4, 1, 0], [2, 4, -1]], np.int32), np.array([40, 17], np.int32)
    indptr = np.array([0, 12, 13], np.int32)
    storage = np.int8 if fmt == "int8" else np.uint8
    kc, vc = (np.zeros((pool, page, kv_heads, dim), storage) for _ in "kv")
    if scheme == "static":
        ks, vs = np.array([0.03, 0.02], np.float32), np.array([0.05, 0.01], np.float32)
    else:
        ks, vs = (np.ones((pool, page, kv_heads), np.float32) for _ in "kv")
    for b in range(2):   # row 1 shares page 4 with row 0, as written by row 0
        n = int(lens[b]) if b == 0 else int(lens[b]) - 16
        first = 0 if b == 0 else 16
        slots = np.array([tables[b, t // page] * page + t % page
                          for t in range(first, first + n)], np.int64)
        k, v = (rng.standard_normal((n, kv_heads, dim)).astype(np.float32) for _ in "kv")
        write_kv_quant(k, v, kc, vc, slots, fmt, scheme, k_scale=ks, v_scale=vs)
    written = {int(tables[b, t // page]) * page + t % page
               for b in range(2) for t in range(lens[b])}
    unused = np.setdiff1d(np.arange(pool * page), sorted(written))
    for codes in (kc, vc):   # never read: NaN codes (int8 has none: its extreme) and scales
        codes.reshape(pool * page, -1)[unused] = 127 if fmt == "int8" else 0x7F
    if scheme == "per_token":
        for scales in (ks, vs):
            scales.reshape(pool * page, -1)[unused] = np.nan
    q = rng.standard_normal((13, heads, dim)).astype(np.float16)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, heads, kv_heads, dim, page, "float16",
                                   kv_dtype=fmt, scale_scheme=scheme)
    got = w.run(q, kc, vc, k_scale=ks, v_scale=vs, out=np.full(q.shape, np.nan, np.float16))
    k64, v64 = dequant(kc, fmt, ks), dequant(vc, fmt, vs)
    want = prefill_ref(q, k64, v64, indptr, tables, lens, heads // kv_heads, True, dim ** -0.5)
    # K/V dequantized to fp16 in the kernel: one more fp16 rounding than the grid above
    assert np.abs(got.astype(np.float64) - want).max() <= PREFILL_TOL[np.float16]


# -- cache writes ----------------------------------------------------------------------------

def _pages_snapshot(*arrays):
    return [np.array(a, copy=True) for a in arrays]


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32], ids=["fp16", "bf16", "fp32"])
def test_write_kv_grid_scatters_exactly(dtype):
    rng = np.random.default_rng(11)
    for case in range(20):
        pool, page = int(rng.integers(1, 6)), int(rng.choice([1, 3, 16]))
        kv_heads, dim = int(rng.choice([1, 3])), int(rng.choice([1, 2, 5, 64]))
        kc = rng.standard_normal((pool, page, kv_heads, dim)).astype(dtype)
        vc = rng.standard_normal(kc.shape).astype(dtype)
        n = int(rng.integers(0, pool * page + 1))
        slots = rng.permutation(pool * page)[:n].astype(np.int64)
        slots[rng.random(n) < 0.2] = -1
        k, v = (rng.standard_normal((n, kv_heads, dim)).astype(dtype) for _ in "kv")
        want_k, want_v = kc.reshape(-1, kv_heads, dim).copy(), vc.reshape(-1, kv_heads, dim).copy()
        want_k[slots[slots >= 0]], want_v[slots[slots >= 0]] = k[slots >= 0], v[slots >= 0]
        write_kv(k, v, kc, vc, slots)
        assert kc.tobytes() == want_k.tobytes() and vc.tobytes() == want_v.tobytes(), case


def test_slot_mapping_against_positions():
    rng = np.random.default_rng(12)
    for _ in range(30):
        page = int(rng.choice([1, 4, 16, 256]))
        lens = rng.integers(0, 70, int(rng.integers(1, 5)))
        q_lens = np.array([rng.integers(0, n + 1) for n in lens])
        width = int(-(-lens.max() // page)) + 1
        tables = rng.permutation(len(lens) * width).reshape(len(lens), width).astype(np.int32)
        want = [tables[b, t // page] * page + t % page
                for b in range(len(lens)) for t in range(lens[b] - q_lens[b], lens[b])]
        got = slot_mapping(tables, lens.astype(np.int64), q_lens, page)
        assert got.dtype == np.int64 and got.tolist() == want


QUANT_EDGES = np.array([np.nan, np.inf, -np.inf, 1e4, -0.0, 6e-8, 448.0, 464.0, 465.0], np.float32)


@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("src", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_write_kv_quant_codes_and_scales_against_independent_quantizer(fmt, scheme, src):
    rng = np.random.default_rng(13)
    pool, page, kv_heads, dim, n = 6, 5, 3, 40, 9
    qmax = 127.0 if fmt == "int8" else 448.0
    k = (rng.standard_normal((n, kv_heads, dim)) * 3).astype(src)
    v = (rng.standard_normal((n, kv_heads, dim)) * 0.01).astype(src)
    k[0, 0, :QUANT_EDGES.size] = QUANT_EDGES.astype(src)
    k[1, 1] = 0   # an all-zero row: per-token scale 1
    storage = np.int8 if fmt == "int8" else np.uint8
    kc, vc = (np.full((pool, page, kv_heads, dim), 0x55, storage) for _ in "kv")
    slots = rng.permutation(pool * page)[:n].astype(np.int64)
    slots[4] = -1
    if scheme == "static":
        ks, vs = np.array([0.02, 0.5, 3.0], np.float32), np.array([1e-4, 2e-3, 7e-5], np.float32)
    else:
        ks, vs = (np.full((pool, page, kv_heads), -7, np.float32) for _ in "kv")
    given = ks.copy(), vs.copy()
    write_kv_quant(k, v, kc, vc, slots, fmt, scheme, k_scale=ks, v_scale=vs)
    for x, codes, scales, before in ((k, kc, ks, given[0]), (v, vc, vs, given[1])):
        x32 = x.astype(np.float32)
        for t in np.flatnonzero(slots >= 0):
            p, o = divmod(int(slots[t]), page)
            for h in range(kv_heads):
                if scheme == "static":
                    s = before[h]
                else:   # float32 amax / qmax, NaN ignored, 1 for an all-zero row
                    amax = np.fmax.reduce(np.abs(x32[t, h]), initial=np.float32(0))
                    s = amax / np.float32(qmax) if amax > 0 else np.float32(1)   # inf: inf
                    assert scales[p, o, h] == s, (t, h)
                with np.errstate(invalid="ignore"):
                    y = x32[t, h] / np.float32(s)
                want = int8_encode(y) if fmt == "int8" else e4m3_encode(y)
                assert np.array_equal(codes[p, o, h], want.reshape(codes[p, o, h].shape)), (t, h)
        untouched = np.setdiff1d(np.arange(pool * page), slots)
        assert (codes.reshape(pool * page, -1)[untouched] == storage(0x55)).all()
        if scheme == "per_token":
            assert (scales.reshape(pool * page, -1)[untouched] == -7).all()


# -- quant module against ml_dtypes and the definition -----------------------------------------

def test_e4m3_decode_every_code_against_definition_and_ml_dtypes():
    codes = np.arange(256, dtype=np.uint8)
    got = quant.decode(codes, "fp8_e4m3").astype(np.float64)
    assert np.array_equal(got, E4M3_VALUES, equal_nan=True)
    assert np.array_equal(codes.view(E4M3).astype(np.float64), E4M3_VALUES, equal_nan=True)
    finite = np.isfinite(E4M3_VALUES)   # every finite code encodes back to itself
    assert np.array_equal(quant.encode(E4M3_VALUES[finite].astype(np.float32), "fp8_e4m3"),
                          codes[finite])


def test_encode_grid_saturation_nan_subnormals_and_ties():
    rng = np.random.default_rng(14)
    mids = (E4M3_VALUES[1:0x7E] + E4M3_VALUES[2:0x7F]) / 2   # every tie between neighbours
    x = np.concatenate([rng.standard_normal(1500) * 100, rng.standard_normal(500) * 2.0 ** -8,
                        mids, -mids, [448, 449, 464, 465, 1e30, -1e30, np.inf, -np.inf,
                                      np.nan, -np.nan, 0.0, -0.0, 2.0 ** -10, 2.0 ** -11,
                                      3 * 2.0 ** -11, 1e-45]]).astype(np.float32)
    assert np.array_equal(quant.encode(x, "fp8_e4m3"), e4m3_encode(x))
    y = np.concatenate([rng.standard_normal(1000) * 80, np.arange(-130, 130) + 0.5,
                        [np.nan, np.inf, -np.inf, -128.0, 1e30]]).astype(np.float32)
    assert np.array_equal(quant.encode(y, "int8"), int8_encode(y))


@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3"])
def test_quantize_dequantize_round_trip_error_bound(fmt):
    """|x - dequant(quant(x))| <= half a step: int8 scale / 2; e4m3 2^-4 relative (3
    mantissa bits) or, below 2^-6 (subnormal), 2^-10 x scale."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((50, 4, 32)).astype(np.float32) * rng.choice([1e-3, 1, 30], (50, 4, 1))
    scales = quant.per_token_scales(x, fmt)
    back = quant.dequantize(quant.quantize(x, fmt, scales), fmt, scales).astype(np.float64)
    s = scales[..., None].astype(np.float64)
    bound = s / 2 if fmt == "int8" else np.maximum(np.abs(x) * 2.0 ** -4, s * 2.0 ** -10)
    assert (np.abs(back - x) <= bound * (1 + 1e-6)).all()


# -- CSR round trips -------------------------------------------------------------------------

def test_csr_round_trip_grid():
    rng = np.random.default_rng(16)
    for case in range(60):
        page = int(rng.choice([1, 2, 16, 256]))
        batch = int(rng.integers(0, 5))
        lens = rng.choice([0, 1, page - 1 or 1, page, page + 1, 3 * page, 300], batch)
        width = int(-(-lens.max(initial=0) // page)) + int(rng.integers(0, 2))
        tables = rng.integers(0, 1000, (batch, width)).astype(np.int32)
        for b in range(batch):
            tables[b, -(-lens[b] // page):] = rng.choice([-1, 7, 2**31 - 1])
        lens = lens.astype(np.int32)
        torch_in = case % 4 == 0
        args = (torch.from_numpy(tables), torch.from_numpy(lens)) if torch_in else (tables, lens)
        indptr, indices, last = to_csr(*args, page)
        if torch_in:
            assert all(isinstance(a, torch.Tensor) for a in (indptr, indices, last))
            indptr, indices, last = (a.numpy() for a in (indptr, indices, last))
        pages = -(-lens.astype(np.int64) // page)
        assert indptr.tolist() == [0, *np.cumsum(pages).tolist()]
        assert indices.tolist() == [int(tables[b, j])
                                    for b in range(batch) for j in range(pages[b])]
        assert last.tolist() == [int(n - (p - 1) * page) if p else 0 for n, p in zip(lens, pages)]
        back, back_lens = from_csr(indptr, indices, last, page)
        assert back_lens.tolist() == lens.tolist() and back.dtype == np.int32
        assert back.shape == (batch, int(pages.max(initial=0)))
        for b in range(batch):
            pad = [-1] * (back.shape[1] - pages[b])
            assert back[b].tolist() == tables[b, :pages[b]].tolist() + pad


# -- PagedKVCache and the allocator ----------------------------------------------------------

@pytest.mark.parametrize("kv_dtype", [None, "int8", "fp8_e4m3"])
def test_paged_kv_cache_random_appends_forks_and_frees_against_a_model(kv_dtype):
    rng = np.random.default_rng(17)
    page, kv_heads, dim = 3, 2, 8
    extra = {} if kv_dtype is None else {"kv_dtype": kv_dtype, "scale_scheme": "per_token"}
    cache = PagedKVCache(12, page, kv_heads, dim, dtype=np.float32, device="cpu", **extra)
    model = {}
    for step in range(120):
        op = rng.integers(4)
        if op == 0 or not model:
            model[cache.add_sequence()] = (np.zeros((0, kv_heads, dim)),) * 2
            continue
        sid = int(rng.choice(list(model)))
        if op == 1:
            n = int(rng.integers(0, 5))
            k, v = (rng.standard_normal((n, kv_heads, dim)).astype(np.float32) for _ in "kv")
            before = (cache.allocator.num_free, cache.block_table(sid), cache.seq_len(sid),
                      *_pages_snapshot(cache.k_cache, cache.v_cache))
            try:
                cache.append(sid, k, v)
            except OutOfPagesError:
                after = (cache.allocator.num_free, cache.block_table(sid), cache.seq_len(sid))
                assert after == before[:3]
                assert np.array_equal(cache.k_cache, before[3])
                assert np.array_equal(cache.v_cache, before[4])
                continue
            model[sid] = tuple(np.concatenate([m, x]) for m, x in zip(model[sid], (k, v)))
        elif op == 2:
            try:
                model[cache.fork_sequence(sid)] = model[sid]
            except OutOfPagesError:
                pass
        else:
            cache.free_sequence(sid)
            del model[sid]
            continue
        gk, gv = cache.gather(sid)
        if kv_dtype is None:
            assert np.array_equal(gk, model[sid][0]) and np.array_equal(gv, model[sid][1])
        else:   # per-token scales: within half a code step of each row's amax / qmax
            step = 0.5 / 127 if kv_dtype == "int8" else 2.0 ** -4
            tol = step * np.abs(model[sid][0]).max(-1, keepdims=True)
            assert (np.abs(gk - model[sid][0]) <= tol + 1e-7).all()
    tables, lens = cache.block_tables(list(model))
    assert lens.tolist() == [len(model[s][0]) for s in model]
    cache.allocator.check_invariants()


def test_block_allocator_random_ops_against_a_model():
    rng = np.random.default_rng(18)
    alloc, refs = BlockAllocator(10), {}
    for _ in range(300):
        op = rng.integers(3)
        if op == 0:
            n = int(rng.integers(0, 5))
            free = 10 - len(refs)
            if n > free:
                state = alloc.state()
                with pytest.raises(OutOfPagesError):
                    alloc.allocate(n)
                assert alloc.state() == state
                continue
            for p in alloc.allocate(n):
                assert p not in refs and 0 <= p < 10
                refs[p] = 1
        elif op == 1 and refs:
            n = int(rng.integers(1, len(refs) + 1))
            pages = [int(p) for p in rng.choice(list(refs), n, replace=False)]
            alloc.incref(pages)
            for p in pages:
                refs[p] += 1
        elif refs:
            p = int(rng.choice(list(refs)))
            alloc.free([p])
            refs[p] -= 1
            if not refs[p]:
                del refs[p]
                with pytest.raises(ValueError):
                    alloc.free([p])   # a double free
        assert alloc.num_used == len(refs) and alloc.num_free == 10 - len(refs)
        assert all(alloc.ref_count(p) == n for p, n in refs.items())


# -- bad input: raised before anything changes, naming the argument ---------------------------

def _strided(values):
    """A torch int32 view with stride 2 holding `values` (a column slice of a wider tensor)."""
    wide = torch.tensor(np.repeat(np.asarray(values, np.int32)[..., None], 2, -1))
    return wide[..., 0]


def test_strided_torch_index_tensors_get_torch_fix_not_numpy_one():
    """Before: to_csr, from_csr, both plans and gather_kv said "call
    np.ascontiguousarray(block_tables) first" for a strided torch tensor: NumPy's call,
    which hands back a NumPy array (the results then are no tensors), where torch's is
    .contiguous(), as write_kv and the runs say."""
    from pagedattn_lab import BatchDecodeWrapper, gather_kv, gather_kv_reference
    tables, lens = _strided([[3, 1], [0, 2]]), _strided([17, 20])
    assert not tables.is_contiguous() and not lens.is_contiguous()
    good_t, good_l = tables.contiguous(), lens.contiguous()
    calls = {
        "block_tables": [lambda: to_csr(tables, good_l, 16),
                         lambda: BatchDecodeWrapper().plan(tables, good_l, 4, 2, 64, 16, "float16"),
                         lambda: BatchPrefillWrapper().plan(
                             torch.tensor([0, 1, 2], dtype=torch.int32), tables, good_l, 4, 2,
                             64, 16, "float16")],
        "seq_lens": [lambda: to_csr(good_t, lens, 16),
                     lambda: BatchDecodeWrapper().plan(good_t, lens, 4, 2, 64, 16, "float16")],
        "qo_indptr": [lambda: BatchPrefillWrapper().plan(_strided([0, 1, 2]), good_t, good_l,
                                                         4, 2, 64, 16, "float16")],
        "indptr": [lambda: from_csr(_strided([0, 2]), torch.tensor([3, 1], dtype=torch.int32),
                                    torch.tensor([1], dtype=torch.int32), 16)],
        "indices": [lambda: from_csr(torch.tensor([0, 2], dtype=torch.int32), _strided([3, 1]),
                                     torch.tensor([1], dtype=torch.int32), 16)],
        "block_table_row": [lambda: gather_kv(torch.zeros(4, 16, 2, 8), torch.zeros(4, 16, 2, 8),
                                              _strided([3, 1]), 20),
                            lambda: gather_kv_reference(torch.zeros(4, 16, 2, 8),
                                                        torch.zeros(4, 16, 2, 8),
                                                        _strided([3, 1]), 20)],
    }
    for name, fns in calls.items():
        for fn in fns:
            with pytest.raises(ValueError, match=rf"^{name}: expected a contiguous tensor.*"
                                                 rf"call {name}\.contiguous\(\) first$"):
                fn()


def _bad_calls():
    """[(entry point, {argument: [bad values]})] for every entry point this grid covers
    (each bad value alone must raise naming that argument), and what none may change: the
    arrays the calls share, and a wrapper whose plan a failed plan must leave."""
    tables, lens = np.array([[2, 0], [1, -1]], np.int32), np.array([20, 9], np.int32)
    rng = np.random.default_rng(19)
    kc16, vc16 = (rng.standard_normal((3, 16, 2, 64)).astype(np.float16) for _ in "kv")
    kq, vq = (rng.integers(-127, 128, (3, 16, 2, 64)).astype(np.int8) for _ in "kv")
    q = rng.standard_normal((4, 4, 64)).astype(np.float16)
    rows32, rows16 = np.ones((2, 2, 64), np.float32), np.ones((2, 2, 64), np.float16)
    slots = np.array([5, 40], np.int64)
    ks, vs = np.array([0.1, 0.2], np.float32), np.array([0.3, 0.4], np.float32)
    indptr = np.array([0, 3, 4], np.int32)

    def wide(a):   # a strided view of a's values
        return np.repeat(a[..., None], 2, -1)[..., 0]

    replanned = BatchPrefillWrapper().plan(indptr, np.array([[0, 2], [1, -1]], np.int32),
                                           np.array([25, 9], np.int32), 4, 2, 64, 16,
                                           "float16", causal=False)
    plan = lambda **kw: replanned.plan(**{**dict(   # noqa: E731
        qo_indptr=indptr, block_tables=tables, seq_lens=lens, num_heads=4, num_kv_heads=2,
        head_dim=64, page_size=16, dtype="float16"), **kw})
    planned = BatchPrefillWrapper().plan(indptr, tables, lens, 4, 2, 64, 16, "float16")
    planned_q = BatchPrefillWrapper().plan(indptr, tables, lens, 4, 2, 64, 16, "float16",
                                           kv_dtype="int8")
    calls = [
        (plan, {
            "qo_indptr": [indptr.astype(np.int64), np.array([0, 3, 2], np.int32),
                          np.array([1, 3, 4], np.int32), np.array([0, 21, 22], np.int32),
                          wide(indptr), indptr[None]],
            "block_tables": [tables.astype(np.int64), np.array([[2, 5], [1, -1]], np.int32)[:, :1],
                             wide(tables), np.array([[2, -1], [1, -1]], np.int32),
                             np.array([[2, 2**30], [1, -1]], np.int32)],
            "seq_lens": [lens.astype(np.int64), np.array([20, -9], np.int32),
                         np.array([33, 9], np.int32), np.array([20, 2**31 - 1], np.int32),
                         wide(lens)],
            "num_heads": [5, 0, -4, 4.0, True], "num_kv_heads": [0, 3, -2],
            "head_dim": [48, 0, 512, 64.0], "page_size": [0, -16, 2**31, 16.0],
            "dtype": [np.float32, np.int16, "float64"], "causal": [1, "yes", None],
            "kv_dtype": ["int4", np.float16], "scale_scheme": ["dynamic", None],
        }),
        (lambda **kw: planned.run(**{**dict(q=q, k_cache=kc16, v_cache=vc16), **kw}), {
            "q": [q.astype(np.float32), q[:3], np.zeros((4, 2, 64), np.float16), wide(q)],
            "k_cache": [kc16[:2], kc16.astype(np.float32), wide(kc16), kc16[:, :8].copy()],
            "v_cache": [kc16[:, :8].copy(), kc16.astype(ml_dtypes.bfloat16)],
            "scale": [float("nan"), -1.0, 0.0, float("inf"), np.ones(2)],
            "out": [np.zeros(q.shape, np.float32), np.zeros((4, 4, 32), np.float16), q],
            "k_scale": [ks],
        }),
        (lambda **kw: planned_q.run(**{**dict(q=q, k_cache=kq, v_cache=vq, k_scale=ks,
                                              v_scale=vs), **kw}), {
            "k_scale": [None, np.array([0.1, np.nan], np.float32), np.array([0.1, 0], np.float32),
                        np.array([0.1, -1], np.float32), np.ones(3, np.float32),
                        ks.astype(np.float64),
                        np.array([0.1, 1e37], np.float32), wide(ks)],
            "k_cache": [kq.view(np.uint8), kc16],
        }),
        (lambda **kw: write_kv(**{**dict(k=rows16, v=rows16.copy(), k_cache=kc16,
                                         v_cache=vc16, slot_mapping=slots), **kw}), {
            "k": [rows32, rows16[:, :1].copy(), wide(rows16), rows16[None]],
            "v": [rows16[:1].copy()],
            "k_cache": [kc16.astype(np.float64), kc16[0], kc16.view(np.uint16)],
            "v_cache": [kc16[:2].copy()],
            "slot_mapping": [slots.astype(np.int32), np.array([5, 96]), np.array([5, -2]),
                             np.array([5, 5]), slots[:1], slots[None], slots.astype(np.float64)],
        }),
        (lambda **kw: write_kv_quant(**{**dict(
            k=rows32, v=rows32.copy(), k_cache=kq, v_cache=vq, slot_mapping=slots,
            kv_dtype="int8", scale_scheme="static", k_scale=ks, v_scale=vs), **kw}), {
            "k": [rows32.astype(np.float64), rows32.astype(ml_dtypes.bfloat16), wide(rows32)],
            "v": [rows16],
            "k_cache": [kq.view(np.uint8), kc16],
            "slot_mapping": [np.array([5, 96]), np.array([5, 5])],
            "k_scale": [None, np.array([0.1, np.inf], np.float32), np.ones(3, np.float32),
                        ks.astype(np.float64), [0.1, 0.2], np.float32(1)],
            "kv_dtype": ["int4", None], "scale_scheme": ["dynamic"],
        }),
        (lambda **kw: slot_mapping(**{**dict(block_tables=tables, seq_lens=lens,
                                             q_lens=np.array([3, 1]), page_size=16), **kw}), {
            "q_lens": [np.array([21, 1]), np.array([-1, 1]), np.array([1.0, 1.0]),
                       np.array([1]), np.array([2**63, 1], np.uint64)],
            "seq_lens": [np.array([20, -9]), np.array([20, 2**40]), np.array([33, 9])],
            "block_tables": [tables.ravel(), np.array([[2, 0], [-1, -1]], np.int32)],
            "page_size": [0, 2**31],
        }),
        (lambda **kw: to_csr(**{**dict(block_tables=tables, seq_lens=lens, page_size=16), **kw}), {
            "block_tables": [tables.astype(np.int64), wide(tables), tables.ravel(),
                             np.array([[2, 0], [-1, -1]], np.int32)],
            "seq_lens": [lens.astype(np.int64), np.array([20, -1], np.int32),
                         np.array([33, 9], np.int32), lens[:1]],
            "page_size": [0, 2**31, 16.0, True],
        }),
        (lambda **kw: from_csr(**{**dict(indptr=np.array([0, 2, 3], np.int32),
                                         indices=np.array([2, 0, 1], np.int32),
                                         last_page_len=np.array([4, 9], np.int32),
                                         page_size=16), **kw}), {
            "indptr": [np.array([0, 2, 3], np.int64), np.array([1, 2, 3], np.int32),
                       np.array([0, 3, 2], np.int32), np.array([0, 2, 4], np.int32),
                       np.array([], np.int32)],
            "indices": [np.array([2, 0, 1], np.int64), np.array([2, -1, 1], np.int32)],
            "last_page_len": [np.array([0, 9], np.int32), np.array([17, 9], np.int32),
                              np.array([4], np.int32), np.array([4, 9], np.int64)],
            "page_size": [0, -1, 2**31],
        }),
    ]
    state = [tables, lens, indptr, kc16, vc16, kq, vq, ks, vs, q, rows16, rows32, slots]
    return calls, state, replanned


def test_bad_input_on_every_entry_point_raises_naming_it_and_changes_nothing():
    """Each bad value alone: a ValueError / TypeError whose message names the argument; no
    array of the calls changed (the caches, scales and tables included), and the wrapper
    whose re-plans failed runs its old plan."""
    calls, state, replanned = _bad_calls()
    saved = [x.copy() for x in state]
    kc, vc, q = state[3], state[4], state[9]
    baseline = replanned.run(q, kc, vc).copy()
    count = 0
    for fn, bad in calls:
        for name, values in bad.items():
            for value in values:
                with pytest.raises((ValueError, TypeError)) as info:
                    fn(**{name: value})
                message = str(info.value)
                assert re.search(rf"\b{name}\b", message), f"{name}={value!r}: {message}"
                assert all(np.array_equal(a, b) for a, b in zip(state, saved)), (name, value)
                count += 1
    assert count > 100
    assert np.array_equal(replanned.run(q, kc, vc), baseline)


# -- subnormal values and scales: the kernels run with -ftz ------------------------------------

TINY = float(np.finfo(np.float32).tiny)


def _tiny_row(x0):
    row = np.zeros((1, 1, 32), np.float32)   # zeros beside: 0 / a zero scale is NaN
    row[0, 0, :2] = x0, -x0 / 3
    return row


@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3"])
def test_rows_of_subnormal_values_quantize_as_the_kernel_does_without_nan(fmt):
    """Before: the NumPy quantizer (PagedKVCache's, quantize_rows) gave a row whose amax is
    1e-45 the scale 1e-45 / qmax = 0, and its zeros 0 / 0: e4m3 NaN codes, so gather read
    31 NaN of 32 finite inputs; rows of amax 1e-40 got a subnormal scale and nonzero codes,
    where the kernel (-ftz: they are 0) writes scale 1 and codes 0."""
    storage = np.int8 if fmt == "int8" else np.uint8
    for x0 in (1e-45, 1e-40, 3e-39):
        k = _tiny_row(x0)
        codes, scales = quant.quantize_rows(k, fmt, "per_token")
        assert scales[0, 0] == 1.0 and not (codes.view(np.uint8) & 0x7F).any()   # +-0
        kc, vc = np.full((1, 2, 1, 32), 9, storage), np.full((1, 2, 1, 32), 9, storage)
        ks, vs = np.zeros((1, 2, 1), np.float32), np.zeros((1, 2, 1), np.float32)
        write_kv_quant(k, k.copy(), kc, vc, np.array([0], np.int64), fmt, "per_token", ks, vs)
        assert np.array_equal(kc[0, 0], codes[0]) and ks[0, 0, 0] == scales[0, 0]
        cache = PagedKVCache(2, 2, 1, 32, dtype=np.float32, device="cpu", kv_dtype=fmt,
                             scale_scheme="per_token")
        seq = cache.add_sequence()
        cache.append(seq, k, k.copy())
        assert not np.isnan(cache.gather(seq)[0]).any()
    # just above the subnormals, amax / qmax is subnormal: the scale is the smallest normal
    scales = quant.per_token_scales(_tiny_row(1e-37), fmt)
    assert scales[0, 0] == np.float32(TINY)
    codes, scales = quant.quantize_rows(_tiny_row(1e-37), fmt, "per_token")
    back = quant.dequantize(codes, fmt, scales)
    assert not np.isnan(back).any() and abs(back[0, 0, 0] - 1e-37) <= 1e-37 / 16


@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3"])
def test_kernel_per_token_scale_of_a_tiny_row_is_normal(fmt):
    storage = np.int8 if fmt == "int8" else np.uint8
    k = _tiny_row(1e-37)
    kc, vc = np.zeros((1, 2, 1, 32), storage), np.zeros((1, 2, 1, 32), storage)
    ks, vs = np.zeros((1, 2, 1), np.float32), np.zeros((1, 2, 1), np.float32)
    write_kv_quant(k, k.copy(), kc, vc, np.array([0], np.int64), fmt, "per_token", ks, vs)
    codes, scales = quant.quantize_rows(k, fmt, "per_token")
    assert ks[0, 0, 0] == scales[0, 0] and np.array_equal(kc[0, 0], codes[0])


def test_subnormal_static_scales_are_refused_by_name():
    """Before: k_scale = 1e-40 passed every check (finite, > 0), and the kernels, compiled
    with -ftz, divided by 0: write_kv_quant stored int8 codes 0 and e4m3 NaN for 1e-39,
    where the NumPy reference stored 10 and 82."""
    subnormal = np.array([0.5, 1e-40], np.float32)
    fine = np.array([0.5, 0.5], np.float32)
    rows = np.ones((1, 2, 32), np.float32)
    match = r"^k_scale: every scale must be at least 1\.175e-38.*k_scale\[1\] is 9\.99"
    with pytest.raises(ValueError, match=match):
        write_kv_quant(rows, rows.copy(), np.zeros((1, 2, 2, 32), np.int8),
                       np.zeros((1, 2, 2, 32), np.int8), np.array([0], np.int64), "int8",
                       "static", subnormal, fine)
    with pytest.raises(ValueError, match=match):
        PagedKVCache(2, 2, 2, 32, device="cpu", kv_dtype="fp8", k_scale=subnormal, v_scale=fine)
    w = BatchPrefillWrapper().plan(np.array([0, 1], np.int32), np.array([[0]], np.int32),
                                   np.array([2], np.int32), 2, 2, 32, 2, "float16",
                                   kv_dtype="int8")
    cache = np.ones((1, 2, 2, 32), np.int8)
    with pytest.raises(ValueError, match=match):
        w.run(np.ones((1, 2, 32), np.float16), cache, cache.copy(), k_scale=subnormal,
              v_scale=fine)
    assert np.array_equal(quant.per_token_scales(np.full((1, 4), TINY, np.float32), "int8"),
                          [np.float32(TINY)])   # (the floor itself is a scale it takes)
