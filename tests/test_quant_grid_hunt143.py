"""An outsider's grid over the compressed (int8 / fp8 e4m3) paths (hunt 143): the public API
only (quant, write_kv_quant, PagedKVCache and both wrappers with kv_dtype / scale_scheme),
checked against this file's own references: e4m3 codes as the nearest of the 256 values
ml_dtypes decodes (ties to the even code), float64 dequantization and attention.

The first tests are the defects found (each failed before its fix); the grid after them
passed before and after. The kernels' grid (write_kv_quant, both wrappers) is
tests/test_quant_grid_kernels_hunt143.py, on this file's references."""
import ml_dtypes
import numpy as np
import pytest
import torch

from pagedattn_lab import BatchDecodeWrapper, BatchPrefillWrapper, PagedKVCache, quant
from pagedattn_lab.cache_write_quant import write_kv_quant

E4M3 = ml_dtypes.float8_e4m3fn
TINY = np.finfo(np.float32).tiny
FORMATS = ["int8", "fp8_e4m3"]
SCHEMES = ["static", "per_token"]


# -- this file's references ----------------------------------------------------------------

def e4m3_values():
    """float64 [256]: the value of every code, by ml_dtypes (NaN for 0x7f / 0xff)."""
    return np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float64)


def nearest_e4m3(y):
    """Codes of float32 y by search: the nearest finite e4m3 value, ties to the even code,
    past +-448 saturated (inf too), NaN as 0x7f / 0xff with y's sign bit."""
    y = np.asarray(y, np.float32).astype(np.float64)
    values = e4m3_values()
    finite = np.flatnonzero(np.isfinite(values))
    dist = np.abs(y.reshape(-1, 1) - values[finite])
    best = dist.min(axis=1, keepdims=True)
    ties = dist == best
    even = ties & (finite % 2 == 0)   # of two nearest codes, one is even (adjacent mantissas)
    pick = np.where(even.any(axis=1), even.argmax(axis=1), ties.argmax(axis=1))
    codes = finite[pick].astype(np.uint8)
    codes[np.isnan(best[:, 0])] = 0
    flat = y.reshape(-1)
    codes[np.abs(flat) > 448] = np.where(flat[np.abs(flat) > 448] > 0, 0x7E, 0xFE)
    nan = np.isnan(flat)
    codes[nan] = 0x7F | (np.signbit(flat[nan]).astype(np.uint8) << 7)
    # a zero is +0 by value, whatever rounded to it: its code keeps y's sign
    codes[(values[codes] == 0) & np.signbit(flat)] = 0x80
    return codes.reshape(y.shape)


def own_codes(x, kv_dtype, scale):
    """Codes of x [..., heads, dim] over scale (broadcast over dim), the division in float32
    as the kernels do it, subnormal inputs read as 0 (-ftz)."""
    x = np.asarray(x, np.float32)
    x = np.where(np.abs(x) < TINY, np.copysign(np.float32(0), x), x)
    with np.errstate(all="ignore"):
        y = x / np.asarray(scale, np.float32)[..., None]
    if kv_dtype == "int8":
        return np.nan_to_num(np.clip(np.rint(y.astype(np.float64)), -127, 127)).astype(np.int8)
    return nearest_e4m3(y)


def own_values(codes, kv_dtype, scale):
    """float64 code * scale."""
    values = codes.astype(np.float64) if kv_dtype == "int8" else \
        codes.view(np.uint8).view(E4M3).astype(np.float64)
    return values * np.asarray(scale, np.float64)[..., None]


def own_scales(x, kv_dtype):
    """Per-token scales by a loop: amax of the normal, non-NaN values / qmax in float32,
    at least the smallest normal float32, 1 for a row of none."""
    qmax = np.float32(127 if kv_dtype == "int8" else 448)
    x = np.asarray(x, np.float32)
    out = np.empty(x.shape[:-1], np.float32)
    for i in np.ndindex(*x.shape[:-1]):
        row = np.abs(x[i])
        row = row[~np.isnan(row) & (row >= TINY)]
        amax = row.max() if row.size else np.float32(0)
        out[i] = max(amax / qmax, np.float32(TINY)) if amax > 0 else 1.0
    return out


# -- defects found: each test failed before its fix -----------------------------------------

def planned_int8(which):
    tables, lens = np.array([[0, 1], [2, -1]], np.int32), np.array([20, 5], np.int32)
    if which == "decode":
        return BatchDecodeWrapper().plan(tables, lens, 4, 2, 32, 16, "float16", kv_dtype="int8")
    return BatchPrefillWrapper().plan(np.array([0, 1, 2], np.int32), tables, lens, 4, 2, 32,
                                      16, "float16", kv_dtype="int8")


@pytest.mark.parametrize("which", ["decode", "prefill"])
@pytest.mark.parametrize("as_torch", [False, True])
def test_a_cache_of_another_format_than_the_plans_is_told_as_planned(which, as_torch):
    # before: "k_cache: expected dtype int8 (the codes of int8 pages), got uint8": the plan's
    # context was lost when hunt 128 unified the wording (the pages may be right, the plan's
    # kv_dtype wrong); decode's run said "the plan is for int8 pages", prefill's "as planned"
    w = planned_int8(which)
    q = np.zeros((2, 4, 32), np.float16)
    codes = np.zeros((3, 16, 2, 32), np.uint8)   # fp8's storage
    scales = np.ones(2, np.float32), np.ones(2, np.float32)
    if as_torch:
        q, codes, scales = torch.from_numpy(q), torch.from_numpy(codes), \
            tuple(map(torch.from_numpy, scales))
    with pytest.raises(TypeError, match=r"^k_cache: expected dtype int8 \(the codes of int8 "
                                        r"pages, as planned\), got (torch\.)?uint8$"):
        w.run(q, codes, codes.clone() if as_torch else codes.copy(), k_scale=scales[0],
              v_scale=scales[1])


def test_calls_without_a_plan_keep_the_plain_storage_wording():
    with pytest.raises(TypeError, match=r"^codes: expected dtype int8 \(the codes of int8 "
                                        r"pages\), got uint8$"):
        quant.decode(np.zeros(4, np.uint8), "int8")
    caches = np.zeros((2, 4, 2, 16), np.int8)
    with pytest.raises(TypeError, match=r"^k_cache: expected dtype uint8 \(the codes of "
                                        r"fp8_e4m3 pages\), got int8$"):
        write_kv_quant(np.zeros((1, 2, 16), np.float32), np.zeros((1, 2, 16), np.float32),
                       caches, caches.copy(), np.array([0]), "fp8", "static",
                       np.ones(2, np.float32), np.ones(2, np.float32))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantize_rows_flushes_its_rows_once(monkeypatch, scheme):
    # before: twice (per_token_scales flushed x, then quantize_rows flushed it again)
    x = np.array([[[1e-40, -2.0, 3.0, -1e-39], [0.5, 0.0, -0.0, 7.0]]], np.float32)
    want = quant.quantize_rows(x, "fp8_e4m3", scheme, np.array([0.01, 0.02], np.float32))
    calls = []
    flushed = quant._flushed
    monkeypatch.setattr(quant, "_flushed", lambda a: calls.append(1) or flushed(a))
    got = quant.quantize_rows(x, "fp8_e4m3", scheme, np.array([0.01, 0.02], np.float32))
    assert len(calls) == 1
    for g, w in zip(got, want):   # and the results are as they were
        np.testing.assert_array_equal(g, w)
    scale = own_scales(x, "fp8_e4m3") if scheme == "per_token" else np.array([0.01, 0.02])
    np.testing.assert_array_equal(got[0], own_codes(x, "fp8_e4m3", scale))


@pytest.mark.parametrize("static_scale, exc, match", [
    (np.zeros(2, np.float32), ValueError, r"^static_scale: every scale must be finite and > 0; "
                                          r"static_scale\[0\] is 0\.0$"),
    (np.array([0.5, -1], np.float32), ValueError, r"static_scale\[1\] is -1\.0$"),
    (np.array([0.5, np.nan], np.float32), ValueError, r"static_scale\[1\] is nan$"),
    (np.array([np.inf, 1], np.float32), ValueError, r"static_scale\[0\] is inf$"),
    (np.array([1e-40, 1], np.float32), ValueError, r"^static_scale: every scale must be at "
                                                   r"least 1\.175e-38"),
    (None, ValueError, r"^static_scale: static scales need one scale per KV head, shape "
                       r"\(2,\), got None$"),
    (np.ones((3, 2), np.float32), ValueError, r"^static_scale: expected shape \(2,\) \(one per "
                                              r"KV head\) for rows of shape \(3, 2, 4\), got "
                                              r"\(3, 2\)$"),
    (0.5, ValueError, r"^static_scale: expected one static scale per KV head"),
    (["a", "b"], TypeError, r"^static_scale: expected real numbers"),
])
def test_quantize_rows_refuses_a_static_scale_quantize_would_refuse(static_scale, exc, match):
    # before: 0 saturated every code to 127, -1 flipped every sign, NaN stored zeros, None
    # was read as NaN and refused as "scale: ..." (an argument quantize_rows does not have)
    x = np.ones((3, 2, 4), np.float32)
    with pytest.raises(exc, match=match):
        quant.quantize_rows(x, "int8", "static", static_scale)


@pytest.mark.parametrize("x, match", [
    (np.ones((1, 2, 4), np.complex64), r"^x: expected real numbers \(a float or int dtype\), "
                                       r"got complex64"),
    (np.ones((1, 2, 4), bool), r"^x: expected real numbers \(a float or int dtype\), got bool"),
])
def test_quantize_rows_refuses_rows_that_are_no_real_numbers_under_static_scales(x, match):
    # before: complex rows lost their imaginary part with a warning, bool rows read as 1.0
    # (per-token scales refused both: only that path read x through real_values)
    with pytest.raises(TypeError, match=match):
        quant.quantize_rows(x, "int8", "static", np.ones(2, np.float32))


@pytest.mark.parametrize("call", [
    lambda c: quant.decode(c, "fp8_e4m3"),
    lambda c: quant.dequantize(c, "fp8_e4m3", np.ones(2, np.float32)),
])
def test_decode_names_a_torch_float8_tensor_and_its_view(call):
    # before: TypeError "Got unsupported ScalarType Float8_e4m3fn" from inside torch,
    # naming no argument
    fp8 = torch.ones((3, 2, 4)).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"^codes: expected dtype uint8 \(the codes of fp8_e4m3 "
                                        r"pages\), got torch\.float8_e4m3fn; those are the e4m3 "
                                        r"codes' bytes: pass codes\.view\(torch\.uint8\)$"):
        call(fp8)
    np.testing.assert_array_equal(call(fp8.view(torch.uint8)), np.ones((3, 2, 4)))


ONE_NUMBER = [0.5, np.float32(0.5), np.array(0.5, np.float32), torch.tensor(0.5), 1]
SPREAD = (r"expected one static scale per KV head, shape \(2,\), got the single number "
          r"(0\.5|1\.0); the same scale for every head is np\.full\(\(2,\), (0\.5|1\.0), "
          r"np\.float32\)$")


@pytest.mark.parametrize("one", ONE_NUMBER, ids=["float", "np.float32", "0-d", "torch", "int"])
def test_one_number_for_static_scales_is_told_how_to_spread_it(one):
    # before: a Python float was "expected float32 scales, got a float (float64); pass
    # np.array(..., np.float32)" (which then failed on its shape), a NumPy scalar "expected
    # shape (2,), got ()" and, in a run, "expected a NumPy or CuPy array, got float": vLLM's
    # k_scale is one float per layer, and none of them said how to spread it over the heads
    x, ones = np.ones((3, 2, 32), np.float32), np.ones(2, np.float32)
    calls = {
        "scale": [lambda: quant.quantize(x, "int8", one),
                  lambda: quant.dequantize(np.zeros(x.shape, np.int8), "int8", one)],
        "static_scale": [lambda: quant.quantize_rows(x, "int8", "static", one)],
        "k_scale": [lambda: PagedKVCache(4, 4, 2, 32, np.float16, device="cpu", kv_dtype="int8",
                                         k_scale=one, v_scale=ones),
                    lambda: write_kv_quant(x, x.copy(), np.zeros((2, 4, 2, 32), np.int8),
                                           np.zeros((2, 4, 2, 32), np.int8), np.array([0, 1, 2]),
                                           "int8", "static", one, ones)]
        + [lambda w=w: w.run(np.zeros((2, 4, 32), np.float16), np.zeros((3, 16, 2, 32), np.int8),
                             np.zeros((3, 16, 2, 32), np.int8), k_scale=one, v_scale=ones)
           for w in (planned_int8("decode"), planned_int8("prefill"))],
    }
    for name, refused in calls.items():
        for call in refused:
            with pytest.raises(ValueError, match=rf"^{name}: {SPREAD}"):
                call()


# -- the grid: quant against this file's references ------------------------------------------

def awkward_rows(rng, shape):
    """Rows of many sizes with an outlier channel, an all-zero row, ties, saturation, -0.0,
    subnormals and NaN."""
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 50, shape[:-1] + (1,))).astype(np.float32)
    x[..., 0, -1] *= 1000                       # an outlier channel: its row's scale is coarse
    x[0] = 0                                     # all-zero rows: scale 1
    if shape[0] > 1:
        x[1, 0] = -0.0                           # negative zeros
        x[1, -1, 0] = 3e-39                      # a subnormal: read as 0
    if shape[0] > 2:
        x[2, 0, 0] = np.nan                      # NaN: int8 0, e4m3 NaN; ignored by amax
    return x


@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 17), (4, 3, 3), (5, 2, 64)])
def test_per_token_codes_and_scales_match_this_files_reference(rng, kv_dtype, shape):
    x = awkward_rows(rng, shape)
    codes, scales = quant.quantize_rows(x, kv_dtype, "per_token")
    np.testing.assert_array_equal(scales, own_scales(x, kv_dtype))
    np.testing.assert_array_equal(codes.view(np.uint8),
                                  own_codes(x, kv_dtype, scales).view(np.uint8))
    np.testing.assert_array_equal(quant.per_token_scales(x, kv_dtype), scales)
    # the format's bound, per element, where the value is finite: int8 half a step, e4m3
    # half an ulp of 3 mantissa bits or half the subnormal step
    back = own_values(codes, kv_dtype, scales)
    step = scales.astype(np.float64)[..., None]
    bound = np.broadcast_to(step / 2, x.shape) if kv_dtype == "int8" else \
        np.abs(x) * 2.0 ** -4 + step * 2.0 ** -10
    live = ~np.isnan(x) & (np.abs(x) >= TINY)
    assert np.all(np.abs(back - x)[live] <= bound[live] * (1 + 1e-6))
    if kv_dtype == "fp8_e4m3" and shape[0] > 1:
        negative_zero = (x[1, 0] == 0) & np.signbit(x[1, 0])
        assert negative_zero.any() and np.all(codes[1, 0][negative_zero] == 0x80)   # its sign


@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_static_quantize_saturates_inf_and_keeps_nan_as_promised(kv_dtype):
    x = np.array([[[np.inf, -np.inf, 1e30, -1e30, np.nan, -0.0, 0.5, 1.5]]], np.float32)
    codes = quant.quantize(x, kv_dtype, np.ones(1, np.float32))
    if kv_dtype == "int8":   # saturated at +-127, NaN as 0, ties to even
        np.testing.assert_array_equal(codes[0, 0], [127, -127, 127, -127, 0, 0, 0, 2])
    else:                    # saturated at +-448 (0x7e / 0xfe), NaN stays NaN, -0 keeps sign
        np.testing.assert_array_equal(codes[0, 0, :4], [0x7E, 0xFE, 0x7E, 0xFE])
        assert np.isnan(quant.decode(codes[0, 0, 4:5], kv_dtype))[0]
        np.testing.assert_array_equal(codes[0, 0, 5:], [0x80, 0x30, 0x3C])
    np.testing.assert_array_equal(codes.view(np.uint8),
                                  own_codes(x, kv_dtype, np.ones(1)).view(np.uint8))


@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_a_row_holding_inf_reads_back_as_nan_under_per_token_scales(kv_dtype):
    # as the kernel computes it: the row's scale is inf, and code * inf is NaN
    x = np.array([[[np.inf, 1.0, -2.0, 0.0]], [[1.0, 2.0, 3.0, 4.0]]], np.float32)
    with np.errstate(all="ignore"):
        codes, scales = quant.quantize_rows(x, kv_dtype, "per_token")
        back = quant.dequantize_written(codes, kv_dtype, scales)
    assert scales[0, 0] == np.inf and np.all(np.isnan(back[0]))
    np.testing.assert_allclose(back[1], x[1], rtol=2 ** -4)   # the next row is its own


@pytest.mark.parametrize("scale", [
    [0.5, 0.25], (0.5, 0.25), np.array([0.5, 0.25]), np.array([0.5, 0.25], np.float16),
    torch.tensor([0.5, 0.25]), np.array([0.5, 0.25], np.float32)[::-1][::-1],
], ids=["list", "tuple", "float64", "float16", "torch", "view"])
def test_quantize_takes_one_scale_per_head_in_any_real_container(rng, scale):
    x = rng.standard_normal((3, 2, 8)).astype(np.float32)
    want = own_codes(x, "fp8_e4m3", np.array([0.5, 0.25]))
    np.testing.assert_array_equal(quant.quantize(x, "fp8_e4m3", scale), want)


@pytest.mark.parametrize("scale, exc, match", [
    (np.ones(3, np.float32), ValueError, r"^scale: expected shape \(2,\) \(static, one per KV "
                                         r"head\) or \(3, 2\) \(per token\) for values of "
                                         r"shape \(3, 2, 8\), got \(3,\)$"),
    ([0.5, 0.0], ValueError, r"^scale: every scale must be finite and > 0; scale\[1\] is 0\.0$"),
    ([0.5, -0.0], ValueError, r"scale\[1\] is -0\.0$"),
    ([True, True], TypeError, r"^scale: expected real numbers"),
    (None, TypeError, r"^scale: expected real numbers"),
])
def test_quantize_refuses_a_scale_it_cannot_read_per_head(rng, scale, exc, match):
    x = rng.standard_normal((3, 2, 8)).astype(np.float32)
    with pytest.raises(exc, match=match):
        quant.quantize(x, "int8", scale)
    with pytest.raises(exc, match=match):
        quant.dequantize(np.zeros(x.shape, np.int8), "int8", scale)


# -- the grid: PagedKVCache with compressed pages ------------------------------------------------

STATIC_K, STATIC_V = np.array([0.02, 0.5, 3.0], np.float32), np.array([0.1, 0.1, 0.01], np.float32)


def own_gather(rows, kv_dtype, scheme, static):
    scale = own_scales(rows, kv_dtype) if scheme == "per_token" else static
    return own_values(own_codes(rows, kv_dtype, scale), kv_dtype, scale)


def state(cache):
    return ([np.copy(a) for a in (cache.k_cache, cache.v_cache, cache.k_scale, cache.v_scale)],
            {s: (cache.block_table(s), cache.seq_len(s)) for s in cache.seq_ids},
            cache.allocator.num_free)


def same_state(a, b):
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a[0], b[0])) and \
        a[1:] == b[1:]


@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("page_size, dtype", [(1, np.float32), (4, np.float16), (5, np.float32)])
def test_cache_gathers_what_this_file_quantizes_shared_pages_included(rng, kv_dtype, scheme,
                                                                       page_size, dtype):
    cache = PagedKVCache(12, page_size, 3, 16, dtype, device="cpu", kv_dtype=kv_dtype,
                         scale_scheme=scheme, k_scale=STATIC_K, v_scale=STATIC_V)
    total = page_size + 1
    k, v = (awkward_rows(rng, (total + 1, 3, 16)) for _ in range(2))
    k, v = k.astype(dtype).astype(np.float32), v.astype(dtype).astype(np.float32)
    parent = cache.add_sequence()
    ends = sorted({0, 1, max(1, page_size - 1), page_size, total})   # lengths 1, page +- 1
    for lo, hi in zip(ends, ends[1:]):
        cache.append(parent, k[lo:hi], v[lo:hi])
        got_k, got_v = cache.gather(parent)
        for got, rows, static in ((got_k, k, STATIC_K), (got_v, v, STATIC_V)):
            want = own_gather(rows[:hi], kv_dtype, scheme, static).astype(dtype)
            np.testing.assert_array_equal(got, want)
    before = cache.gather(parent)
    child = cache.fork_sequence(parent)           # the partly filled last page is shared
    cache.append(child, k[total:], v[total:])     # copy on write, per-token scales too
    for a, b in zip(cache.gather(parent), before):
        np.testing.assert_array_equal(a, b)
    for got, rows, static in zip(cache.gather(child), (k, v), (STATIC_K, STATIC_V)):
        want = own_gather(rows, kv_dtype, scheme, static).astype(dtype)
        np.testing.assert_array_equal(got, want)
    full = total // page_size                     # full pages stay shared; a partly
    assert cache.block_table(child)[:full] == cache.block_table(parent)[:full]   # filled one
    assert set(cache.block_table(child)[full:]).isdisjoint(cache.block_table(parent))  # copied


@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_cache_refuses_bad_appends_and_changes_nothing(rng, kv_dtype, scheme):
    cache = PagedKVCache(3, 4, 3, 16, np.float32, device="cpu", kv_dtype=kv_dtype,
                         scale_scheme=scheme, k_scale=STATIC_K, v_scale=STATIC_V)
    a = cache.add_sequence()
    rows = rng.standard_normal((6, 3, 16)).astype(np.float32)
    cache.append(a, rows, rows)
    b = cache.fork_sequence(a)                    # shares a's half-full last page
    before = state(cache)
    ok = rows[:1]
    for call, exc, match in [
        (lambda: cache.append(b, ok.astype(np.int32), ok), TypeError, r"^k: expected dtype"),
        (lambda: cache.append(b, ok, ok.astype(complex)), TypeError, r"^v: expected dtype"),
        (lambda: cache.append(b, ok, ok[:, :2]), ValueError, r"^v: expected shape"),
        (lambda: cache.append(b, ok, rows[:2]), ValueError, r"^v: expected the shape of k"),
        (lambda: cache.append(b, rows, rows), Exception, r"out of KV-cache pages"),
        (lambda: cache.append(7, ok, ok), KeyError, r"seq_id: no live sequence 7"),
    ]:
        with pytest.raises(exc, match=match):
            call()
        assert same_state(state(cache), before)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(k_scale=np.ones((1, 3), np.float32)), ValueError, r"^k_scale: expected shape "
                                                            r"\(3,\), got \(1, 3\)$"),
    (dict(k_scale=[0.5] * 3), TypeError, r"^k_scale: expected float32 scales, got a list"),
    (dict(v_scale=np.array([0.5, 0.5, -0.0], np.float32)), ValueError,
     r"^v_scale: every scale must be finite and > 0; v_scale\[2\] is -0\.0$"),
    (dict(v_scale=np.array([0.5, 0.5, 1e36], np.float32)), ValueError, r"^v_scale: expected "
                                                                        r"scales <= "),
    (dict(kv_dtype="fp8_e5m2"), ValueError, r"^kv_dtype: expected one of"),
    (dict(scale_scheme="per_tensor"), ValueError, r"^scale_scheme: expected one of"),
    (dict(dtype="bfloat16"), ValueError, r"^kv_dtype: compressed pages are quantized from"),
])
def test_cache_refuses_scales_and_formats_by_name(kwargs, exc, match):
    args = dict(dtype=np.float16, kv_dtype="fp8", k_scale=STATIC_K, v_scale=STATIC_V)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        PagedKVCache(4, 4, 3, 16, device="cpu", **args)


def test_cache_takes_static_scales_as_a_torch_tensor_and_keeps_a_copy(rng):
    scales = torch.from_numpy(STATIC_K.copy())
    cache = PagedKVCache(4, 4, 3, 16, np.float32, device="cpu", kv_dtype="int8",
                         k_scale=scales, v_scale=STATIC_V)
    scales[0] = float("nan")                      # changed after: the cache's copy holds
    seq = cache.add_sequence()
    rows = rng.standard_normal((2, 3, 16)).astype(np.float32)
    cache.append(seq, rows, rows)
    np.testing.assert_array_equal(cache.gather(seq)[0], own_gather(rows, "int8", "static",
                                                                   STATIC_K).astype(np.float32))
