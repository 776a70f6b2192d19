"""An outside engineer's grid over the public API (hunt 65): what it found.

Each test failed before its fix. Errors must name the argument, the index and the reason,
even when the array is too long to print whole (a batch of thousands of sequences)."""
from __future__ import annotations

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.reference import reference_prefill_packed

I32 = np.int32


def _long_indptr(bad_at: int, n: int = 2000) -> np.ndarray:
    """Offsets 0, 1, 2, ... of n sequences of one token, broken at entry bad_at (one less
    than the entry before it): far past the first values an error can print."""
    ptr = np.arange(n + 1, dtype=I32)
    ptr[bad_at] = ptr[bad_at - 1] - 1
    return ptr


# -- offsets (FlashInfer's indptr, the prefill wrapper's qo_indptr) ----------------------

def test_from_csr_names_the_indptr_entry_that_decreases():
    ptr = _long_indptr(1500)
    with pytest.raises(ValueError, match=r"^indptr\[1500\]: 1498 is less than indptr\[1499\] "
                                         r"= 1499"):
        pl.from_csr(ptr, np.zeros(2000, I32), np.ones(2000, I32), 4)


@pytest.mark.parametrize("ptr, indices, match", [
    ([1, 2, 3], 3, r"^indptr\[0\]: expected 0 \(offsets start at 0\), got 1$"),
    ([0, 2, 2], 3, r"^indptr\[2\]: expected 3 \(len\(indices\): the offset past the last "
                   r"sequence's pages\), got 2$"),
    ([], 0, r"^indptr: expected \[batch \+ 1\] offsets from 0, got an empty array$"),
])
def test_from_csr_indptr_errors_name_the_entry(ptr, indices, match):
    n = max(len(ptr) - 1, 0)
    with pytest.raises(ValueError, match=match):
        pl.from_csr(np.array(ptr, I32), np.zeros(indices, I32), np.ones(n, I32), 4)


def test_prefill_plan_names_the_qo_indptr_entry_that_decreases():
    # the error showed qo_indptr's first 8 entries, all fine, and not the broken one
    ptr = _long_indptr(1500)
    tables = np.zeros((2000, 1), I32)
    lens = np.ones(2000, I32)
    w = pl.BatchPrefillWrapper()
    with pytest.raises(ValueError, match=r"^qo_indptr\[1500\]: 1498 is less than "
                                         r"qo_indptr\[1499\] = 1499"):
        w.plan(ptr, tables, lens, 2, 2, 64, 4, "float16")
    assert not w.planned


def test_reference_prefill_packed_names_the_qo_indptr_entry():
    # the error printed all 2001 offsets and named none
    ptr = _long_indptr(1500)
    k = np.zeros((1, 4, 1, 8), np.float32)
    with pytest.raises(ValueError) as err:
        reference_prefill_packed(np.zeros((2000, 1, 8), np.float32), k, k, ptr,
                                 np.zeros((2000, 1), I32), np.ones(2000, I32))
    assert str(err.value).startswith("qo_indptr[1500]: 1498 is less than qo_indptr[1499]")
    assert len(str(err.value)) < 300


# -- BlockAllocator: a refused call names the entry of the list it refuses -------------------

@pytest.mark.parametrize("page, exc, match", [
    (8, ValueError, r"^page: page id 8 is not in this allocator \(valid ids are 0\.\.7\)$"),
    (-1, ValueError, r"^page: page id -1 is not in this allocator"),
    (True, TypeError, r"^page: expected an integer page id, got True \(bool\)$"),
    (np.array([1]), TypeError, r"^page: expected an integer page id, got array\(\[1\]\)"),
])
def test_ref_count_names_its_one_argument_without_an_index(page, exc, match):
    # it said "page[0]: ...", an entry of a list the caller never passed
    with pytest.raises(exc, match=match):
        pl.BlockAllocator(8).ref_count(page)


@pytest.mark.parametrize("pages, match", [
    ([0, 1, 5], r"^pages\[2\]: page 5 is already free \(double free\?\)$"),
    ([1, 0, 2, 0], r"^pages\[3\]: page 0 is listed 2 times but has only 1 owner\(s\) "
                   r"\(entries 1 and 3\)$"),
])
def test_free_names_the_entry_it_refuses_and_changes_nothing(pages, match):
    alloc = pl.BlockAllocator(8)
    alloc.allocate(3)
    before = alloc.state()
    with pytest.raises(ValueError, match=match):
        alloc.free(pages)
    assert alloc.state() == before


# -- element_offset: numpy scalars and arrays as Python ints ---------------------------------

def test_element_offset_of_an_int32_slot_does_not_wrap():
    # A slot computed from an int32 block table (page 300000 of 16 tokens) is an np.int32:
    # (slot * 8 + 1) * 128 wrapped past 2^31 to a negative offset, with only a warning.
    table = np.array([300_000], np.int32)
    slot = table[0] * np.int32(16) + np.int32(3)
    want = ((300_000 * 16 + 3) * 8 + 1) * 128 + 5
    assert pl.element_offset(slot, np.int32(1), np.int32(5), 8, 128) == want
    slots = np.array([0, slot], np.int32)
    np.testing.assert_array_equal(pl.element_offset(slots, 1, 5, 8, 128),
                                  [(1 * 128) + 5, want])


@pytest.mark.parametrize("args, exc, match", [
    ((0, 2, 0, 2, 8), ValueError, r"^kv_head: expected 0\.\.1, got 2$"),
    ((0, 0, 8, 2, 8), ValueError, r"^dim: expected 0\.\.7, got 8$"),
    ((-1, 0, 0, 2, 8), ValueError, r"^slot: expected a slot >= 0, got -1$"),
    ((np.array([3, -4, 5]), 0, 0, 2, 8), ValueError, r"^slot\[1\]: expected a slot >= 0, "
                                                       r"got -4$"),
    ((0, np.array([[0, 1], [2, 0]]), 0, 2, 8), ValueError, r"^kv_head\[1, 0\]: expected 0\.\.1, "
                                                           r"got 2$"),
    ((1.0, 0, 0, 2, 8), TypeError, r"^slot: expected an int or an integer array, got 1\.0 "
                                   r"\(float\)$"),
    ((np.array([True]), 0, 0, 2, 8), TypeError, r"^slot: expected an int or an integer array, "
                                                r"got an array of bool$"),
    ((0, 0, 0, 0, 8), ValueError, r"^num_kv_heads: expected an int >= 1, got 0$"),
])
def test_element_offset_refuses_what_is_no_element(args, exc, match):
    # kv_head 2 of 2 heads is the next token's head 0: it returned that offset, unchecked,
    # where translate() refuses the same kv_head by name
    with pytest.raises(exc, match=match):
        pl.element_offset(*args)


# -- slot_mapping and the cache's block tables: the entry named ------------------------------

def test_slot_mapping_names_the_entry_past_int32():
    tables = np.array([[0, 1], [2, 2**40]], np.int64)
    with pytest.raises(ValueError, match=r"^block_tables\[1, 1\]: value 1099511627776 does not "
                                         r"fit int32"):
        pl.slot_mapping(tables, np.array([5, 8], np.int32), np.array([1, 1], np.int32), 4)


def test_cache_block_tables_names_the_seq_ids_entry():
    cache = pl.PagedKVCache(4, 4, 1, 8)
    a = cache.add_sequence()
    with pytest.raises(KeyError, match=r"seq_ids\[1\]: no live sequence 7 \(live: \[0\]\)"):
        cache.block_tables([a, 7])


def test_decode_pages_needed_names_the_seq_ids_entry():
    cache = pl.PagedKVCache(4, 4, 1, 8)
    a = cache.add_sequence()
    with pytest.raises(KeyError, match=r"seq_ids\[1\]: no live sequence 7 \(live: \[0\]\)"):
        cache.decode_pages_needed([a, 7])
    with pytest.raises(TypeError, match=r"^seq_ids\[0\]: expected an integer sequence id"):
        cache.decode_pages_needed([1.0])


def test_decode_plan_grid_error_names_the_query_heads_that_fill_it():
    # 2^20 query heads over one KV head: grid y = 2^20 / 8 head groups. The error said
    # "1 sequences and 1 KV heads need a launch grid (1, 131072, 1)", naming neither
    # num_heads nor the number that overflows.
    tables, lens = np.zeros((1, 1), I32), np.ones(1, I32)
    with pytest.raises(ValueError, match=r"^block_tables, num_heads, num_kv_heads: 1 sequences "
                                         r"and 1048576 query heads over 1 KV heads need a "
                                         r"launch grid \(1, 131072, 1\), past CUDA's limit"):
        pl.BatchDecodeWrapper().plan(tables, lens, 2**20, 1, 64, 16, "float16", kernel="simt")


def test_write_kv_quant_refuses_kv_dtype_none_without_offering_it():
    # it said "got None (NoneType); accepted spellings: ... (None: uncompressed pages)":
    # None offered as the answer to the None it refused
    from pagedattn_lab.cache_write_quant import write_kv_quant
    cache = np.zeros((2, 4, 1, 8), np.int8)
    rows = np.zeros((1, 1, 8), np.float32)
    scale = np.ones(1, np.float32)
    with pytest.raises(ValueError) as err:
        write_kv_quant(rows, rows.copy(), cache, cache.copy(), np.zeros(1, np.int64), None,
                       "static", scale, scale.copy())
    assert str(err.value).startswith("kv_dtype: expected one of ('int8', 'fp8_e4m3'), got None")
    assert "None: uncompressed" not in str(err.value)


def test_a_sequence_twice_in_a_step_is_named_by_its_entry():
    cache = pl.PagedKVCache(8, 4, 1, 8, dtype=np.float32, device="cpu")
    a, b = cache.add_sequence(), cache.add_sequence()
    with pytest.raises(ValueError, match=rf"^seq_ids\[2\]: sequence {a} appears twice "
                                         rf"\(entries 0 and 2\)"):
        cache.decode_pages_needed([a, b, a])


def test_uint16_caches_on_the_cpu_get_the_bfloat16_view_hint():
    k = np.zeros((2, 4, 1, 32), np.uint16)
    with pytest.raises(TypeError, match=r"^k_cache: expected dtype .*got uint16 \(bfloat16 "
                                        r"bits\? .*x\.view\(ml_dtypes\.bfloat16\)\)"):
        pl.paged_attention_decode(np.zeros((1, 1, 32), np.float16), k, k,
                                  np.zeros((1, 1), np.int32), np.array([3], np.int32))
