"""Hunt 178: an outsider's bad-input grid over the public API (pure Python where it can be).

- `page_bytes` read `dtype` only for uncompressed pages: a misspelt one passed with kv_dtype.
- `viz.tile_counts` counted tile by tile: a 2**31-token prompt (2**51 tiles) never returned.
- `prefill_masks.causal_mask` checked nothing: floats made float ranges, q_len > seq_len rows
  that see no key, and a huge size allocated (or got the process killed) with no error.
- `distributed.shard.step_bytes` raised NumPy's OverflowError for a page_size past int64.
"""
import numpy as np
import pytest

from pagedattn_lab.cache import page_bytes, pages_in
from pagedattn_lab.distributed.shard import step_bytes
from pagedattn_lab.prefill_masks import causal_mask
from pagedattn_lab.viz.kernel_maps import tile_counts

SIZES = dict(page_size=16, num_kv_heads=2, head_dim=8)   # fp16 pages of 1024 bytes


@pytest.mark.parametrize("name", list(SIZES))
def test_page_bytes_of_numpy_integer_sizes_is_the_plain_ints_answer(name):
    plain = page_bytes(**{**SIZES, name: 200})   # a uint8 200 * 2 wrapped past 255
    assert plain == page_bytes(**SIZES) * 200 // SIZES[name]
    assert page_bytes(**{**SIZES, name: np.uint8(200)}) == plain
    assert pages_in(10**9, **{**SIZES, name: np.uint8(200)}) == 10**9 // plain


@pytest.mark.parametrize("dtype", ["float17", np.int8, None])
def test_page_bytes_checks_dtype_whatever_kv_dtype_as_the_cache_does(dtype):
    with pytest.raises((TypeError, ValueError), match="^dtype: "):   # (test_advanced_grid_
        page_bytes(**SIZES, dtype=dtype, kv_dtype="int8")   # hunt183 has the sizes' grid)


def test_tile_counts_match_a_brute_force_count_over_a_grid_of_awkward_sizes():
    for seq_len in range(1, 40):
        for tq in range(1, 12):
            for tk in range(1, 12):
                nq, nk = -(-seq_len // tq), -(-seq_len // tk)
                want = {"full": 0, "diag": 0, "skip": 0}
                for qi in range(nq):
                    q_lo, q_hi = qi * tq, min(seq_len, (qi + 1) * tq) - 1
                    for ki in range(nk):
                        k_lo, k_hi = ki * tk, min(seq_len, (ki + 1) * tk) - 1
                        want["skip" if k_lo > q_hi else "full" if k_hi <= q_lo else "diag"] += 1
                assert tile_counts(seq_len, tq, tk) == want, (seq_len, tq, tk)


def test_tile_counts_of_a_long_prompt_return_at_once_and_exactly():
    # (tile by tile: 2**51 tiles, never returned)
    n = 2**31
    got = tile_counts(n, 64, 32)
    assert sum(got.values()) == (n // 64) * (n // 32)
    assert got["diag"] == n // 32   # each 64-query tile crosses the diagonal in 2 key tiles
    assert tile_counts(n, 1, 1) == {"full": n * (n + 1) // 2, "diag": 0, "skip": n * (n - 1) // 2}
    assert tile_counts(np.int64(200), np.uint8(64), 32) == tile_counts(200, 64, 32)


@pytest.mark.parametrize("q_len, seq_len, exc, name", [
    (3, 2.0, TypeError, "seq_len"), (True, 3, TypeError, "q_len"), ("2", 3, TypeError, "q_len"),
    (-1, 4, ValueError, "q_len"), (5, 3, ValueError, "q_len"), (1, -1, ValueError, "seq_len"),
    (1, 2**45, ValueError, "q_len, seq_len")])   # (32 TiB: a MemoryError naming nothing)
def test_causal_mask_refuses_sizes_by_name_before_making_the_mask(q_len, seq_len, exc, name):
    with pytest.raises(exc, match=f"^{name}: "):
        causal_mask(q_len, seq_len)


def test_causal_mask_of_numpy_integer_sizes_is_the_plain_ints_mask():
    want = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)   # the last 2 of 4 tokens are new
    assert np.array_equal(causal_mask(2, 4), want)
    assert np.array_equal(causal_mask(np.int64(2), np.uint8(4)), want)
    assert causal_mask(0, 0).shape == (0, 0)


def test_step_bytes_of_a_page_past_int64_counts_one_page_per_sequence():
    want = step_bytes([3, 5], 8, 4, 16, page_size=8, world_size=2)   # 5 tokens: one page
    assert step_bytes([3, 5], 8, 4, 16, page_size=2**63, world_size=2) == want
    assert step_bytes(np.array([3, 5], np.int32), np.int64(8), 4, np.uint8(16), page_size=8,
                      world_size=np.int16(2)) == want
