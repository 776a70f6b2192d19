"""An outside engineer's grid over the public API (hunt 76), on the CPU executor: what it found.

Each test failed before its fix. A count mismatch between the block tables and the lengths
was explained as "(one per sequence in q)" by calls that take no q (both plans, to_csr,
slot_mapping) or whose q is packed by qo_indptr (the prefill plan, reference_prefill_packed):
the hint sent the reader to an argument the call does not have. And the SIMT decode kernel
(decode.cu) keeps offsets inside a page in 32 bits: a page of more than 2^31 - 1 elements
(page_size x num_kv_heads x head_dim) was planned, and run() read outside the cache (the CPU
executor: "invalid read ... outside every array argument"; int8 pages of 2^27 tokens x 16).
BatchPrefillWrapper.run refused a NumPy uint16 q or cache on a bfloat16 plan without the hint
every other entry point gives (on the CPU uint16 is integers: view the bits as bfloat16).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import decode_choice

I32 = np.int32
TABLES = np.zeros((2, 2), I32)          # two sequences' block tables
LENS3 = np.ones(3, I32)                 # three lengths
INDPTR3 = np.array([0, 1, 2, 3], I32)   # three packed sequences


@pytest.mark.parametrize("call, match", [
    (lambda: pl.BatchDecodeWrapper().plan(TABLES, LENS3, 2, 1, 32, 4, "float16"),
     r"^seq_lens: expected 2 entries \(one per block_tables row\), got shape \(3,\)$"),
    (lambda: pl.to_csr(TABLES, LENS3, 4),
     r"^seq_lens: expected 2 entries \(one per block_tables row\), got shape \(3,\)$"),
    (lambda: pl.slot_mapping(TABLES, LENS3, LENS3, 4),
     r"^seq_lens: expected 2 entries \(one per block_tables row\), got shape \(3,\)$"),
    (lambda: pl.BatchPrefillWrapper().plan(INDPTR3, TABLES, LENS3, 2, 1, 32, 4, "float16"),
     r"^block_tables: expected 3 rows \(one per sequence in qo_indptr\), got shape \(2, 2\)$"),
    (lambda: pl.BatchPrefillWrapper().plan(INDPTR3[:3], TABLES, LENS3, 2, 1, 32, 4, "float16"),
     r"^seq_lens: expected 2 entries \(one per sequence in qo_indptr\), got shape \(3,\)$"),
    (lambda: pl.reference_prefill_packed(np.zeros((3, 2, 32)), np.zeros((1, 4, 1, 32)),
                                         np.zeros((1, 4, 1, 32)), INDPTR3, TABLES, LENS3),
     r"^block_tables: expected 3 rows \(one per sequence in qo_indptr\), got shape \(2, 2\)$"),
], ids=["decode-plan", "to_csr", "slot_mapping", "prefill-plan-tables", "prefill-plan-lens",
        "reference-packed"])
def test_a_count_mismatch_names_what_the_call_counts_sequences_by(call, match):
    with pytest.raises(ValueError, match=match):
        call()



@pytest.mark.parametrize("page_size, kv_heads, head_dim, dtype, kv_dtype, hint", [
    (2**27, 1, 16, "float16", "int8", ", or kernel='tensor_core'"),
    ((2**31 - 1) // 4 + 1, 1, 4, "float32", None, "$"),   # one element past int32
    (2**25, 8, 8, "bfloat16", None, "$"),                  # no tensor-core kernel at head_dim 8
])
def test_simt_decode_refuses_a_page_past_its_32_bit_offsets(page_size, kv_heads, head_dim,
                                                             dtype, kv_dtype, hint):
    tables, lens = np.array([[1]], I32), np.array([1], I32)   # page 1: past the wrap
    w = pl.BatchDecodeWrapper().plan(tables, lens, kv_heads, kv_heads, head_dim, 4, dtype)
    elements = page_size * kv_heads * head_dim
    with pytest.raises(ValueError, match=rf"^page_size: a page of {page_size} tokens x "
                                         rf"{kv_heads} KV heads x head_dim {head_dim} holds "
                                         rf"{elements} elements, past the simt kernel's 32-bit "
                                         rf"offsets within a page .*smaller pages{hint}"):
        w.plan(tables, lens, kv_heads, kv_heads, head_dim, page_size, dtype, kernel="simt",
               kv_dtype=kv_dtype)
    assert w.page_size == 4 and w.kernel == "simt"   # the previous plan kept
    w.plan(tables, lens, kv_heads, kv_heads, head_dim, page_size - 1, dtype, kernel="simt")


@pytest.mark.parametrize("which", ["q", "k_cache"])
def test_prefill_run_names_bfloat16_bits_on_the_cpu_as_the_decode_run_does(which):
    bf16 = np.dtype(ml_dtypes.bfloat16)
    w = pl.BatchPrefillWrapper().plan(np.array([0, 1], I32), np.array([[0, 1]], I32),
                                      np.array([5], I32), 2, 1, 32, 4, "bfloat16")
    arrays = {"q": np.zeros((1, 2, 32), bf16), "k_cache": np.zeros((2, 4, 1, 32), bf16)}
    arrays[which] = arrays[which].view(np.uint16)
    with pytest.raises(TypeError, match=rf"^{which}: expected dtype bfloat16 \(as planned\), got "
                                        r"uint16 \(bfloat16 bits\? .*x\.view\(ml_dtypes\."
                                        r"bfloat16\)\)$"):
        w.run(arrays["q"], arrays["k_cache"], arrays["k_cache"])


def test_one_shot_decode_names_k_cache_for_a_page_past_the_simt_offsets(monkeypatch):
    # A real page of 2^31 elements takes gigabytes: lower the bound the plan checks instead.
    monkeypatch.setattr(decode_choice, "INT32_MAX", 63)
    rng = np.random.default_rng(76)
    q = rng.standard_normal((1, 2, 8)).astype(np.float32)
    cache = rng.standard_normal((2, 16, 1, 8)).astype(np.float32)   # 128 elements a page
    with pytest.raises(ValueError, match=r"^k_cache: a page of 16 tokens x 1 KV heads x "
                                         r"head_dim 8 holds 128 elements, past the simt"):
        pl.paged_attention_decode(q, cache, cache, np.array([[1]], I32), np.array([3], I32),
                                  kernel="simt")
