"""Hunt 95: an outside API hunt on the less hunted public helpers (the multi-GPU lesson's
bookkeeping, the serving simulator, lesson 03/04/10's pictures).

Found (each test failed before its fix):
- distributed.step_bytes cast seq_lens with np.asarray: 16.9 counted as 16, "5" as 5,
  -5 gave negative bytes, an empty batch raised NumPy's "zero-size array"; page_size 0,
  head_dim -16, itemsize 0 or 2.5, and max_batch / max_pages smaller than the batch gave
  byte counts without a word.
- pack_tables / table_capacity took max_batch 2.5 (NumPy's TypeError naming nothing),
  True, "4", -5 (a negative capacity); 10**12 rows failed in NumPy naming nothing.
- reassemble and shard_cache failed in NumPy or with AttributeError (a plain tuple of
  heads), or cut a head range past the cache short without a word.
- sim: capacity_tokens past int64 ran the whole simulation, then overflowed building the
  series; compare_policies(policies=None) said "'NoneType' object is not iterable";
  watermark "0.1" or True was a ValueError (EngineConfig says TypeError).
- viz: plot_launch_1d(10**9, 4) never returned (a billion patches); threads_per_block 0 or
  tile_q 0 raised ZeroDivisionError; negative sizes and seq_len 0 drew empty pictures;
  plot_query_mapping([]) failed in max(); plot_xor_butterfly(3) drew a butterfly that
  sums nothing; plot_packed_masks drew decreasing qo_indptr and q_len > seq_len as if
  right, and short labels raised IndexError; plot_tile_work drew q_len > seq_len.
- exercises.strip_regions: a cell with Windows line ends ("### END SOLUTION\r") matched no
  marker, and a marker with more on its line ("### BEGIN SOLUTION:") neither: the answer
  was copied into the exercise without a word.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pagedattn_lab import sim  # noqa: E402
from pagedattn_lab.distributed import (HeadRange, pack_tables, reassemble,  # noqa: E402
                                       shard_cache, step_bytes, table_capacity)
from pagedattn_lab.viz.cuda_maps import (plot_launch_1d, plot_launch_2d,  # noqa: E402
                                         plot_xor_butterfly)
from pagedattn_lab.viz.kernel_maps import (plot_causal_tiles, plot_query_mapping,  # noqa: E402
                                           tile_counts)
from pagedattn_lab.viz.prefill_masks import plot_packed_masks, plot_tile_work  # noqa: E402

SB = dict(num_heads=8, num_kv_heads=2, head_dim=16, page_size=4, world_size=2)



# -- distributed.step_bytes ----------------------------------------------------------------

@pytest.mark.parametrize("lens, kwargs, error, match", [
    ([16.9, 3], {}, TypeError, r"^seq_lens\[0\]: expected an integer length, got 16\.9"),
    (["5", "3"], {}, TypeError, r"^seq_lens\[0\]: expected an integer length, got '5'"),
    ("53", {}, TypeError, r"^seq_lens: expected a list of lengths, got '53'"),
    ([True, 3], {}, TypeError, r"^seq_lens\[0\]: expected an integer length, got True"),
    ([-5, 3], {}, ValueError, r"^seq_lens\[0\]: expected a length >= 0, got -5"),
    ([5, 3], dict(page_size=0), ValueError, r"^page_size: expected an int >= 1, got 0"),
    ([5, 3], dict(head_dim=-16), ValueError, r"^head_dim: expected an int >= 1, got -16"),
    ([5, 3], dict(itemsize=0), ValueError, r"^itemsize: expected an int >= 1, got 0"),
    ([5, 3], dict(itemsize=2.5), TypeError, r"^itemsize: expected an int, got 2\.5"),
    ([5, 3], dict(max_batch=1), ValueError,
     r"^max_batch: the buffer must hold the batch.s sequences, 2; got 1"),
    ([50, 3], dict(max_pages=1), ValueError,
     r"^max_pages: the buffer must hold the longest sequence.s pages, 13; got 1"),
])
def test_step_bytes_refuses_what_it_would_miscount(lens, kwargs, error, match):
    with pytest.raises(error, match=match):
        step_bytes(lens, **(SB | kwargs))


def test_step_bytes_of_awkward_valid_batches_counts_by_hand():
    # one token, an empty sequence, lengths not multiples of the page, NumPy ints
    lens = [np.int64(1), 0, 9]
    b = step_bytes(lens, **SB, itemsize=2)
    pages = 3                          # ceil(9 / 4): the longest row of the buffer
    assert b.tables == 4 * (2 + 3 + 3 * pages)
    assert b.output == 3 * 8 * 16 * 2 and b.output_share == b.output // 2
    assert b.kv_read == 10 * 2 * (2 // 2) * 16 * 2
    empty = step_bytes([], **SB)       # no sequence: the header alone
    assert empty == (8, 0, 0, 0)


# -- pack_tables / table_capacity / reassemble / shard_cache -------------------------------

@pytest.mark.parametrize("max_batch, max_pages, error, match", [
    (2.5, 4, TypeError, r"^max_batch: expected an int, got 2\.5"),
    (True, 4, TypeError, r"^max_batch: expected an int, got True"),
    ("4", 4, TypeError, r"^max_batch: expected an int, got '4'"),
    (4, -1, ValueError, r"^max_pages: expected an int >= 0, got -1"),
    (10**12, 10**12, ValueError, r"^max_batch, max_pages: the broadcast buffer"),
])
def test_pack_tables_names_a_bad_buffer_size(max_batch, max_pages, error, match):
    tables, lens = np.array([[0, 1], [2, -1]], np.int32), np.array([5, 3], np.int32)
    with pytest.raises(error, match=match):
        pack_tables(tables, lens, max_batch, max_pages)


@pytest.mark.parametrize("args, error, match", [
    ((-5, 3), ValueError, r"^max_batch: expected an int >= 0, got -5"),
    ((2.5, 3), TypeError, r"^max_batch: expected an int, got 2\.5"),
    ((2, 3, 2), TypeError, r"^prefill: expected True or False, got 2"),
])
def test_table_capacity_names_its_argument(args, error, match):
    with pytest.raises(error, match=match):
        table_capacity(*args)


@pytest.mark.parametrize("args, error, match", [
    ((np.zeros(10), 2, 2, 8, 16), ValueError, r"^gathered: expected 2 x 2 x 4 x 16 values"),
    ((np.zeros(512), 0, 2, 8, 16), ValueError, r"^world_size: expected an int >= 1, got 0"),
    ((np.zeros(512), 3, 2, 8, 16), ValueError, r"^world_size: 3 ranks"),
    ((list(range(512)), 2, 2, 8, 16), TypeError, r"^gathered: expected a NumPy or CuPy"),
])
def test_reassemble_names_its_argument(args, error, match):
    with pytest.raises(error, match=match):
        reassemble(*args)


def test_reassemble_puts_each_ranks_block_on_its_heads():
    batch, heads, dim, world = 3, 4, 2, 2
    full = np.arange(batch * heads * dim, dtype=np.float64).reshape(batch, heads, dim)
    gathered = np.concatenate([full[:, r * 2:(r + 1) * 2].ravel() for r in range(world)])
    assert np.array_equal(reassemble(gathered, world, batch, heads, dim), full)


def test_shard_cache_takes_a_plain_tuple_and_refuses_heads_past_the_cache():
    cache = np.arange(2 * 3 * 4 * 2).reshape(2, 3, 4, 2)
    assert np.array_equal(shard_cache(cache, (1, 3, 2, 6)), cache[:, :, 1:3])
    assert shard_cache(cache, HeadRange(1, 3, 2, 6)).flags.c_contiguous
    with pytest.raises(ValueError, match=r"^heads: KV heads 2\.\.4 are not within the "
                                         r"cache's 4 KV heads"):
        shard_cache(cache, HeadRange(2, 5, 0, 1))
    with pytest.raises(TypeError, match=r"^heads: expected a HeadRange"):
        shard_cache(cache, [0, 1, 0, 1])


# -- sim -------------------------------------------------------------------------------------

W = sim.Workload(num_requests=4, max_len=1032)


def test_a_capacity_past_int64_is_refused_before_simulating():
    with pytest.raises(ValueError, match=r"^capacity_tokens: expected an int <= "
                                         r"9223372036854775807, got 10{30}$"):
        sim.simulate("reserve_max", W, capacity_tokens=10**30, max_steps=3)


@pytest.mark.parametrize("policies", [None, 5])
def test_compare_policies_names_policies_that_are_not_a_list(policies):
    with pytest.raises(TypeError, match=r"^policies: expected a list of policy names, got "):
        sim.compare_policies(W, policies, capacity_tokens=4096)


@pytest.mark.parametrize("watermark", ["0.1", True, None])
def test_a_watermark_that_is_no_number_is_a_type_error(watermark):
    with pytest.raises(TypeError, match=r"^watermark: expected a share of the pages in "
                                        r"\[0, 1\), got "):
        sim.simulate("paged", W, capacity_tokens=4096, watermark=watermark)


# -- lesson 03/04/10 pictures ----------------------------------------------------------------

@pytest.mark.parametrize("call, error, match", [
    (lambda: plot_launch_1d(10**9, 4), ValueError,
     r"^n, threads_per_block: the picture would draw 1000000000 threads, more than the 4096"),
    (lambda: plot_launch_1d(0, 4), ValueError, r"^n: expected an int >= 1, got 0"),
    (lambda: plot_launch_1d(20, -4), ValueError, r"^threads_per_block: expected an int >= 1"),
    (lambda: plot_launch_1d(20, 2048), ValueError, r"^threads_per_block: expected an int <= "
                                                   r"1024"),
    (lambda: plot_launch_1d(20.0, 8), TypeError, r"^n: expected an int, got 20\.0"),
    (lambda: plot_launch_2d(0, 3), ValueError, r"^rows: expected an int >= 1, got 0"),
    (lambda: plot_launch_2d(3, 3, block=(0, 2)), ValueError, r"^block\[0\]: expected an int "
                                                             r">= 1, got 0"),
    (lambda: plot_launch_2d(3, 3, block=8), TypeError, r"^block: expected \(x, y\) threads"),
    (lambda: plot_launch_2d(5000, 5000), ValueError, r"^rows, cols, block: the picture would"),
    (lambda: plot_xor_butterfly(3), ValueError, r"^lanes: expected a power of two 2\.\.32"),
    (lambda: plot_xor_butterfly(64), ValueError, r"^lanes: expected an int <= 32, got 64"),
    (lambda: plot_query_mapping([], 4), ValueError, r"^seq_lens: expected at least one "),
    (lambda: plot_query_mapping([3, -1], 4), ValueError, r"^seq_lens\[1\]: expected a length "
                                                         r">= 0, got -1"),
    (lambda: plot_query_mapping([3.5], 4), TypeError, r"^seq_lens\[0\]: expected an integer "),
    (lambda: plot_query_mapping([5], 0), ValueError, r"^threads_per_block: expected an int "
                                                     r">= 1, got 0"),
    (lambda: plot_query_mapping([5, 9], 4, max_len=6), ValueError, r"^max_len: expected an "
                                                                   r"int >= 9, got 6"),
    (lambda: plot_causal_tiles(200, tile_q=0), ValueError, r"^tile_q: expected an int >= 1"),
    (lambda: plot_causal_tiles(-3), ValueError, r"^seq_len: expected an int >= 1, got -3"),
    (lambda: plot_causal_tiles(10**6, tile_q=1, tile_k=1), ValueError,
     r"^seq_len, tile_q, tile_k: the picture would draw"),
    (lambda: plot_packed_masks([0, 5, 2], [5, 3]), ValueError,
     r"^qo_indptr\[2\]: 2 is less than qo_indptr\[1\] = 5"),
    (lambda: plot_packed_masks([0, 5, 6], [4, 3]), ValueError,
     r"^seq_lens\[0\]: expected at least q_len = 5"),
    (lambda: plot_packed_masks([0, 2, 5], [4]), ValueError, r"^seq_lens: expected 2 lengths"),
    (lambda: plot_packed_masks([0, 2, 5], [4, 3], labels=["a"]), ValueError,
     r"^labels: expected 2 names"),
    (lambda: plot_tile_work(3, 2), ValueError, r"^seq_len: expected an int >= 3, got 2"),
    (lambda: plot_tile_work(0, 0), ValueError, r"^q_len: expected an int >= 1, got 0"),
    (lambda: plot_tile_work(40, 140, kv_tile=0), ValueError, r"^kv_tile: expected an int >= 1"),
])
def test_pictures_refuse_sizes_they_cannot_draw_by_name(no_new_figures, call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("args, error, match", [
    ((10, 0), ValueError, r"^tile_q: expected an int >= 1, got 0"),
    ((0,), ValueError, r"^seq_len: expected an int >= 1, got 0"),
    ((10.5,), TypeError, r"^seq_len: expected an int, got 10\.5"),
])
def test_tile_counts_names_its_argument(args, error, match):
    with pytest.raises(error, match=match):
        tile_counts(*args)


def test_tile_counts_of_awkward_sizes_match_a_brute_force_count():
    for seq_len, tq, tk in [(1, 64, 32), (200, 64, 32), (7, 3, 5), (5, 5, 5), (9, 1, 1)]:
        want = {"full": 0, "diag": 0, "skip": 0}
        for q0 in range(0, seq_len, tq):
            for k0 in range(0, seq_len, tk):
                q1, k1 = min(seq_len, q0 + tq) - 1, min(seq_len, k0 + tk) - 1
                seen = [k <= q for q in range(q0, q1 + 1) for k in range(k0, k1 + 1)]
                want["full" if all(seen) else "skip" if not any(seen) else "diag"] += 1
        assert tile_counts(seq_len, tq, tk) == want, (seq_len, tq, tk)


def test_the_lessons_pictures_still_draw(no_new_figures):
    for fig in (plot_launch_1d(20, 8), plot_launch_1d(np.int64(1), 1),
                plot_launch_2d(5, 19, block=(8, 4)), plot_xor_butterfly(8), plot_xor_butterfly(32),
                plot_query_mapping([5, 12, 9], threads_per_block=8),
                plot_query_mapping(np.array([0, 1], np.int32), 4),
                plot_causal_tiles(200, tile_q=64, tile_k=32), plot_tile_work(40, 140),
                plot_tile_work(1, 1),
                plot_packed_masks(np.array([0, 2, 5, 5], np.int32), [4, 3, 0])):
        plt.close(fig)


# -- exercises.strip_regions -------------------------------------------------------------------

def test_a_region_with_windows_line_ends_is_stripped_not_copied():
    """The markers' trailing \\r did not match: the answer reached the exercise, 0 regions."""
    from pagedattn_lab.exercises import strip_regions
    source = "x = 1\r\n    ### BEGIN SOLUTION\r\n    secret = 42\r\n    ### END SOLUTION\r\n"
    out, count = strip_regions(source)
    assert count == 1 and "secret" not in out and "raise NotImplementedError" in out
    cuda = 'k = """\r\n  // ### BEGIN SOLUTION\r\n  out[i] = 1;\r\n  // ### END SOLUTION\r\n"""'
    out, count = strip_regions(cuda)
    assert count == 1 and "out[i]" not in out and "  // TODO" in out


@pytest.mark.parametrize("source", [
    "### BEGIN SOLUTION:\nsecret = 42\n### END SOLUTION:\n",
    "x = 1  ### BEGIN SOLUTION\nsecret = 42\nx = 2  ### END SOLUTION\n",
])
def test_a_marker_with_more_on_its_line_is_refused_not_copied(source):
    """Both markers near misses: neither matched, and the answer went to the exercise."""
    from pagedattn_lab.exercises import RegionError, strip_regions
    with pytest.raises(RegionError, match=r"^line 1: .* is not a marker line"):
        strip_regions(source)
