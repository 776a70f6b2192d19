"""The public API's refusals in words that fit the count and the caller's library.

Before: "block_tables: expected 1 rows", "seq_lens: expected 1 entries", "expected 1
dimensions", "an address 1 bytes past", "2 tokens do not fit in a block table row of 1 pages
x 1 tokens", "a cache of 1 pages (seq_lens[0] is 1 tokens, so the first 1 entries of its row
are read)", "q holds only 1 query rows", "the cache has only 1 pages", "q_lens: expected 1
entries"; a torch float64 cache was told "or uint16" (torch.uint16 values are refused: its
bfloat16 is torch.bfloat16); an int64 block table or slot mapping was told no conversion; the
decode's refusal of an offset view lacked the prefill's "pass a fresh array (.copy())".
"""
import numpy as np
import pytest

from pagedattn_lab import (BatchDecodeWrapper, gather_kv, paged_attention_decode,
                           paged_attention_prefill, slot_mapping, to_csr, write_kv)
from pagedattn_lab.words import counted

try:
    import torch
except ImportError:   # an optional dependency: the NumPy callers' tests run without it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

PAGE, KV_HEADS, HEADS, DIM = 8, 2, 4, 32


def problem(batch=1, pages=4, page_size=PAGE, dtype=np.float32):
    """q, k_cache, v_cache, block_tables, seq_lens of a small decode (every sequence 5 tokens
    on pages 0 and 1)."""
    rng = np.random.default_rng(237)
    q = rng.standard_normal((batch, HEADS, DIM)).astype(dtype)
    k = rng.standard_normal((pages, page_size, KV_HEADS, DIM)).astype(dtype)
    v = rng.standard_normal((pages, page_size, KV_HEADS, DIM)).astype(dtype)
    tables = np.tile(np.array([[0, 1]], np.int32), (batch, 1))
    return q, k, v, tables, np.full(batch, 5, np.int32)


def refusal(call, *args, **kwargs) -> str:
    with pytest.raises((TypeError, ValueError)) as info:
        call(*args, **kwargs)
    return str(info.value)


def offset_view(a: np.ndarray, nbytes: int) -> np.ndarray:
    """A copy of `a` in a buffer, its data starting `nbytes` past the buffer's start."""
    buf = np.zeros(a.nbytes + nbytes, np.uint8)
    view = buf[nbytes:].view(a.dtype).reshape(a.shape)
    view[...] = a
    return view


# ---- counts in the singular for one ------------------------------------------------------

def test_one_sequence_is_one_row_and_one_entry():
    q, k, v, tables, lens = problem()
    assert refusal(paged_attention_decode, q, k, v, np.vstack([tables, tables]), lens) == \
        "block_tables: expected 1 row (one per sequence in q), got shape (2, 2)"
    assert refusal(paged_attention_decode, q, k, v, tables, np.repeat(lens, 2)) == \
        "seq_lens: expected 1 entry (one per sequence in q), got shape (2,)"
    q2, *_ = problem(batch=2)
    assert refusal(paged_attention_decode, q2, k, v, tables, lens).startswith(
        "block_tables: expected 2 rows (one per sequence in q)")


def test_one_dimension_is_singular():
    q, k, v, tables, lens = problem()
    assert refusal(paged_attention_decode, q, k, v, tables, lens[None]) == \
        "seq_lens: expected 1 dimension, got shape (1, 1) (2 dimensions)"
    assert refusal(paged_attention_decode, q, k, v, tables[0], lens) == \
        "block_tables: expected 2 dimensions, got shape (2,) (1 dimension)"


def test_an_address_one_byte_past_a_boundary():
    q, k, v, tables, lens = problem()
    message = refusal(paged_attention_decode, q, offset_view(k, 1), v, tables, lens)
    assert "got an address 1 byte past such a boundary" in message, message
    message = refusal(paged_attention_decode, q, offset_view(k, 2), v, tables, lens)
    assert "got an address 2 bytes past such a boundary" in message, message


def test_tokens_that_do_not_fit_are_counted_in_words():
    q, k, v, _, _ = problem(page_size=1)
    assert refusal(paged_attention_decode, q, k, v, np.array([[0]], np.int32),
                   np.array([2], np.int32)) == \
        "seq_lens[0]: 2 tokens do not fit in a block table row of 1 page x 1 token = 1"
    q, k, v, _, _ = problem()
    assert refusal(paged_attention_decode, q, k, v, np.zeros((1, 0), np.int32),
                   np.array([1], np.int32)) == \
        "seq_lens[0]: 1 token does not fit in a block table row of 0 pages x 8 tokens = 0"


def test_a_page_id_past_a_one_page_cache():
    q, k, v, _, _ = problem(pages=1)
    assert refusal(paged_attention_decode, q, k, v, np.array([[5]], np.int32),
                   np.array([1], np.int32)) == \
        ("block_tables[0, 0]: page id 5 is out of range for a cache of 1 page (seq_lens[0] is "
         "1 token, so the first 1 entry of its row is read)")
    tables = np.array([[0, 5]], np.int32)
    assert refusal(paged_attention_decode, q, k, v, tables, np.array([9], np.int32)).endswith(
        "(seq_lens[0] is 9 tokens, so the first 2 entries of its row are read)")


def test_the_prefill_counts_one_query_row():
    q, k, v, tables, _ = problem()
    q1 = q[:, None]                                            # max_len 1
    assert refusal(paged_attention_prefill, q1, k, v, tables, np.array([2], np.int32)) == \
        "seq_lens[0]: 2 tokens but q holds only 1 query row per sequence (q.shape[1])"
    assert refusal(paged_attention_prefill, q[:, :0][:, None].reshape(1, 0, HEADS, DIM), k, v,
                   tables, np.array([1], np.int32)) == \
        "seq_lens[0]: 1 token but q holds only 0 query rows per sequence (q.shape[1])"


def test_the_run_counts_a_one_page_cache():
    q, k, v, _, _ = problem()
    w = BatchDecodeWrapper().plan(np.array([[1]], np.int32), np.array([3], np.int32), HEADS,
                                  KV_HEADS, DIM, PAGE, "float32")
    assert refusal(w.run, q, k[:1], v[:1]) == \
        "k_cache: the plan reads page 1, but the cache has only 1 page"


def test_slot_mapping_counts_one_row():
    assert refusal(slot_mapping, np.array([[0]], np.int32), np.array([1], np.int32),
                   np.array([1, 1], np.int32), PAGE) == \
        "q_lens: expected 1 entry (one per block table row), got shape (2,)"


def test_counted_takes_a_plural_of_its_own():
    assert [counted(n, "entry", "entries") for n in (0, 1, 2)] == \
        ["0 entries", "1 entry", "2 entries"]
    assert [counted(n, "row") for n in (1, 2)] == ["1 row", "2 rows"]


# ---- a torch caller is offered torch's dtypes ----------------------------------------------

def tensors(*arrays):
    return [torch.from_numpy(a.copy()) for a in arrays]


@needs_torch
def test_a_torch_float64_cache_is_not_offered_uint16():
    q, k, v, tables, lens = problem(dtype=np.float64)
    want = "k_cache: expected dtype float32 or float16 or bfloat16, got float64"
    tq, tk, tv, tt, tl = tensors(q, k, v, tables, lens)
    assert refusal(paged_attention_decode, tq, tk, tv, tt, tl) == want
    assert refusal(gather_kv, tk, tv, tt[0], 5) == want
    rows = torch.zeros((1, KV_HEADS, DIM), dtype=torch.float64)
    assert refusal(write_kv, rows, rows, tk, tv, torch.tensor([0])) == want
    # the v_cache alone is told k_cache's torch dtype; the NumPy caller's words are as they were
    assert refusal(paged_attention_decode, tq.float(), tk.float(), tv, tt, tl) == \
        "v_cache: expected dtype torch.float32 (k_cache's), got torch.float64"
    assert refusal(paged_attention_decode, q, k, v, tables, lens) == want


@needs_torch
def test_a_torch_fp8_cache_still_gets_the_view_to_its_codes():
    _, k, _, tables, lens = problem()
    tk = torch.from_numpy(k).to(torch.float8_e4m3fn)
    message = refusal(gather_kv, tk, tk, torch.from_numpy(tables[0]), 5)
    assert "pass k_cache.view(torch.uint8)" in message, message


# ---- a block table of another integer width is told the conversion -------------------------

def int64_tables(arg):
    """problem()'s arrays with `arg` (block_tables or seq_lens) made int64."""
    q, k, v, tables, lens = problem()
    named = dict(block_tables=tables, seq_lens=lens)
    named[arg] = named[arg].astype(np.int64)
    return q, k, v, named


@pytest.mark.parametrize("arg", ["block_tables", "seq_lens"])
def test_an_int64_table_is_told_numpys_conversion(arg):
    q, k, v, named = int64_tables(arg)
    assert refusal(paged_attention_decode, q, k, v, **named) == \
        f"{arg}: expected dtype int32, got int64; convert with {arg}.astype(np.int32)"


@needs_torch
@pytest.mark.parametrize("arg", ["block_tables", "seq_lens"])
def test_an_int64_tensor_is_told_torchs_conversion(arg):
    q, k, v, named = int64_tables(arg)
    as_tensors = dict(zip(named, tensors(*named.values())))
    tq, tk, tv = tensors(q, k, v)
    assert refusal(paged_attention_decode, tq, tk, tv, **as_tensors) == \
        f"{arg}: expected dtype int32, got int64; convert with {arg}.to(torch.int32)"
    assert refusal(paged_attention_prefill, tq[:, None], tk, tv, **as_tensors) == \
        f"{arg}: expected dtype int32, got int64; convert with {arg}.to(torch.int32)"
    assert refusal(to_csr, *as_tensors.values(), PAGE) == \
        f"{arg}: expected dtype int32, got int64; convert with {arg}.to(torch.int32)"


def test_a_slot_mapping_is_told_its_int64():
    _, k, v, _, _ = problem()
    rows = np.zeros((1, KV_HEADS, DIM), np.float32)
    assert refusal(write_kv, rows, rows, k, v, np.array([0], np.int32)) == \
        ("slot_mapping: expected dtype int64, got int32; convert with "
         "slot_mapping.astype(np.int64)")


@needs_torch
def test_a_slot_mapping_tensor_is_told_its_int64():
    _, k, v, _, _ = problem()
    rows = np.zeros((1, KV_HEADS, DIM), np.float32)
    assert refusal(write_kv, *tensors(rows, rows, k, v), torch.tensor([0], dtype=torch.int32)) \
        == ("slot_mapping: expected dtype int64, got int32; convert with "
            "slot_mapping.to(torch.int64)")


def test_a_float_table_is_told_no_conversion():
    q, k, v, tables, lens = problem()
    floats = [tables.astype(np.float32)] + ([] if torch is None else
                                            [torch.from_numpy(tables).float()])
    for t in floats:
        assert refusal(paged_attention_decode, q, k, v, t, lens) == \
            "block_tables: expected dtype int32, got float32"


# ---- an offset view: the decode says what the prefill says ---------------------------------

@pytest.mark.parametrize("arg", ["q", "k_cache"])
def test_an_offset_view_is_told_a_fresh_array_by_decode_as_by_prefill(arg):
    q, k, v, tables, lens = problem()
    want = (f"{arg}: expected data starting on a 16-byte boundary (the kernels load 16 bytes at "
            f"a time), not an offset view; pass a fresh array (.copy())")
    named = dict(q=q, k_cache=k)
    named[arg] = offset_view(named[arg], 4)
    assert refusal(paged_attention_decode, named["q"], named["k_cache"], v, tables, lens) == want
    q_prefill = offset_view(q[:, None], 4) if arg == "q" else q[:, None]
    assert refusal(paged_attention_prefill, q_prefill, named["k_cache"], v, tables,
                   np.array([1], np.int32), kernel="naive") == want
