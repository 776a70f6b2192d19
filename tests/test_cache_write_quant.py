"""The quantizing cache write against the NumPy reference (quant.py), on the CPU executor."""
import numpy as np
import pytest

from pagedattn_lab import quant
from pagedattn_lab.cache_write import slot_mapping
from pagedattn_lab.cache_write_quant import scale_shape, write_kv_quant


def _setup(rng, kv_dtype, scheme, n_pages=7, page_size=5, heads=3, dim=40, src=np.float32):
    fmt = quant.kv_format(kv_dtype)
    shape = (n_pages, page_size, heads, dim)
    k_cache = rng.integers(0, 256, shape).astype(np.uint8).view(fmt.storage)
    v_cache = rng.integers(0, 256, shape).astype(np.uint8).view(fmt.storage)
    sshape = scale_shape(scheme, n_pages, page_size, heads)
    k_scale = rng.uniform(0.01, 0.2, sshape).astype(np.float32)
    v_scale = rng.uniform(0.01, 0.2, sshape).astype(np.float32)
    return k_cache, v_cache, k_scale, v_scale


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("src", [np.float32, np.float16])
def test_write_matches_the_reference_bit_for_bit(rng, kv_dtype, scheme, src):
    k_cache, v_cache, k_scale, v_scale = _setup(rng, kv_dtype, scheme)
    tables = np.array([[3, 0, 6], [5, 1, -1]], np.int32)
    lens, q_lens = np.array([13, 7], np.int32), np.array([9, 7], np.int32)
    slots = slot_mapping(tables, lens, q_lens, 5)
    slots[4] = -1                                         # a padding row is skipped
    n = slots.size
    k = (rng.standard_normal((n, 3, 40)) * rng.uniform(0.1, 40, (n, 3, 1))).astype(src)
    v = (rng.standard_normal((n, 3, 40)) * 3).astype(src)
    k[2, 1, 7] = 1e4                                      # saturates under static scales
    k[3, 0] = 0                                           # an all-zero row: scale 1
    v[5, 2, 1] = np.nan
    before = [a.copy() for a in (k_cache, v_cache, k_scale, v_scale)]
    write_kv_quant(k, v, k_cache, v_cache, slots, kv_dtype, scheme, k_scale, v_scale)
    want = [a.copy() for a in before]
    live = slots >= 0
    flat = (-1, 3, 40)
    for rows, cache, scale in ((k, want[0], want[2]), (v, want[1], want[3])):
        if scheme == "per_token":
            codes, s = quant.quantize_rows(rows[live], kv_dtype, "per_token")
            scale.reshape(-1, 3)[slots[live]] = s
        else:
            codes, _ = quant.quantize_rows(rows[live], kv_dtype, "static", scale)
        cache.reshape(flat)[slots[live]] = codes
    for got, exp, name in zip((k_cache, v_cache, k_scale, v_scale), want,
                              ("k_cache", "v_cache", "k_scale", "v_scale")):
        np.testing.assert_array_equal(got.view(np.uint8) if got.dtype != np.float32 else got,
                                      exp.view(np.uint8) if exp.dtype != np.float32 else exp,
                                      err_msg=name)
    assert not np.array_equal(k_cache, before[0])         # the test can see a write


def _scales_inside_k_cache(args):
    """Static scales that are the first bytes of k_cache (slot 0, which the write fills):
    accepted, the kernel read them as it overwrote them (0.05 came back as 4e-37, 3e38)."""
    scales = args["k_cache"].reshape(-1)[:12].view(np.float32)
    scales[...] = 0.05
    args.update(k_scale=scales)


@pytest.mark.parametrize("change, match", [
    (_scales_inside_k_cache, "^k_cache: shares memory with k_scale"),
    (lambda a: a.update(k_scale=None), "k_scale: a quantized cache needs"),
    (lambda a: a.update(v_scale=np.ones(4, np.float32)), r"v_scale: expected shape \(3,\)"),
    (lambda a: a.update(k_scale=np.array([1, np.inf, 1], np.float32)), "finite"),
    (lambda a: a.update(v_scale=np.array([1, 0, 1], np.float32)), "> 0"),
    (lambda a: a.update(k_cache=a["k_cache"].view(np.int8)), "k_cache: expected dtype uint8"),
    (lambda a: a.update(kv_dtype="fp16"), "kv_dtype"),
    (lambda a: a.update(scheme="per_tensor"), "scale_scheme"),
    (lambda a: a.update(slots=np.array([0, 999], np.int64)), "out of range"),
])
def test_bad_input_is_refused_and_nothing_changes(rng, change, match):
    k_cache, v_cache, k_scale, v_scale = _setup(rng, "fp8_e4m3", "static")
    args = dict(k=rng.standard_normal((2, 3, 40)).astype(np.float32), k_cache=k_cache,
                v_cache=v_cache, k_scale=k_scale, v_scale=v_scale, kv_dtype="fp8_e4m3",
                scheme="static", slots=np.array([0, 1], np.int64))
    args["v"] = args["k"].copy()
    change(args)
    before = (k_cache.copy(), v_cache.copy())
    with pytest.raises((ValueError, TypeError), match=match):
        write_kv_quant(args["k"], args["v"], args["k_cache"], args["v_cache"], args["slots"],
                       args["kv_dtype"], args["scheme"], args["k_scale"], args["v_scale"])
    np.testing.assert_array_equal(k_cache, before[0])
    np.testing.assert_array_equal(v_cache, before[1])


@pytest.mark.parametrize("scheme, change, match", [
    # static scales are read: checked like any quantized cache's scales (quant.check_scale)
    ("static", lambda a: a.update(k_scale=a["k_scale"].astype(np.float64)),
     "^k_scale: expected float32 scales, got float64"),
    ("static", lambda a: a.update(v_scale=np.array([1, np.nan, 1], np.float32)),
     r"^v_scale: .*finite.*v_scale\[1\] is nan"),
    ("static", lambda a: a.update(k_scale=np.full(3, 1e37, np.float32)),
     r"^k_scale: expected scales <= .*448.*k_scale\[0\] is"),
    # per-token scales are written: an array to write into, of the pages' layout, float32
    ("per_token", lambda a: a.update(v_scale=None),
     r"^v_scale: per-token scales need an array of shape \(7, 5, 3\) to write them into, "
     "got None"),
    ("per_token", lambda a: a.update(k_scale=np.ones(3, np.float32)),
     r"^k_scale: expected shape \(7, 5, 3\), got \(3,\)"),
    ("per_token", lambda a: a.update(v_scale=a["v_scale"].astype(np.float16)),
     "^v_scale: expected dtype float32, got float16"),
    ("per_token", lambda a: a.update(k_scale=a["k_scale"].tolist()),
     "^k_scale: expected a NumPy or CuPy array, got list"),
])
def test_bad_scales_are_refused_naming_the_argument_and_nothing_changes(rng, scheme, change,
                                                                       match):
    k_cache, v_cache, k_scale, v_scale = _setup(rng, "fp8_e4m3", scheme)
    args = dict(k_scale=k_scale, v_scale=v_scale)
    change(args)
    k = rng.standard_normal((2, 3, 40)).astype(np.float32)
    before = [a.copy() for a in (k_cache, v_cache, k_scale, v_scale)]
    with pytest.raises((ValueError, TypeError), match=match):
        write_kv_quant(k, k.copy(), k_cache, v_cache, np.array([0, 1], np.int64), "fp8_e4m3",
                       scheme, args["k_scale"], args["v_scale"])
    for got, want in zip((k_cache, v_cache, k_scale, v_scale), before):
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
def test_write_rounds_ties_saturates_and_keeps_subnormals_like_the_reference(kv_dtype):
    """Static scale 1: the codes of exact ties, values past the range, NaN, inf and e4m3
    subnormals are the reference's (random data almost never hits a tie)."""
    from tests.test_quant import e4m3_value
    finite = np.unique(e4m3_value(np.arange(256))[np.isfinite(e4m3_value(np.arange(256)))])
    edges = [0.5, 1.5, 2.5, -2.5, 126.5, 127.5, 200.0, 449.0, 464.0, 1e6, np.inf, -np.inf,
             np.nan, 2.0 ** -10, 3 * 2.0 ** -10, -0.0]
    x = np.concatenate([finite, (finite[:-1] + finite[1:]) / 2, edges]).astype(np.float32)
    dim = 32 * -(-x.size // 32)
    row = np.zeros(dim, np.float32)
    row[: x.size] = x
    k = row.reshape(1, 1, dim)
    fmt = quant.kv_format(kv_dtype)
    k_cache = np.zeros((1, 1, 1, dim), fmt.storage)
    v_cache = k_cache.copy()
    one = np.ones(1, np.float32)
    write_kv_quant(k, k.copy(), k_cache, v_cache, np.zeros(1, np.int64), kv_dtype, "static",
                   one, one.copy())
    np.testing.assert_array_equal(k_cache.reshape(-1).view(np.uint8),
                                  quant.encode(row, kv_dtype).view(np.uint8))


@pytest.mark.gpu
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
def test_write_on_the_gpu_matches_the_reference(rng, kv_dtype, scheme):
    """NVRTC's build of the same source: bit for bit against quant.py (float32 division and
    rintf are exact IEEE operations on the GPU too)."""
    import cupy
    k_cache, v_cache, k_scale, v_scale = _setup(rng, kv_dtype, scheme, n_pages=40, heads=8,
                                                dim=128)
    slots = rng.permutation(40 * 5)[:150].astype(np.int64)
    k = (rng.standard_normal((150, 8, 128)) * rng.uniform(0.1, 40, (150, 8, 1))).astype(
        np.float16)
    dev = [cupy.asarray(a) for a in (k, k, k_cache, v_cache, slots, k_scale, v_scale)]
    write_kv_quant(*dev[:5], kv_dtype, scheme, dev[5], dev[6])
    codes, scales = quant.quantize_rows(k, kv_dtype, scheme, k_scale)
    got = dev[2].get().reshape(-1, 8, 128)[slots]
    np.testing.assert_array_equal(got.view(np.uint8), codes.view(np.uint8))
    if scheme == "per_token":
        np.testing.assert_array_equal(dev[5].get().reshape(-1, 8)[slots], scales)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
def test_tiny_rows_on_the_gpu_get_a_normal_scale_and_flushed_codes(kv_dtype):
    """Rows whose amax / qmax is below the smallest normal float32 (1e-37 / 448), and rows of
    subnormal values (flushed to 0 by -ftz): per-token scales and codes are the reference's
    bit for bit, with no scale of 0 (x / 0 saturates, 0 / 0 is NaN)."""
    import cupy
    k = np.zeros((4, 1, 32), np.float32)
    k[:, 0, :2] = [[1e-37, -3e-38], [1e-40, 2e-41], [2e-36, 1e-39], [5e-38, 0.0]]
    fmt = quant.kv_format(kv_dtype)
    k_cache = cupy.zeros((1, 4, 1, 32), fmt.storage)
    scales = cupy.zeros((1, 4, 1), np.float32)
    write_kv_quant(cupy.asarray(k), cupy.asarray(k), k_cache, k_cache.copy(),
                   cupy.arange(4, dtype=np.int64), kv_dtype, "per_token", scales, scales.copy())
    codes, want = quant.quantize_rows(k, kv_dtype, "per_token")
    np.testing.assert_array_equal(scales.get().reshape(4, 1), want)
    assert (want > 0).all()
    np.testing.assert_array_equal(k_cache.get().reshape(4, 1, 32).view(np.uint8),
                                  codes.view(np.uint8))
