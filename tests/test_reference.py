"""The float64 references against an independent dense computation, and their input checks.

The test builds each sequence's K/V densely first, scatters it into shuffled pages itself
(no package code involved), and computes attention with one vectorized einsum + mask.
"""
import numpy as np
import pytest

from pagedattn_lab import (gather_kv_reference, reference_decode, reference_prefill,
                           translate)


def make_paged_problem(rng, lens, page_size, num_heads, num_kv_heads, head_dim,
                       dtype=np.float32, spare_pages=3):
    """Dense per-sequence K/V, scattered into a shuffled page pool; padding rows filled with junk."""
    pages_per_seq = [-(-n // page_size) for n in lens]
    num_pages = sum(pages_per_seq) + spare_pages
    order = rng.permutation(num_pages)
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k_cache = rng.standard_normal(shape).astype(dtype)  # junk everywhere not overwritten
    v_cache = rng.standard_normal(shape).astype(dtype)
    width = max(pages_per_seq + [1])
    tables = np.full((len(lens), width), 99999, np.int32)  # padding must never be read
    dense_k, dense_v, next_page = [], [], 0
    for b, n in enumerate(lens):
        k = rng.standard_normal((n, num_kv_heads, head_dim)).astype(dtype)
        v = rng.standard_normal((n, num_kv_heads, head_dim)).astype(dtype)
        for j in range(pages_per_seq[b]):
            page = order[next_page]
            next_page += 1
            tables[b, j] = page
            chunk = slice(j * page_size, min(n, (j + 1) * page_size))
            rows = chunk.stop - chunk.start
            k_cache[page, :rows], v_cache[page, :rows] = k[chunk], v[chunk]
        dense_k.append(k)
        dense_v.append(v)
    return k_cache, v_cache, tables, np.array(lens, np.int32), dense_k, dense_v


def dense_attention(q, k, v, causal_offset=None):
    """softmax(q k^T / sqrt(d)) v for q [t, h, d], k/v [n, h_kv, d], GQA by repeating heads."""
    group = q.shape[1] // k.shape[1]
    k = np.repeat(k.astype(np.float64), group, axis=1)
    v = np.repeat(v.astype(np.float64), group, axis=1)
    logits = np.einsum("thd,nhd->htn", q.astype(np.float64), k) / np.sqrt(q.shape[-1])
    if causal_offset is not None:
        t, n = logits.shape[1:]
        logits = np.where(np.arange(n)[None, :] <= np.arange(t)[:, None] + causal_offset,
                          logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("htn,nhd->thd", weights, v)


CASES = [
    # lens, page_size, num_heads, num_kv_heads, head_dim
    ([1], 16, 4, 4, 8),                 # a sequence of one token
    ([16, 32], 16, 2, 2, 16),           # page multiples
    ([15, 17, 33], 16, 4, 2, 8),        # page-1, page+1; GQA 2:1
    ([5, 1, 12], 1, 8, 1, 4),           # page size 1; MQA
    ([300, 257, 3], 256, 4, 2, 8),      # page size 256, lengths around it
    ([7, 40], 8, 6, 3, 12),             # odd head_dim, GQA
    ([2100, 5], 32, 2, 1, 8),           # more queries than the oracle takes at once (chunks)
]


@pytest.mark.parametrize("lens, page_size, num_heads, num_kv_heads, head_dim", CASES)
def test_reference_decode_matches_dense(rng, lens, page_size, num_heads, num_kv_heads, head_dim):
    k_cache, v_cache, tables, seq_lens, dense_k, dense_v = make_paged_problem(
        rng, lens, page_size, num_heads, num_kv_heads, head_dim)
    q = rng.standard_normal((len(lens), num_heads, head_dim)).astype(np.float32)
    out = reference_decode(q, k_cache, v_cache, tables, seq_lens)
    assert out.dtype == np.float64 and out.shape == q.shape
    for b in range(len(lens)):
        expected = dense_attention(q[b][None], dense_k[b], dense_v[b])[0]
        np.testing.assert_allclose(out[b], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lens, page_size, num_heads, num_kv_heads, head_dim", CASES)
def test_reference_prefill_matches_dense(rng, lens, page_size, num_heads, num_kv_heads, head_dim):
    k_cache, v_cache, tables, seq_lens, dense_k, dense_v = make_paged_problem(
        rng, lens, page_size, num_heads, num_kv_heads, head_dim)
    max_len = max(lens) + 2  # extra rows past every length must come back zero
    q = rng.standard_normal((len(lens), max_len, num_heads, head_dim)).astype(np.float32)
    out = reference_prefill(q, k_cache, v_cache, tables, seq_lens)
    for b, n in enumerate(lens):
        expected = dense_attention(q[b, :n], dense_k[b], dense_v[b], causal_offset=0)
        np.testing.assert_allclose(out[b, :n], expected, rtol=1e-12, atol=1e-12)
        assert not out[b, n:].any()


def test_reference_scale_and_fp16(rng):
    k_cache, v_cache, tables, seq_lens, dense_k, dense_v = make_paged_problem(
        rng, [20], 8, 2, 2, 8, dtype=np.float16)
    q = rng.standard_normal((1, 2, 8)).astype(np.float16)
    out = reference_decode(q, k_cache, v_cache, tables, seq_lens, scale=0.5)
    # scale=0.5 equals the default 1/sqrt(d) for d=4; emulate it by scaling q instead
    expected = dense_attention((q[0] * 0.5 * np.sqrt(8))[None], dense_k[0], dense_v[0])[0]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-6)


def test_gather_reference_matches_dense(rng):
    k_cache, v_cache, tables, seq_lens, dense_k, dense_v = make_paged_problem(
        rng, [13, 4], 4, 2, 2, 8)
    for b in range(2):
        k, v = gather_kv_reference(k_cache, v_cache, tables[b], int(seq_lens[b]))
        np.testing.assert_array_equal(k, dense_k[b])
        np.testing.assert_array_equal(v, dense_v[b])


def test_translate_walks_the_block_table():
    row = np.array([7, 2, 5], np.int32)
    t = translate(row, 9, page_size=4, num_kv_heads=3, head_dim=8, kv_head=2, dim=5)
    assert (t.virtual_page, t.offset, t.physical_page, t.slot) == (2, 1, 5, 21)
    assert t.element_offset == (21 * 3 + 2) * 8 + 5
    with pytest.raises(ValueError, match="token: position 12 needs virtual page 3"):
        translate(row, 12, page_size=4, num_kv_heads=3, head_dim=8)
    with pytest.raises(ValueError, match="kv_head: expected 0..2, got 3"):
        translate(row, 0, page_size=4, num_kv_heads=3, head_dim=8, kv_head=3)


# -- bad input: every check names the argument and happens before any work ----------------

def _good(rng):
    k_cache, v_cache, tables, seq_lens, _, _ = make_paged_problem(rng, [5, 9], 4, 4, 2, 8)
    q = rng.standard_normal((2, 4, 8)).astype(np.float32)
    return dict(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=tables, seq_lens=seq_lens)


BAD_DECODE = [
    ("q has a wrong head_dim", lambda a: a.update(q=a["q"][..., :4].copy()), "q: expected head_dim 8"),
    ("q is 4-D", lambda a: a.update(q=a["q"][:, None]), "q: expected a decode query of shape"),
    ("heads not a multiple", lambda a: a.update(q=a["q"][:, :3].copy()), "not a multiple of"),
    ("k_cache int32", lambda a: a.update(k_cache=a["k_cache"].astype(np.int32)),
     "k_cache: expected dtype float16 or float32 or float64 or bfloat16, got int32"),
    ("v_cache other shape", lambda a: a.update(v_cache=a["v_cache"][:-1].copy()),
     "v_cache: expected the shape of k_cache"),
    ("table int64", lambda a: a.update(block_tables=a["block_tables"].astype(np.int64)),
     "block_tables: expected dtype int32, got int64"),
    ("page id out of range", lambda a: a["block_tables"].__setitem__((1, 2), 500),
     r"block_tables\[1, 2\]: page id 500 is out of range"),
    ("negative page id", lambda a: a["block_tables"].__setitem__((0, 0), -1),
     r"block_tables\[0, 0\]: page id -1"),
    ("length past capacity", lambda a: a["seq_lens"].__setitem__(0, 13),
     r"seq_lens\[0\]: 13 tokens do not fit"),
    ("zero length decode", lambda a: a["seq_lens"].__setitem__(1, 0),
     r"seq_lens\[1\]: expected a length >= 1"),
    ("seq_lens rows", lambda a: a.update(seq_lens=a["seq_lens"][:1].copy()),
     "seq_lens: expected 2 entries"),
    ("table not contiguous", lambda a: a.update(block_tables=np.asfortranarray(
        np.repeat(a["block_tables"], 2, axis=1))), "block_tables: expected a C-contiguous"),
    ("q is a list", lambda a: a.update(q=a["q"].tolist()),
     r"q: expected a NumPy or CuPy array \(a decode query"),
]


@pytest.mark.parametrize("what, corrupt, match", BAD_DECODE, ids=[c[0] for c in BAD_DECODE])
def test_reference_decode_refuses_bad_input(rng, what, corrupt, match):
    args = _good(rng)
    corrupt(args)
    with pytest.raises((ValueError, TypeError), match=match):
        reference_decode(**args)


def test_reference_prefill_refuses_short_q_and_bad_scale(rng):
    args = _good(rng)
    args["q"] = rng.standard_normal((2, 6, 4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"seq_lens\[1\]: 9 tokens but q holds only 6"):
        reference_prefill(**args)
    args["q"] = rng.standard_normal((2, 9, 4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="scale: expected a finite number"):
        reference_prefill(**args, scale=float("nan"))
    with pytest.raises(TypeError, match="scale: expected a float"):
        reference_prefill(**args, scale="0.1")


def test_padding_entries_are_never_validated(rng):
    args = _good(rng)
    args["block_tables"][0, 2:] = -12345  # sequence 0 has 5 tokens: only entries 0, 1 are read
    reference_decode(**args)


# ---- reference_prefill_packed's refusals ----------------------------------------------------

def _packed_args():
    k = np.zeros((3, 4, 2, 8), np.float32)
    return dict(q=np.zeros((5, 4, 8), np.float32), k_cache=k, v_cache=k,
                qo_indptr=np.array([0, 3, 5], np.int32),
                block_tables=np.array([[0, 1], [2, -1]], np.int32),
                seq_lens=np.array([6, 3], np.int32))


@pytest.mark.parametrize("change, exc, match", [
    (dict(qo_indptr=np.array([0.0, 3.0, 5.0])), TypeError,
     r"^qo_indptr: expected integer offsets, got dtype float64$"),
    (dict(qo_indptr=np.array([0, 4, 3], np.int32)), ValueError,
     r"^qo_indptr\[2\]: 3 is less than qo_indptr\[1\] = 4 \(offsets never decrease"),
    (dict(qo_indptr=np.array([1, 3, 5], np.int32)), ValueError,
     r"^qo_indptr\[0\]: expected 0 \(offsets start at 0\), got 1$"),
    (dict(qo_indptr=np.array([[0, 3, 5]], np.int32)), ValueError,
     r"^qo_indptr: expected \[batch \+ 1\] offsets from 0, got shape \(1, 3\)$"),
    (dict(q=np.zeros((4, 4, 8), np.float32)), ValueError,
     r"^q: expected \[total_q = qo_indptr\[-1\] = 5, num_heads, head_dim\], got \(4, 4, 8\)$"),
    (dict(q=np.zeros((5, 4, 16), np.float32)), ValueError,
     r"^q: expected \[total_q, a multiple of 2 heads, 8\], got \(5, 4, 16\)$"),
    (dict(q=np.zeros((5, 3, 8), np.float32)), ValueError,
     r"^q: expected \[total_q, a multiple of 2 heads, 8\], got \(5, 3, 8\)$"),
    (dict(qo_indptr=np.array([0, 1, 5], np.int32)), ValueError,
     r"^qo_indptr: sequence 1 has 4 queries but seq_lens\[1\] is 3"),
])
def test_packed_reference_refuses_bad_input(change, exc, match):
    from pagedattn_lab.reference import reference_prefill_packed
    args = _packed_args() | change
    with pytest.raises(exc, match=match):
        reference_prefill_packed(**args)
    reference_prefill_packed(**_packed_args())   # the unchanged call runs
