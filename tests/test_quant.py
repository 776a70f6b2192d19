"""Formats and scales of compressed KV pages (pagedattn_lab.quant) against independent code."""
import ml_dtypes
import numpy as np
import pytest

from pagedattn_lab import quant


def e4m3_by_bits(x):
    """An independent float32 -> e4m3fn encoder (integer bit manipulation, the kernels'
    algorithm): round to nearest even, saturate at +-448, NaN -> 0x7f with the sign."""
    x = np.asarray(x, np.float32)
    u = x.view(np.uint32).astype(np.int64)
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    out = np.empty(x.shape, np.int64)
    nan = a > 0x7F800000
    big = ~nan & (a >= 0x43E00000)                      # >= 448 (and inf)
    sub = a < 0x3C800000                                # < 2^-6
    norm = ~(nan | big | sub)
    out[nan], out[big] = 0x7F, 0x7E
    out[sub] = np.rint(np.abs(x[sub]).astype(np.float64) * 512).astype(np.int64)
    m = a[norm] & 0x7FFFFF
    code = (((a[norm] >> 23) - 120) << 3) | (m >> 20)
    rem = m & 0xFFFFF
    code += (rem > 0x80000) | ((rem == 0x80000) & (code & 1 == 1))
    out[norm] = code
    return (out | sign).astype(np.uint8)


def e4m3_value(code):
    """An independent e4m3fn decoder from the bit fields."""
    c = np.asarray(code, np.int64)
    s = np.where(c & 0x80, -1.0, 1.0)
    e, m = (c >> 3) & 0xF, c & 7
    val = np.where(e == 0, m * 2.0 ** -9, (1 + m / 8) * 2.0 ** (e - 7))
    return np.where((e == 15) & (m == 7), np.nan, s * val)


def test_every_e4m3_code_decodes_to_its_bit_fields():
    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(quant.decode(codes, "fp8_e4m3"), e4m3_value(codes))


def test_e4m3_encoding_matches_bits_including_ties_saturation_nan_and_subnormals(rng):
    finite = e4m3_value(np.arange(256))
    finite = np.unique(finite[np.isfinite(finite)])
    mids = (finite[:-1] + finite[1:]) / 2               # exact ties: round to even
    special = [0.0, -0.0, 448.0, 449.0, 463.9, 464.0, 1e6, np.inf, -np.inf, np.nan, -np.nan,
               2.0 ** -9, 2.0 ** -10, 1.5 * 2.0 ** -10, 2.0 ** -11, 3 * 2.0 ** -10, 1e-30,
               2.0 ** -6 - 2.0 ** -12]
    x = np.concatenate([finite, mids, special, rng.standard_normal(4000) * 50,
                        rng.standard_normal(1000) * 1e-3]).astype(np.float32)
    got = quant.encode(x, "fp8_e4m3")
    np.testing.assert_array_equal(got, e4m3_by_bits(x))
    assert quant.encode(np.float32(1e6), "fp8_e4m3") == 0x7E           # saturates, not NaN
    assert quant.encode(np.float32(-np.inf), "fp8_e4m3") == 0xFE
    assert np.isnan(quant.decode(quant.encode(np.float32(np.nan), "fp8_e4m3"), "fp8_e4m3"))
    assert quant.encode(np.float32(2.0 ** -10), "fp8_e4m3") == 0        # tie to even: 0
    assert quant.encode(np.float32(3 * 2.0 ** -10), "fp8_e4m3") == 2    # tie to even: 2
    # in range, the same as ml_dtypes' own rounding
    inside = x[np.abs(x) < 448]
    np.testing.assert_array_equal(quant.encode(inside, "fp8_e4m3"),
                                  inside.astype(ml_dtypes.float8_e4m3fn).view(np.uint8))


def test_int8_rounds_half_to_even_saturates_and_stores_nan_as_zero():
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 127.4, 127.6, 1e9, -1e9, np.inf, -np.inf,
                  np.nan], np.float32)
    want = [0, 2, 2, 0, -2, 126, 127, 127, 127, -127, 127, -127, 0]
    np.testing.assert_array_equal(quant.encode(x, "int8"), np.array(want, np.int8))


@pytest.mark.parametrize("kv_dtype, rel", [("int8", 0.5 / 127), ("fp8_e4m3", 2.0 ** -4)])
def test_round_trip_error_is_within_the_format_bound(rng, kv_dtype, rel):
    """|x - dequant(quant(x))| <= amax * 0.5/127 (int8: half a step of amax/127) or
    <= |x| * 2^-4 + scale * 2^-10 (e4m3: half an ulp of a 3-bit mantissa, plus half the
    subnormal step), per (token, head) with per-token scales."""
    x = rng.standard_normal((37, 3, 64)).astype(np.float32) * rng.uniform(0.01, 30, (37, 3, 1))
    codes, scales = quant.quantize_rows(x, kv_dtype, "per_token")
    back = quant.dequantize(codes, kv_dtype, scales)
    amax = np.abs(x).max(-1, keepdims=True)
    if kv_dtype == "int8":
        bound = amax * rel * (1 + 1e-6)
    else:
        bound = np.abs(x) * rel + scales[..., None] * 2.0 ** -10
    assert np.all(np.abs(back - x) <= bound)
    assert np.allclose(np.abs(back).max(-1), amax[..., 0], rtol=1e-6)   # amax is exact


def test_per_token_scales_come_from_each_rows_head_dim():
    x = np.zeros((2, 2, 4), np.float32)
    x[0, 1] = [1, -254, 3, 0]
    x[1, 0, 2] = np.nan
    s = quant.per_token_scales(x, "int8")
    np.testing.assert_array_equal(s, np.array([[1, 2], [1, 1]], np.float32))
    assert quant.static_scales(x, "int8").tolist() == [1.0, 2.0]


@pytest.mark.parametrize("scale, match", [
    (None, "needs scales"), (np.ones(3, np.float32), r"shape \(2,\)"),
    (np.ones(2, np.float64), "float32"), (np.array([1, np.inf], np.float32), "finite"),
    (np.array([1, 0], np.float32), r"k_scale\[1\] is 0.0"), (np.array([np.nan, 1], np.float32), "> 0"),
    ([1.0, 1.0], r"got a list \(float64\)"), (np.ones(2, ">f4"), "non-native byte order")])
def test_bad_scales_are_refused_by_name(scale, match):
    with pytest.raises((ValueError, TypeError), match=match):
        quant.check_scale(scale, "k_scale", (2,))


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="kv_dtype"):
        quant.kv_format("fp4")
    with pytest.raises(ValueError, match="scale_scheme"):
        quant.check_scheme("per_tensor")
