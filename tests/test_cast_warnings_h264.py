"""Values past float32's range (a float64 1e39) given to the quantizers and the cache: each
argument does what its docstring says, with no NumPy "overflow encountered in cast" warning
(which names no argument) first. Values saturate or are stored as inf, silently, as an inf
does; a scale is refused by name, as an inf scale is."""
import warnings

import ml_dtypes
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import quant
from pagedattn_lab.quant_accuracy import round_trip

BIG = 1e39
FORMATS = ["int8", "fp8_e4m3"]


@pytest.fixture(autouse=True)
def warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def rows(value, shape=(2, 2, 4)):
    """float64 rows [n, kv_heads, dim] holding `value` and its negative among ordinary ones."""
    x = np.linspace(-3.0, 3.0, int(np.prod(shape))).reshape(shape)
    x[0, 0, 1], x[1, 1, 3] = value, -value
    return x


def same(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_quantize_and_encode_saturate_an_x_past_float32_as_they_do_inf(kv_dtype):
    scale = np.array([0.5, 2.0], np.float32)
    same(quant.quantize(rows(BIG), kv_dtype, scale), quant.quantize(rows(np.inf), kv_dtype, scale))
    same(quant.encode(rows(BIG), kv_dtype), quant.encode(rows(np.inf), kv_dtype))
    codes = quant.encode(np.array([BIG, -BIG]), kv_dtype)
    largest = {"int8": [127, -127], "fp8_e4m3": [0x7E, 0xFE]}[kv_dtype]   # +-127, +-448
    same(codes, np.array(largest, codes.dtype))


@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_quantize_rows_takes_an_x_past_float32_as_inf(kv_dtype, scheme):
    static = np.array([0.5, 2.0], np.float32) if scheme == "static" else None
    got = quant.quantize_rows(rows(BIG), kv_dtype, scheme, static)
    want = quant.quantize_rows(rows(np.inf), kv_dtype, scheme, static)
    for g, w in zip(got, want):
        same(g.view(np.uint8), w.view(np.uint8))


@pytest.mark.parametrize("call, name", [
    (lambda s: quant.quantize(np.ones((2, 2, 4)), "int8", s), "scale"),
    (lambda s: quant.dequantize(np.ones((2, 2, 4), np.int8), "int8", s), "scale"),
    (lambda s: quant.quantize_rows(np.ones((2, 2, 4)), "fp8_e4m3", "static", s), "static_scale"),
], ids=["quantize", "dequantize", "quantize_rows"])
def test_a_scale_past_float32_is_refused_by_name_as_it_was_given(call, name):
    with pytest.raises(ValueError, match=rf"^{name}: every scale must be finite and > 0; "
                                         rf"{name}\[1\] is 1e\+39, past float32's range"):
        call(np.array([1.0, BIG]))
    with pytest.raises(ValueError, match=rf"^{name}: every scale must be finite and > 0; "
                                         rf"{name}\[1\] is inf$"):
        call(np.array([1.0, np.inf]))


def test_dequantize_written_takes_a_scale_past_float32_as_inf():
    codes = np.ones((2, 2, 4), np.int8)
    same(quant.dequantize_written(codes, "int8", np.array([1.0, BIG])),
         quant.dequantize_written(codes, "int8", np.array([1.0, np.inf], np.float32)))


@pytest.mark.parametrize("dtype, kv_dtype, scheme", [
    (np.float32, None, "static"), (np.float16, None, "static"),
    (ml_dtypes.bfloat16, None, "static"), (np.float32, "int8", "static"),
    (np.float16, "fp8_e4m3", "static"), (np.float32, "int8", "per_token")])
def test_append_stores_a_row_past_its_dtype_as_an_inf_row(dtype, kv_dtype, scheme):
    ones = np.ones(2, np.float32) if scheme == "static" else None

    def stored(value):
        cache = pl.PagedKVCache(2, 4, 2, 4, dtype=dtype, device="cpu", kv_dtype=kv_dtype,
                                scale_scheme=scheme, k_scale=ones, v_scale=ones)
        seq = cache.add_sequence()
        cache.append(seq, rows(value), -rows(value))
        return cache

    big, inf = stored(BIG), stored(np.inf)
    for name in ("k_cache", "v_cache", "k_scale", "v_scale"):
        if getattr(inf, name) is not None:
            same(getattr(big, name).view(np.uint8), getattr(inf, name).view(np.uint8))


def test_round_trip_float16_keeps_a_value_past_its_range_as_inf():
    same(round_trip(np.array([1e5, -1e5, 1.0], np.float32), "float16", "-"),
         np.array([np.inf, -np.inf, 1.0], np.float32))


def test_gather_reads_a_float16_value_past_its_range_back_as_inf():
    """code 127 x scale 1000 is past float16's range: inf, as append stores such a row."""
    scale = np.full(1, 1000.0, np.float32)
    cache = pl.PagedKVCache(2, 4, 1, 4, dtype=np.float16, device="cpu", kv_dtype="int8",
                            k_scale=scale, v_scale=scale)
    seq = cache.add_sequence()
    x = np.array([[[1e6, -1e6, 1000.0, 0.0]]], np.float32)
    cache.append(seq, x, x)
    for got in cache.gather(seq):
        same(got, np.array([[[np.inf, -np.inf, 1000.0, 0.0]]], np.float16))


@pytest.mark.parametrize("kv_dtype", FORMATS)
@pytest.mark.parametrize("value", [np.inf, BIG])
def test_gather_reads_a_per_token_row_past_float32_back_as_nan(kv_dtype, value):
    """Its per-token scale is inf: every code x inf (0 x inf among them) reads back as NaN."""
    cache = pl.PagedKVCache(2, 4, 2, 4, device="cpu", kv_dtype=kv_dtype,
                            scale_scheme="per_token")
    seq = cache.add_sequence()
    x = rows(value)
    cache.append(seq, x, x)
    for got in cache.gather(seq):
        assert np.isnan(got[0, 0]).all() and np.isnan(got[1, 1]).all()
        assert np.isfinite(got[0, 1]).all() and np.isfinite(got[1, 0]).all()
