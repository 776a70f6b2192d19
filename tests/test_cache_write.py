"""The cache-write kernel (vLLM's reshape-and-cache) against a NumPy scatter, and the packed
prefill reference against the dense truth of tests/test_reference.py."""
import ml_dtypes
import numpy as np
import pytest

from pagedattn_lab.cache_write import slot_mapping, write_kv
from pagedattn_lab.reference import reference_prefill_packed
from tests.test_reference import dense_attention, make_paged_problem


def numpy_scatter(k, v, k_cache, v_cache, slots):
    k_cache, v_cache = k_cache.copy(), v_cache.copy()
    flat_k = k_cache.reshape(-1, *k_cache.shape[2:])
    flat_v = v_cache.reshape(-1, *v_cache.shape[2:])
    keep = slots >= 0
    flat_k[slots[keep]], flat_v[slots[keep]] = k[keep], v[keep]
    return k_cache, v_cache


BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("dtype, num_kv_heads, head_dim", [
    (np.float32, 2, 64), (np.float16, 1, 33), (np.float16, 3, 8), (np.float32, 1, 5),
    (BF16, 2, 8), (BF16, 1, 3)])   # NumPy uint16 bits are refused (test_api_grid_hunt35)
def test_write_kv_matches_a_numpy_scatter(dtype, num_kv_heads, head_dim):
    k_cache, v_cache, k, v, slots = _write_problem(dtype, num_kv_heads, head_dim)
    want_k, want_v = numpy_scatter(k, v, k_cache, v_cache, slots)
    write_kv(k, v, k_cache, v_cache, slots)
    np.testing.assert_array_equal(k_cache.view(np.uint8), want_k.view(np.uint8))
    np.testing.assert_array_equal(v_cache.view(np.uint8), want_v.view(np.uint8))


def _write_problem(dtype, num_kv_heads, head_dim):
    """Random caches and 11 new rows (two of them padding, slot -1) of `dtype`."""
    rng = np.random.default_rng(head_dim)
    num_pages, page_size = 7, 5
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k_cache = rng.standard_normal(shape).astype(dtype)
    v_cache = rng.standard_normal(shape).astype(dtype)
    slots = rng.permutation(num_pages * page_size)[:11].astype(np.int64)
    slots[[2, 7]] = -1                         # padding rows are skipped
    k = rng.standard_normal((11, num_kv_heads, head_dim)).astype(dtype)
    v = rng.standard_normal((11, num_kv_heads, head_dim)).astype(dtype)
    return k_cache, v_cache, k, v, slots


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_write_kv_writes_torch_bfloat16_caches_in_place(device):
    """torch tensors go through DLPack without a copy: the caller's cache tensors change."""
    torch = pytest.importorskip("torch")
    k_cache, v_cache, k, v, slots = _write_problem(BF16, 2, 16)
    want_k, want_v = numpy_scatter(k, v, k_cache, v_cache, slots)
    as_torch = lambda a: torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(device)  # noqa: E731
    tk_cache, tv_cache = as_torch(k_cache), as_torch(v_cache)
    write_kv(as_torch(k), as_torch(v), tk_cache, tv_cache, torch.from_numpy(slots).to(device))
    for got, want in ((tk_cache, want_k), (tv_cache, want_v)):
        np.testing.assert_array_equal(got.view(torch.int16).cpu().numpy(), want.view(np.int16))


def test_slot_mapping_points_at_the_last_q_len_tokens():
    tables = np.array([[4, 2, 7], [1, 0, -1]], np.int32)
    slots = slot_mapping(tables, np.array([9, 5], np.int32), np.array([3, 1], np.int32), 4)
    # sequence 0: positions 6, 7, 8 -> page 2 offsets 2, 3 then page 7 offset 0
    # sequence 1: position 4 -> page 0 offset 0
    assert slots.tolist() == [2 * 4 + 2, 2 * 4 + 3, 7 * 4 + 0, 0]
    with pytest.raises(ValueError, match=r"q_lens\[1\]"):
        slot_mapping(tables, np.array([9, 5], np.int32), np.array([3, 6], np.int32), 4)


@pytest.mark.parametrize("lens, match", [
    ([2**31 - 1, 2**31 - 1], r"^q_lens: 4294967294 new tokens in all, more than the 2147483647"),
    ([2**27], r"^q_lens: the slots of 134217728 new tokens would take 7.0 GiB, more than the "
              r"1.0 GiB"),
])
def test_slot_mapping_refuses_more_new_tokens_than_it_can_hold(monkeypatch, lens, match):
    """Two pages of 2**30 tokens cover an int32 length: 2**31 - 1 new tokens made NumPy
    arrays of 16 GiB each, which got the process killed, no error raised (the machine's
    memory is set to 1 GiB here, so the refusal does not depend on the machine's)."""
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes", lambda device: 2**30)
    tables = np.array([[0, 1]] * len(lens), np.int32)
    lens = np.array(lens, np.int32)
    with pytest.raises(ValueError, match=match):
        slot_mapping(tables, lens, lens, 2**30)


@pytest.mark.parametrize("bad, match", [
    (lambda s: s.astype(np.int32), "slot_mapping: expected dtype int64"),
    (lambda s: np.where(np.arange(s.size) == 3, 35, s), r"slot_mapping\[3\]: slot 35"),
    (lambda s: np.where(np.arange(s.size) == 4, s[0], s), r"rows \[0, 4\] all write slot"),
    (lambda s: s[:-1], r"expected shape \(6,\)"),
])
def test_a_refused_write_changes_nothing(bad, match):
    rng = np.random.default_rng(1)
    k_cache = rng.standard_normal((5, 7, 2, 8)).astype(np.float32)
    v_cache = k_cache.copy()
    before = k_cache.copy()
    k = rng.standard_normal((6, 2, 8)).astype(np.float32)
    slots = np.arange(6, dtype=np.int64) * 3
    with pytest.raises((ValueError, TypeError), match=match):
        write_kv(k, k.copy(), k_cache, v_cache, bad(slots))
    np.testing.assert_array_equal(k_cache, before)
    np.testing.assert_array_equal(v_cache, before)


def test_write_kv_refuses_rows_of_the_wrong_shape_or_dtype():
    cache = np.zeros((4, 4, 2, 8), np.float16)
    with pytest.raises(ValueError, match=r"k: expected \[n_tokens, 2, 8\]"):
        write_kv(np.zeros((3, 1, 8), np.float16), np.zeros((3, 1, 8), np.float16), cache,
                 cache.copy(), np.arange(3, dtype=np.int64))
    with pytest.raises(TypeError, match="k: expected dtype float16"):
        write_kv(np.zeros((3, 2, 8), np.float32), np.zeros((3, 2, 8), np.float32), cache,
                 cache.copy(), np.arange(3, dtype=np.int64))


PACKED = [
    # lens (all cached tokens), q_lens (new tokens at the end), page, heads, kv heads, dim
    ([7, 1, 20], [7, 1, 20], 4, 4, 2, 8),     # all-new prompts, one of one token
    ([9, 16, 5], [3, 1, 5], 4, 2, 2, 16),     # a chunk over a cached prefix, a decode, a prompt
    ([33], [17], 16, 8, 1, 8),                # MQA chunk: not page multiples
    ([6, 6], [0, 2], 1, 2, 1, 4),             # a sequence with no queries; page size 1
]


@pytest.mark.parametrize("lens, q_lens, page_size, num_heads, num_kv_heads, head_dim", PACKED)
@pytest.mark.parametrize("causal", [True, False])
def test_packed_reference_matches_dense_bottom_right_attention(lens, q_lens, page_size,
                                                               num_heads, num_kv_heads,
                                                               head_dim, causal):
    rng = np.random.default_rng(sum(lens))
    k_cache, v_cache, tables, seq_lens, dense_k, dense_v = make_paged_problem(
        rng, lens, page_size, num_heads, num_kv_heads, head_dim)
    indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = rng.standard_normal((indptr[-1], num_heads, head_dim)).astype(np.float32)
    got = reference_prefill_packed(q, k_cache, v_cache, indptr, tables, seq_lens, causal=causal)
    for b, (n, m) in enumerate(zip(lens, q_lens)):
        rows = slice(indptr[b], indptr[b + 1])
        want = dense_attention(q[rows], dense_k[b], dense_v[b],
                               causal_offset=n - m if causal else n)
        np.testing.assert_allclose(got[rows], want, rtol=1e-12, atol=1e-12)


def test_packed_reference_refuses_more_queries_than_tokens():
    rng = np.random.default_rng(0)
    k_cache, v_cache, tables, seq_lens, _, _ = make_paged_problem(rng, [3], 4, 2, 2, 8)
    q = np.zeros((4, 2, 8), np.float32)
    with pytest.raises(ValueError, match="sequence 0 has 4 queries but seq_lens"):
        reference_prefill_packed(q, k_cache, v_cache, np.array([0, 4]), tables, seq_lens)
