"""One rule where the public API applied two (hunt 26, from tests/test_outsider_grid_hunt21.py's
leftovers; each test failed before its fix), on the CPU executor:
- the two wrappers' `plan` read `dtype` by two lists: the prefill one took "bf16", which the
  decode one (and PagedKVCache) refused, and it refused torch dtypes the decode one takes;
- gather_kv / gather_kv_reference refused bfloat16 caches although the gather copies 16-bit
  words whatever they mean and decode takes such pages;
- PagedKVCache.append took float16/32/64 rows into any cache but bfloat16 rows only into a
  bfloat16 cache (into float32 they are even exact);
- page_offset(6, 0) raised a bare ZeroDivisionError, virtual_page(-1, 4) returned -1;
- reference_prefill_packed returned an empty result for q of zero heads, which
  reference_decode refuses;
- LlamaModel read "float" as NumPy does (float64, refused) where every other `dtype` reads
  float32;
- PagedKVCache took page_size 2**31, past the int32 that the plans, write_kv and to_csr cap.
"""
import ml_dtypes
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.prefill_wrapper import element_type

BF16 = np.dtype(ml_dtypes.bfloat16)
TABLES = np.array([[0, 1], [2, -1]], np.int32)
LENS = np.array([5, 3], np.int32)
INDPTR = np.array([0, 2, 3], np.int32)


def _plan(which, dtype):
    if which == "decode":
        return pl.BatchDecodeWrapper().plan(TABLES, LENS, 4, 2, 32, 4, dtype)
    return pl.BatchPrefillWrapper().plan(INDPTR, TABLES, LENS, 4, 2, 32, 4, dtype)


# ---- 1. dtype spellings ----------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["float16", "half", "f2", np.float16, "bfloat16", BF16,
                                      "torch.float16", "torch.bfloat16"])
def test_both_plans_read_the_same_spellings(spelling):
    if str(spelling).startswith("torch."):
        spelling = getattr(pytest.importorskip("torch"), spelling.split(".")[1])
    expected = "bfloat16" if "bfloat16" in str(spelling) or spelling == BF16 else "float16"
    assert _plan("decode", spelling).dtype == expected
    assert element_type(spelling)[1].name == expected   # what BatchPrefillWrapper.plan reads


@pytest.mark.parametrize("which", ["decode", "prefill"])
@pytest.mark.parametrize("spelling", ["bfloat", "fp8"])
def test_both_plans_refuse_spellings_they_do_not_read_listing_the_accepted_ones(which,
                                                                                spelling):
    """The decode plan refused a spelling with a ValueError listing none."""
    names = "float32, float16 or bfloat16" if which == "decode" else "float16 or bfloat16"
    with pytest.raises(TypeError, match=rf"^dtype: expected {names}, got '{spelling}'; "
                                        r"accepted spellings: .*'float16' or 'half' or 'fp16', "
                                        r"'bfloat16' or 'bf16', or a NumPy, ml_dtypes or torch "
                                        r"dtype$"):
        _plan(which, spelling)


@pytest.mark.parametrize("which", ["decode", "prefill"])
def test_both_plans_take_the_short_names_the_prefill_plan_took(which):
    """The prefill plan took "bf16", the decode plan and the cache refused it: all take the
    short names now ("fp32" where float32 is allowed)."""
    assert _plan(which, "bf16").dtype == "bfloat16"
    assert _plan(which, "fp16").dtype == "float16"


def test_the_cache_reads_the_plans_spellings():
    assert pl.PagedKVCache(4, 4, 2, 8, dtype="half", device="cpu").dtype == np.float16
    assert pl.PagedKVCache(4, 4, 2, 8, dtype="float", device="cpu").dtype == np.float32
    assert pl.PagedKVCache(4, 4, 2, 8, dtype="fp32", device="cpu").dtype == np.float32
    assert pl.PagedKVCache(4, 4, 2, 8, dtype="bf16", device="cpu").dtype == BF16
    with pytest.raises(TypeError, match=r"^dtype: expected float32, float16 or bfloat16, got "
                                        r"'bfloat'; accepted spellings: 'float32' or 'float' or "
                                        r"'fp32'"):
        pl.PagedKVCache(4, 4, 2, 8, dtype="bfloat", device="cpu")


def test_the_model_reads_the_same_spellings():
    """LlamaModel read dtype as NumPy does: "float" was float64, refused, and torch.float16
    was refused; every other `dtype` reads them as float32 and float16."""
    from pagedattn_lab.engine import LlamaModel, random_weights, tiny_config
    weights = random_weights(tiny_config(), seed=0)
    assert LlamaModel(tiny_config(), weights, dtype="float", device="cpu").dtype == np.float32
    assert LlamaModel(tiny_config(), weights, dtype="half", device="cpu").dtype == np.float16
    with pytest.raises(TypeError, match=r"^dtype: expected float32 or float16, got bfloat16$"):
        LlamaModel(tiny_config(), weights, dtype="bfloat16", device="cpu")


# ---- 2. gather of bfloat16 pages -------------------------------------------------------------

@pytest.mark.parametrize("num_kv_heads, head_dim", [(2, 8), (1, 3)],
                         ids=["32-bit-words", "odd-row-16-bit-words"])
@pytest.mark.parametrize("gather", [pl.gather_kv, pl.gather_kv_reference])
def test_gather_copies_bfloat16_pages_bit_for_bit(rng, gather, num_kv_heads, head_dim):
    shape = (5, 3, num_kv_heads, head_dim)
    k_cache, v_cache = (rng.standard_normal(shape).astype(BF16) for _ in range(2))
    row = np.array([4, 0, 2], np.int32)
    slots = np.array([12, 13, 14, 0, 1, 2, 6])   # 7 tokens: pages 4, 0 and 2 of 3 slots
    k, v = gather(k_cache, v_cache, row, 7)
    for got, cache in ((k, k_cache), (v, v_cache)):
        assert got.dtype == BF16 and got.shape == (7, num_kv_heads, head_dim)
        want = cache.reshape(15, num_kv_heads, head_dim)[slots]
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_gather_takes_torch_bfloat16_tensors_and_returns_tensors(rng):
    torch = pytest.importorskip("torch")
    k_cache, v_cache = (torch.from_numpy(rng.standard_normal((4, 2, 2, 8)).astype(np.float32))
                        .to(torch.bfloat16) for _ in range(2))
    row = np.array([3, 1], np.int32)
    k, v = pl.gather_kv(k_cache, v_cache, row, 3)
    assert k.dtype == torch.bfloat16 and torch.equal(k, k_cache[[3, 3, 1], [0, 1, 0]])
    assert torch.equal(v, v_cache[[3, 3, 1], [0, 1, 0]])


def test_gather_still_refuses_uint16_bits_on_the_cpu():
    """On the CPU bfloat16 is ml_dtypes' (as decode takes it): uint16 NumPy arrays are integers."""
    bits = np.zeros((2, 2, 1, 8), np.uint16)
    with pytest.raises(TypeError, match=r"^k_cache: expected dtype float32 or float16 or "
                                        r"bfloat16, got uint16 \(bfloat16 bits\? .*"
                                        r"x\.view\(ml_dtypes\.bfloat16\)\)$"):
        pl.gather_kv(bits, bits, np.array([0], np.int32), 1)


# ---- 3. rows into a cache --------------------------------------------------------------------

@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16, "bfloat16"])
@pytest.mark.parametrize("rows_dtype", [np.float16, np.float32, np.float64, BF16])
def test_append_rounds_rows_of_any_float_type_into_any_cache(rng, cache_dtype, rows_dtype):
    """One rule: each value rounded once to the cache's dtype, to nearest even (exact where the
    cache's type holds it). bfloat16 rows were refused by float32 and float16 caches."""
    cache = pl.PagedKVCache(4, 4, 2, 8, dtype=cache_dtype, device="cpu")
    seq = cache.add_sequence()
    k, v = (rng.standard_normal((5, 2, 8)).astype(rows_dtype) for _ in range(2))
    cache.append(seq, k, v)
    got_k, got_v = cache.gather(seq)
    for got, rows in ((got_k, k), (got_v, v)):
        assert got.dtype == cache.dtype
        assert np.array_equal(got, rows.astype(cache.dtype))   # ml_dtypes' one rounding


# ---- 4. the address helpers' arguments -------------------------------------------------------

@pytest.mark.parametrize("fn", [pl.virtual_page, pl.page_offset])
@pytest.mark.parametrize("args, exc, match", [
    ((6, 0), ValueError, r"^page_size: expected an int >= 1, got 0$"),   # ZeroDivisionError
    ((-1, 4), ValueError, r"^token: expected an int >= 0, got -1$"),     # page -1, offset 3
    ((6.0, 4), TypeError, r"^token: expected an int, got 6\.0 \(float\)$"),
    ((6, True), TypeError, r"^page_size: expected an int, got True \(bool\)$"),
], ids=["page_size-0", "token-negative", "token-float", "page_size-bool"])
def test_address_helpers_name_a_bad_argument(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


def test_cache_takes_the_page_sizes_the_plans_take():
    """2**31 was taken (no kernel, plan, write_kv or to_csr takes it: an int32 argument)."""
    with pytest.raises(ValueError, match=r"^page_size: expected an int <= 2147483647, got "
                                         r"2147483648$"):
        pl.PagedKVCache(1, 2**31, 1, 1, device="cpu")


def test_address_helpers_still_take_numpy_ints():
    assert pl.virtual_page(np.int64(9), np.int32(4)) == 2
    assert pl.page_offset(np.int64(9), np.int32(4)) == 1


# ---- 5. zero query heads ---------------------------------------------------------------------

def test_packed_reference_refuses_zero_query_heads_as_reference_decode_does():
    k_cache = np.zeros((2, 4, 2, 8), np.float32)
    tables, lens = np.zeros((1, 1), np.int32), np.ones(1, np.int32)
    match = r"^q: expected at least one query head, got shape \(1, 0, 8\)$"
    with pytest.raises(ValueError, match=match):
        pl.reference_decode(np.zeros((1, 0, 8), np.float32), k_cache, k_cache, tables, lens)
    with pytest.raises(ValueError, match=match):   # returned an empty [1, 0, 8] result
        pl.reference_prefill_packed(np.zeros((1, 0, 8), np.float32), k_cache, k_cache,
                                    np.array([0, 1], np.int32), tables, lens)


def test_a_bad_dtype_is_caught_as_the_valueerror_the_decode_plan_raised_and_as_a_typeerror():
    """The decode plan raised ValueError for a dtype it does not read, the cache and the
    prefill plan TypeError: one rule now, caught by code written for either."""
    from pagedattn_lab.attention_common import DtypeError, dtype_name
    for exc in (TypeError, ValueError):
        with pytest.raises(exc, match=r"^dtype: expected float32, float16 or bfloat16, got int8"):
            dtype_name("int8")
    assert issubclass(DtypeError, TypeError) and issubclass(DtypeError, ValueError)
