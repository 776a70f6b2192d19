"""The outsider's grid of hunt 143 (tests/test_quant_grid_hunt143.py), its kernels on the CPU
executor: write_kv_quant bit for bit against that file's codes and scales, and both wrappers
over compressed pages against a float64 reference on its own dequantization (ml_dtypes' e4m3
values times the scales): GQA, MQA and MHA, lengths 1, page - 1, page and page + 1, page
size 1, pages shared by rows, NaN codes and NaN per-token scales in every slot no sequence
owns, and float32, float16 and bfloat16 queries over int8 and e4m3 pages."""
import ml_dtypes
import numpy as np
import pytest
import torch

from pagedattn_lab import BatchDecodeWrapper, BatchPrefillWrapper, quant
from pagedattn_lab.cache_write_quant import write_kv_quant
from tests.test_quant_grid_hunt143 import (E4M3, FORMATS, SCHEMES, STATIC_K, STATIC_V,
                                           awkward_rows, own_codes, own_scales, own_values)

BF16 = ml_dtypes.bfloat16


# -- the grid: write_kv_quant (the kernel, on the CPU executor) ------------------------------------

def unwritten_pages(kv_dtype, scheme, num_pages, page_size, heads, dim):
    """Caches of NaN codes (e4m3) or -128 (int8, never written) and NaN per-token scales:
    whatever the write leaves alone must keep them."""
    storage = quant.kv_format(kv_dtype).storage
    caches = [np.full((num_pages, page_size, heads, dim), 0x7F if kv_dtype != "int8" else 0x80,
                      np.uint8).view(storage) for _ in range(2)]
    shape = quant.scale_shape(scheme, num_pages, page_size, heads)
    fill = np.nan if scheme == "per_token" else 0.0
    scales = [np.full(shape, fill, np.float32) for _ in range(2)]
    if scheme == "static":
        scales = [STATIC_K[:heads].copy(), STATIC_V[:heads].copy()]
    return caches, scales


@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("pages, src", [((3, 1, 1, 16), np.float32), ((2, 5, 3, 40), np.float16),
                                        ((4, 4, 2, 8), np.float32)])
def test_write_kv_quant_matches_this_files_reference_bit_for_bit(rng, kv_dtype, scheme, pages,
                                                                 src):
    num_pages, page_size, heads, dim = pages
    (k_cache, v_cache), (k_scale, v_scale) = unwritten_pages(kv_dtype, scheme, *pages)
    n = num_pages * page_size - 1                 # one slot stays unwritten
    k, v = (awkward_rows(rng, (n, heads, dim)).astype(src) for _ in range(2))
    k[-1, 0, :2] = np.inf, -np.inf                # a row holding inf
    slots = rng.permutation(num_pages * page_size)[:n].astype(np.int64)
    slots[0] = -1                                 # a padding row: skipped
    before = [a.copy() for a in (k_cache, v_cache, k_scale, v_scale)]
    with np.errstate(all="ignore"):
        write_kv_quant(k, v, k_cache, v_cache, slots, kv_dtype, scheme, k_scale, v_scale)
    live = slots >= 0
    untouched = np.setdiff1d(np.arange(num_pages * page_size), slots[live])
    for rows, cache, scale, old_cache, old_scale in ((k, k_cache, k_scale, before[0], before[2]),
                                                     (v, v_cache, v_scale, before[1], before[3])):
        rows = rows[live].astype(np.float32)
        want_scale = own_scales(rows, kv_dtype) if scheme == "per_token" else scale
        got = cache.reshape(-1, heads, dim)
        np.testing.assert_array_equal(got[slots[live]].view(np.uint8),
                                      own_codes(rows, kv_dtype, want_scale).view(np.uint8))
        np.testing.assert_array_equal(got[untouched].view(np.uint8),
                                      old_cache.reshape(-1, heads, dim)[untouched].view(np.uint8))
        if scheme == "per_token":
            flat, old = scale.reshape(-1, heads), old_scale.reshape(-1, heads)
            np.testing.assert_array_equal(flat[slots[live]], want_scale)
            assert np.all(np.isnan(flat[untouched])) and np.all(np.isnan(old[untouched]))
        else:
            np.testing.assert_array_equal(scale, old_scale)   # static scales are only read


def write_args(scheme):
    (k_cache, v_cache), (k_scale, v_scale) = unwritten_pages("fp8_e4m3", scheme, 3, 4, 2, 16)
    rows = np.ones((2, 2, 16), np.float32)
    return dict(k=rows, v=rows.copy(), k_cache=k_cache, v_cache=v_cache,
                slot_mapping=np.array([0, 5]), kv_dtype="fp8", scale_scheme=scheme,
                k_scale=k_scale, v_scale=v_scale)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("change, exc, match", [
    (dict(v_scale=[0.5, 0.5]), (TypeError, ValueError), r"^v_scale: "),
    (dict(k_scale=torch.ones(2)), TypeError, r"^k_scale: expected a NumPy or CuPy array"),
    (dict(k=torch.ones((2, 2, 16))), TypeError, r"^k: expected a NumPy or CuPy array"),
    (dict(v=np.ones((2, 2, 16), BF16)), TypeError, r"^v: expected dtype float32 or float16"),
    (dict(k_cache=np.zeros((3, 4, 2, 16), E4M3)), TypeError,
     r"^k_cache: expected dtype uint8 \(the codes of fp8_e4m3 pages\), got float8_e4m3fn; "
     r"those are the e4m3 codes' bytes: pass k_cache\.view\(np\.uint8\)$"),
    (dict(slot_mapping=np.array([3, 3])), ValueError, r"^slot_mapping: rows \[0, 1\] all write "
                                                      r"slot 3"),
    (dict(slot_mapping=np.array([0, 12])), ValueError, r"^slot_mapping\[1\]: slot 12 is out of "
                                                       r"range"),
    (dict(kv_dtype=None), ValueError, r"^kv_dtype: expected one of .*got None"),
    (dict(scale_scheme="static_"), ValueError, r"^scale_scheme: expected one of"),
])
def test_write_kv_quant_refuses_bad_arguments_and_writes_nothing(scheme, change, exc, match):
    args = write_args(scheme)
    before = {n: np.copy(args[n]) for n in ("k_cache", "v_cache", "k_scale", "v_scale")}
    args.update(change)
    with pytest.raises(exc, match=match):
        write_kv_quant(**args)
    for name, old in before.items():
        if name not in change:
            np.testing.assert_array_equal(args[name], old, err_msg=name)


# -- the grid: both wrappers over compressed pages ------------------------------------------------


def paged_problem(rng, lens, page_size, kv_heads, dim, kv_dtype, scheme, shared, outlier):
    """(tables, lens, k_cache, v_cache, k_scale, v_scale): random codes in the slots the
    sequences own, NaN codes (e4m3) or -128 (int8) and NaN per-token scales everywhere else;
    shared: every row after the first starts on the first row's pages (a common prefix);
    outlier: the K scales of KV head 0 thirty times the others' (static or per token)."""
    pages = [-(-n // page_size) for n in lens]
    num_pages = sum(pages) + 2
    (k_cache, v_cache), (k_scale, v_scale) = unwritten_pages(kv_dtype, scheme, num_pages,
                                                             page_size, kv_heads, dim)
    free = list(rng.permutation(num_pages))
    tables = np.full((len(lens), max(pages)), -1, np.int32)
    owned = np.zeros((num_pages, page_size), bool)
    for b, n in enumerate(lens):
        common = min(pages[b], pages[0]) if shared and b else 0
        tables[b, :common] = tables[0, :common]
        tables[b, common:pages[b]] = [free.pop() for _ in range(pages[b] - common)]
        for t in range(n):
            owned[tables[b, t // page_size], t % page_size] = True
    live = (int(owned.sum()), kv_heads, dim)
    for cache in (k_cache, v_cache):
        cache[owned] = rng.integers(-127, 128, live).astype(np.int8) if kv_dtype == "int8" else \
            rng.standard_normal(live).astype(E4M3).view(np.uint8)
    for scale in (k_scale, v_scale):   # |K|, |V| up to 6 (int8) or 22 (e4m3)
        if scheme == "per_token":
            scale[owned] = rng.uniform(0.01, 0.05, live[:2])
        else:
            scale[:] = rng.uniform(0.01, 0.05, kv_heads)
    k_scale[..., 0] *= 30 if outlier else 1
    return tables, np.array(lens, np.int32), k_cache, v_cache, k_scale, v_scale


def reference(q, k, v, tables, lens, page_size, indptr=None):
    """float64 attention of each query row over its sequence's dequantized K, V (causal,
    bottom-right: the last query row sees every token)."""
    heads, kv_heads, dim = q.shape[1], k.shape[2], q.shape[2]
    out = np.zeros(q.shape)
    for b, n in enumerate(lens):
        slots = [tables[b, t // page_size] * page_size + t % page_size for t in range(n)]
        keys, values = k.reshape(-1, kv_heads, dim)[slots], v.reshape(-1, kv_heads, dim)[slots]
        rows = [b] if indptr is None else range(indptr[b], indptr[b + 1])
        for i, r in enumerate(rows):
            seen = n - len(rows) + i + 1
            for h in range(heads):
                g = h * kv_heads // heads
                s = keys[:seen, g] @ q[r, h] / np.sqrt(dim)
                w = np.exp(s - s.max())
                out[r, h] = (w / w.sum()) @ values[:seen, g]
    return out


def as_q(x, dtype):
    return x.astype(BF16 if dtype == "bfloat16" else dtype)


def assert_close(out, ref, tol):
    out = np.asarray(out).astype(np.float64)
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert np.isfinite(out).all() and err < tol, f"max error {err:.3g} of max |ref|"


CASES = [   # lens, page_size, heads, kv_heads, head_dim, shared pages
    ([1, 15, 16, 17], 16, 8, 2, 32, False),    # length 1, page - 1, page, page + 1; GQA
    ([3, 1, 4], 1, 4, 1, 16, True),            # page size 1; MQA; pages shared by rows
    ([5, 9], 4, 2, 2, 48, True),               # MHA
]
DECODE_TOL = {"float32": 2e-3, "float16": 1e-2, "bfloat16": 3e-2}


@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype, kernel", [("float32", "simt"), ("float16", "simt"),
                                           ("float16", "tensor_core"), ("bfloat16", "simt"),
                                           ("bfloat16", "tensor_core")])
@pytest.mark.parametrize("case", CASES, ids=["gqa", "mqa-page1", "mha"])
def test_decode_over_compressed_pages_matches_the_float64_reference(rng, kv_dtype, scheme, dtype,
                                                                    kernel, case):
    lens, page_size, heads, kv_heads, dim, shared = case
    # an outlier head only where arithmetic is fp32: packed fp16 math's error grows with |q.k|
    tables, lens, kc, vc, ks, vs = paged_problem(rng, lens, page_size, kv_heads, dim, kv_dtype,
                                                 scheme, shared, outlier=dtype == "float32")
    q = as_q(rng.standard_normal((len(lens), heads, dim)), dtype)
    w = BatchDecodeWrapper().plan(tables, lens, heads, kv_heads, dim, page_size, dtype,
                                  kernel=kernel, kv_dtype=kv_dtype, scale_scheme=scheme)
    out = w.run(q, kc, vc, k_scale=ks, v_scale=vs)
    with np.errstate(invalid="ignore"):   # (NaN codes and scales of the unused slots)
        k, v = own_values(kc, kv_dtype, ks), own_values(vc, kv_dtype, vs)
    assert_close(out, reference(q.astype(np.float64), k, v, tables, lens, page_size),
                 DECODE_TOL[dtype])


@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", [([1, 17, 16], [1, 17, 3], 16, 8, 2, 32, False),
                                  ([5, 9], [5, 2], 1, 4, 1, 64, True)], ids=["gqa", "mqa-page1"])
def test_prefill_over_compressed_pages_matches_the_float64_reference(rng, kv_dtype, scheme,
                                                                     dtype, case):
    lens, q_lens, page_size, heads, kv_heads, dim, shared = case
    tables, lens, kc, vc, ks, vs = paged_problem(rng, lens, page_size, kv_heads, dim, kv_dtype,
                                                 scheme, shared, outlier=True)
    indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = as_q(rng.standard_normal((indptr[-1], heads, dim)), dtype)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, heads, kv_heads, dim, page_size, dtype,
                                   kv_dtype=kv_dtype, scale_scheme=scheme)
    out = w.run(q, kc, vc, k_scale=ks, v_scale=vs)
    # the kernel stages code * scale as q's dtype (as a cache of that dtype holds it), so the
    # reference reads K and V rounded so: with bfloat16 and an outlier head, the exact
    # dequantized values are 5e-2 away
    with np.errstate(invalid="ignore"):
        k, v = (np.nan_to_num(as_q(own_values(c, kv_dtype, s), dtype).astype(np.float64))
                for c, s in ((kc, ks), (vc, vs)))
    assert_close(out, reference(q.astype(np.float64), k, v, tables, lens, page_size, indptr),
                 {"float16": 4e-3, "bfloat16": 1.5e-2}[dtype])
