"""The page-access kernel (guide step 2) against its NumPy twin and the dense truth."""
import numpy as np
import pytest

from pagedattn_lab import gather_kv, gather_kv_reference

from .test_reference import make_paged_problem


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("lens, page_size", [([1, 16, 17], 16), ([13, 4], 4), ([300], 256)])
def test_gather_kernel_copies_every_token_exactly(rng, dtype, lens, page_size):
    k_cache, v_cache, tables, seq_lens, dense_k, dense_v = make_paged_problem(
        rng, lens, page_size, num_heads=4, num_kv_heads=2, head_dim=8, dtype=dtype)
    for b, n in enumerate(lens):
        k, v = gather_kv(k_cache, v_cache, tables[b], n)
        assert k.dtype == dtype and k.shape == (n, 2, 8)
        np.testing.assert_array_equal(k, dense_k[b])
        np.testing.assert_array_equal(v, dense_v[b])
        k_ref, v_ref = gather_kv_reference(k_cache, v_cache, tables[b], n)
        np.testing.assert_array_equal(k, k_ref)
        np.testing.assert_array_equal(v, v_ref)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("num_kv_heads, head_dim", [(1, 7), (3, 5), (1, 1), (2, 3)])
def test_gather_takes_any_row_length(rng, dtype, num_kv_heads, head_dim):
    """fp16 rows of an odd number of halves are not whole 32-bit words: still copied exactly."""
    k_cache, v_cache, tables, lens, dense_k, dense_v = make_paged_problem(
        rng, [7, 1], 3, num_kv_heads, num_kv_heads, head_dim, dtype=dtype)
    for b, n in enumerate(lens):
        k, v = gather_kv(k_cache, v_cache, tables[b], int(n))
        assert k.dtype == dtype
        np.testing.assert_array_equal(k, dense_k[b])
        np.testing.assert_array_equal(v, dense_v[b])


def test_gather_refuses_bad_input_before_launch(rng):
    k_cache, v_cache, tables, seq_lens, _, _ = make_paged_problem(rng, [9], 4, 2, 2, 8)
    row = tables[0].copy()
    row[1] = 10_000
    with pytest.raises(ValueError, match=r"^block_table_row\[1\]: page id 10000 is out of range"):
        gather_kv(k_cache, v_cache, row, 9)
    with pytest.raises(TypeError, match="block_table_row: expected dtype int32, got int64"):
        gather_kv(k_cache, v_cache, tables[0].astype(np.int64), 9)
    with pytest.raises(ValueError, match=r"^seq_len: 20 tokens do not fit"):
        gather_kv(k_cache, v_cache, tables[0], 20)
    with pytest.raises(TypeError,
                       match="k_cache: expected dtype float32 or float16 or bfloat16, got float64"):
        gather_kv(k_cache.astype(np.float64), v_cache.astype(np.float64), tables[0], 9)


@pytest.mark.parametrize("gather", [gather_kv, gather_kv_reference])
def test_gather_refuses_lengths_past_int32_and_outputs_past_the_memory(rng, monkeypatch, gather):
    """seq_len 2**31 failed in NumPy (OverflowError naming no argument); a row listing one
    page many times asked for outputs many times the cache's size, which could get the
    process killed as they were written (memory set to 1 MiB here)."""
    k_cache, v_cache, tables, _, _, _ = make_paged_problem(rng, [9], 4, 2, 2, 8)
    with pytest.raises(ValueError, match="^seq_len: expected an int <= 2147483647, got 2147483648"):
        gather(k_cache, v_cache, tables[0], 2**31)
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes", lambda device: 2**20)
    row = np.full(2**14, tables[0, 0], np.int32)   # one page, 2**14 times: 2**16 tokens
    with pytest.raises(ValueError, match=r"^seq_len: the K and V of 65536 tokens would take"):
        gather(k_cache, v_cache, row, 2**16)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gather_reference_returns_torch_caches_as_tensors_like_the_kernel(rng, dtype):
    """gather_kv_reference gave torch caches back as NumPy (bfloat16 as uint16 bits, integers
    on the CPU) while gather_kv gave tensors: the twin's results could not be compared with
    the kernel's, or read as the cache's dtype, without knowing that."""
    torch = pytest.importorskip("torch")
    k_cache, v_cache = (torch.from_numpy(rng.standard_normal((4, 2, 2, 8)).astype(np.float32))
                        .to(getattr(torch, dtype)) for _ in range(2))
    row = np.array([3, 1], np.int32)
    want = gather_kv(k_cache, v_cache, row, 3)
    got = gather_kv_reference(k_cache, v_cache, row, 3)
    for g, w, cache in zip(got, want, (k_cache, v_cache)):
        assert isinstance(g, torch.Tensor) and g.dtype == cache.dtype
        assert torch.equal(g, w) and torch.equal(g, cache[[3, 3, 1], [0, 1, 0]])
