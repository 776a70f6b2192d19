"""Tests that kill mutants of the public API's host code under which every earlier test still
passed: the plans' choices and bounds (variant_for, work_list, the int32 token bound, the
largest page a plan reads), refusals made before anything is planned or launched, the byte
ranges of the overlap checks, the tensor-parallel step buffer, and the dry run's counts. Each
test names its mutant. None compiles a kernel: the wrappers are planned, and their runs refused
before launch.
"""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pagedattn_lab import BatchDecodeWrapper, BatchPrefillWrapper
from pagedattn_lab.decode_choice import choose_kernel
from pagedattn_lab.decode_simt_plan import SIMT_MAX_TOKENS, TOKEN_MARGIN, check_token_range
from pagedattn_lab.distributed.shard import (OTHER_KIND, REFUSAL_WORDS, REFUSED, head_range,
                                             pack_tables, refusal_error, refusal_header,
                                             refusal_message, step_bytes, unpack_tables)
from pagedattn_lab.engine import EngineConfig
from pagedattn_lab.engine.adaptive import DryRun, choose_page_size, dry_run
from pagedattn_lab.prefill_plan import (DECODE_VARIANT, Variant, check_prefill_tables,
                                        variant_for, work_list)
from pagedattn_lab.quant import per_token_scales, static_scales
from pagedattn_lab.split_k import partition_bounds, reference_partials
from pagedattn_lab.validate import INT32_MAX, refuse_repeats
from pagedattn_lab.validate_out import byte_range, check_disjoint, check_out

BF16 = ml_dtypes.bfloat16


# ---- split_k ---------------------------------------------------------------------------------

def test_partition_bounds_refuses_a_negative_length():
    # mutant: seq_len checked without its minimum, so -1 gave no partitions at all
    with pytest.raises(ValueError, match=r"^seq_len: expected an int >= 0, got -1"):
        partition_bounds(-1, 4)
    assert partition_bounds(0, 4) == []


# ---- decode_simt_plan: the int32 token bound, at its edge ------------------------------------

def test_the_simt_token_bound_takes_its_longest_sequence_and_refuses_one_more():
    # mutant: `n + reach > INT32_MAX` refused the longest length the error itself offers
    for n in (SIMT_MAX_TOKENS, SIMT_MAX_TOKENS + 1):   # in one partition, or in short ones
        for part_len, where in ((n, "in one partition"), (512, "in partitions of 512")):
            if n == SIMT_MAX_TOKENS:
                check_token_range(np.array([n], np.int64), part_len)
                continue
            with pytest.raises(ValueError, match=rf"^seq_lens\[0\]: {n} tokens {where}: .* "
                                                 rf"\(at most {SIMT_MAX_TOKENS} tokens\)"):
                check_token_range(np.array([n], np.int64), part_len)


def test_partitions_longer_than_the_margin_bound_the_tokens_by_their_own_end():
    # the same mutant where a partition's end, not the loads' step, sets the reach
    part_len = 4 * TOKEN_MARGIN
    longest = INT32_MAX + 1 - part_len
    check_token_range(np.array([7, longest], np.int64), part_len)
    with pytest.raises(ValueError, match=rf"^seq_lens\[1\]: {longest + 1} tokens in partitions "
                                         rf"of {part_len}: .* \(at most {longest} tokens"):
        check_token_range(np.array([7, longest + 1], np.int64), part_len)


# ---- prefill_plan: the variants --------------------------------------------------------------

@pytest.mark.parametrize("name", ["w4r2k256u2", "w4r2k16u2", "mw4r1k256", "w4r2k64p5u2"])
def test_variant_names_of_sizes_the_kernel_lacks_are_refused(name):
    # mutants: a K/V tile of 256 keys (or 5 stages) parsed as if the kernel compiled it
    with pytest.raises(ValueError, match=rf"^variant: {name!r} has a size the kernel does not"):
        Variant.parse(name)


@pytest.mark.parametrize("head_dim, max_rows, expected", [
    (128, 1, DECODE_VARIANT), (128, 16, DECODE_VARIANT),
    (128, 17, Variant(2, 1, 64, mma=True)), (128, 64, Variant(2, 1, 64, mma=True)),
    (32, 65, Variant(4, 2, 32, q_in_regs=True, mma=True)),
    (64, 65, Variant(4, 2, 64, q_in_regs=True, mma=True)),
    (80, 65, Variant(4, 2, 64, mma=True)), (128, 65, Variant(4, 2, 64, mma=True)),
    (192, 65, Variant(4, 1, 64, mma=True)), (256, 4096, Variant(4, 1, 64, mma=True)),
])
def test_variant_for_follows_the_measured_table_at_its_edges(head_dim, max_rows, expected):
    # mutants: each `<=` of variant_for made `<` (and 16 rows sent off the one-warp variant)
    assert variant_for(head_dim, max_rows) == expected


def _tile_keys(indptr, lens, rows, causal, pack):
    """(sequence, first row, keys its last query sees) of every tile, one by one."""
    tiles = []
    for b in range(len(lens)):
        q_rows = (indptr[b + 1] - indptr[b]) * pack
        for first in range(0, q_rows, rows):
            last_query = (min(first + rows, q_rows) - 1) // pack
            keys = lens[b] - q_rows // pack + last_query + 1 if causal else lens[b]
            tiles.append((b, first, keys))
    return tiles


@given(st.lists(st.integers(1, 40), min_size=1, max_size=4), st.integers(0, 30),
       st.sampled_from([16, 32]), st.integers(1, 5), st.booleans())
def test_work_list_puts_the_tiles_with_most_keys_first(q_lens, extra, rows, pack, causal):
    # mutant: a tile's last query counted one row past its end (`- 1` dropped), which moves
    # the last tile of a sequence whose rows a pack does not divide
    indptr = np.concatenate([[0], np.cumsum(q_lens)])
    lens = np.array(q_lens) + extra
    expected = sorted(_tile_keys(indptr, lens, rows, causal, pack), key=lambda t: -t[2])
    got = work_list(indptr, lens, rows, causal, pack)
    assert got.dtype == np.int32
    assert [tuple(t) for t in got] == [(b, first) for b, first, _ in expected]


# ---- prefill_plan: the tables' values --------------------------------------------------------

def test_prefill_tables_refuse_one_query_more_than_the_sequence_holds():
    # mutant: `q_lens > lens + 1` took a query whose key is not in the cache
    indptr = np.array([0, 2, 5], np.int64)
    tables = np.zeros((2, 2), np.int32)
    check_prefill_tables(indptr, tables, np.array([2, 3], np.int32), 4)
    with pytest.raises(ValueError, match=r"^qo_indptr: sequence 1 has 3 queries but "
                                         r"seq_lens\[1\] is 2"):
        check_prefill_tables(indptr, tables, np.array([2, 2], np.int32), 4)


def test_a_prefill_batch_may_hold_a_sequence_of_no_tokens():
    # mutant: the tables checked with min_len=1, refusing an empty sequence (no queries, no
    # keys) that the plan skips
    indptr = np.array([0, 0, 2], np.int32)
    tables = np.array([[-1], [0]], np.int32)   # the empty sequence reads no page
    lens = np.array([0, 2], np.int32)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, 2, 1, 32, 4, "float16")
    assert w.total_q == 2 and w.max_page == 0 and "for 1 seq" in w.variant


def test_a_variant_for_every_sequence_leaves_out_those_without_queries():
    # mutant: `q_lens >= 0` counted a sequence of no queries into the launch (and its keys
    # into the int32 bounds) though no tile of it runs
    w = BatchPrefillWrapper().plan(np.array([0, 0, 2], np.int32), np.array([[0], [0]], np.int32),
                                   np.array([3, 2], np.int32), 2, 1, 32, 4, "float16", warps=4)
    assert w.variant == "w4r1k64u2 for 1 seq"


def test_an_empty_qo_indptr_is_refused_by_name():
    # mutant: an empty qo_indptr read at [0], failing in NumPy (an IndexError naming nothing)
    with pytest.raises(ValueError, match=r"^qo_indptr: expected \[batch \+ 1\] offsets from 0, "
                                         r"got an empty array"):
        BatchPrefillWrapper().plan(np.zeros(0, np.int32), np.zeros((0, 1), np.int32),
                                   np.zeros(0, np.int32), 2, 1, 32, 4, "float16")


# ---- prefill_wrapper: its run's refusals, made before a launch -------------------------------

def _prefill_plan():
    """Two sequences (2 and 3 tokens, 2 and 1 queries) over pages 0 and 1 of 4 tokens, in
    bfloat16; the entries past their pages (7, 99) are padding that no kernel reads."""
    return BatchPrefillWrapper().plan(np.array([0, 2, 3], np.int32),
                                      np.array([[0, 7], [1, 99]], np.int32),
                                      np.array([2, 3], np.int32), 2, 1, 32, 4, "bfloat16")


def _prefill_inputs(num_pages):
    """q, k_cache, v_cache of _prefill_plan's sizes, over `num_pages` pages."""
    return (np.zeros((3, 2, 32), BF16), np.zeros((num_pages, 4, 1, 32), BF16),
            np.zeros((num_pages, 4, 1, 32), BF16))


def test_the_prefill_plan_reads_only_the_pages_its_sequences_use():
    # mutant: the largest page id taken over the whole table, padding included (99), so a
    # run over the two pages read was refused
    assert _prefill_plan().max_page == 1


def test_a_prefill_run_refuses_a_cache_without_the_largest_planned_page():
    # mutant: `cache.shape[0] < max_page` took a cache of pages 0..max_page-1, and the kernel
    # read page max_page past its end
    w = _prefill_plan()
    q, k, v = _prefill_inputs(num_pages=1)
    with pytest.raises(ValueError, match=r"^k_cache: the plan reads page 1 but the cache has "
                                         r"1 pages"):
        w.run(q, k, v)


def test_a_bfloat16_prefill_on_the_cpu_refuses_numpy_uint16():
    # mutant: the CPU took NumPy uint16 for bfloat16 as the GPU takes CuPy's: on the CPU those
    # are integers, read as bfloat16 bits
    w = _prefill_plan()
    q, k, v = _prefill_inputs(num_pages=2)
    with pytest.raises(TypeError, match=r"^q: expected dtype bfloat16 \(as planned\), got "
                                        r"uint16 \(bfloat16 bits\?"):
        w.run(q.view(np.uint16), k, v)
    with pytest.raises(TypeError, match=r"^k_cache: expected dtype bfloat16"):
        w.run(q, k.view(np.uint16), v)


# ---- validate: the cache and tables every decode checks --------------------------------------

def _decode_inputs(num_pages=3):
    """A float32 decode batch of 2 sequences (5 and 3 tokens), 4 query heads over 2 KV heads."""
    rng = np.random.default_rng(247)
    q = rng.standard_normal((2, 4, 16)).astype(np.float32)
    k = rng.standard_normal((num_pages, 4, 2, 16)).astype(np.float32)
    return q, k, k.copy(), np.array([[0, 1], [2, 0]], np.int32), np.array([5, 3], np.int32)


def test_a_v_cache_of_another_dtype_than_k_cache_is_refused():
    # mutant: the caches' dtypes never compared: a float16 v_cache beside a float32 k_cache
    q, k, v, tables, lens = _decode_inputs()
    with pytest.raises(TypeError, match=r"^v_cache: expected the dtype of k_cache \(float32\), "
                                        r"got float16"):
        reference_partials(q, k, v.astype(np.float16), tables, lens, 4)


def test_a_page_id_equal_to_the_page_count_is_out_of_range():
    # mutant: `tables > num_pages` took page id num_pages, one past the cache's last page
    q, k, v, tables, lens = _decode_inputs(num_pages=3)
    tables[1, 0] = 3
    with pytest.raises(ValueError, match=r"^block_tables\[1, 0\]: page id 3 is out of range "
                                         r"for a cache of 3 pages"):
        reference_partials(q, k, v, tables, lens, 4)
    tables[1, 0], tables[1, 1] = 2, 3   # past sequence 1's one page: padding, never read
    assert reference_partials(q, k, v, tables, lens, 4)[0].shape == (2, 4, 2)


def test_a_query_of_another_head_dim_than_the_cache_is_refused():
    # mutant: q's head_dim never compared with the cache's last dimension
    q, k, v, tables, lens = _decode_inputs()
    with pytest.raises(ValueError, match=r"^q: expected head_dim 16 \(the cache's last "
                                         r"dimension\), got 8 in shape \(2, 4, 8\)"):
        reference_partials(np.ascontiguousarray(q[..., :8]), k, v, tables, lens, 4)


# ---- wrappers: what BatchDecodeWrapper.plan keeps, and refuses -------------------------------

@pytest.mark.parametrize("lens, max_page", [((5, 1), 3), ((4, 1), 2), ((8, 2), 3)])
def test_the_decode_plan_reads_every_page_a_sequence_uses_and_no_padding(lens, max_page):
    # mutants: the largest page id taken over the whole row (99, padding), or over
    # floor(len / page_size) pages (a sequence's last, partial page left out), so that a run
    # took a cache without the page the kernel reads
    tables = np.array([[2, 3, 99], [1, 99, 99]], np.int32)
    w = BatchDecodeWrapper().plan(tables, np.array(lens, np.int32), 4, 2, 64, 4, "float16")
    assert w.max_page == max_page


@pytest.mark.parametrize("num_heads, chunk", [(8, 8), (4, 16), (2, 16)])
def test_compressed_simt_blocks_of_eight_heads_load_eight_codes(num_heads, chunk):
    # mutant: `gmax > QUANT_NARROW_GMAX` never narrowed the loads (a block holds at most 8
    # heads), the 16-code loads that spill registers at 8 heads (wrappers._quant_options)
    w = BatchDecodeWrapper().plan(np.array([[0]], np.int32), np.array([3], np.int32),
                                  num_heads, 1, 64, 16, "float16", kernel="simt",
                                  kv_dtype="int8")
    options = w._launches[0][0].options   # the compiled decode kernel's -D options
    assert f"-DCHUNK_BYTES={chunk}" in options


def test_decode_plan_refuses_zero_splits_by_name_and_keeps_its_plan():
    # mutant: num_splits checked from 0, so plan failed dividing by zero, naming nothing
    tables, lens = np.array([[0, 1]], np.int32), np.array([5], np.int32)
    w = BatchDecodeWrapper().plan(tables, lens, 4, 2, 64, 4, "float16", num_splits=2)
    before = (w.part_len, w.max_parts, w.grid)
    with pytest.raises(ValueError, match=r"^num_splits: expected an int >= 1, got 0"):
        w.plan(tables, lens, 4, 2, 64, 4, "float16", num_splits=0)
    assert (w.part_len, w.max_parts, w.grid) == before == (3, 2, (2, 2, 1))


def test_an_empty_decode_batch_plans_no_launch_and_keeps_no_earlier_one():
    # mutant: the partitions of no sequence planned (the max of an empty array: NumPy's error)
    w = BatchDecodeWrapper().plan(np.array([[0]], np.int32), np.array([3], np.int32),
                                  4, 2, 64, 4, "float16")
    assert w.grid is not None
    w.plan(np.zeros((0, 1), np.int32), np.zeros(0, np.int32), 4, 2, 64, 4, "float16")
    assert (w.grid, w.part_len, w.max_parts) == (None, 0, 0)
    assert w.describe() == "simt: 0 sequences, nothing to launch"


@pytest.mark.parametrize("dtype, head_dim", [("float16", 128), ("bfloat16", 64)])
def test_gqa_of_two_heads_per_kv_head_runs_on_tensor_cores_on_the_gpu(dtype, head_dim):
    # mutant: a group of 2 taken for multi-head attention (its SIMT rule)
    assert choose_kernel("auto", dtype, 2, head_dim, on_gpu=True, batch=1, tokens=64) == \
        "tensor_core"
    assert choose_kernel("auto", dtype, 1, head_dim, on_gpu=True, batch=1, tokens=64) == "simt"


def test_a_bfloat16_decode_on_the_cpu_refuses_numpy_uint16():
    # mutant: the CPU run took every dtype of the plan's array_dtypes, NumPy uint16 among them,
    # and read integers as bfloat16 bits (they are bits on CuPy, and in a torch tensor's view)
    w = BatchDecodeWrapper().plan(np.array([[0]], np.int32), np.array([3], np.int32),
                                  4, 2, 64, 4, "bfloat16")
    q, k = np.zeros((1, 4, 64), np.uint16), np.zeros((1, 4, 2, 64), np.uint16)
    with pytest.raises(TypeError, match=r"^q: the plan is for bfloat16: expected dtype "
                                        r"bfloat16, got uint16 \(bfloat16 bits\?"):
        w.run(q, k, k.copy())


def test_a_repeated_sequence_names_both_of_its_entries():
    # mutant: the first entry named as the one before the repeat, not where it stands
    with pytest.raises(ValueError, match=r"^seq_ids\[3\]: sequence 5 appears twice \(entries 0 "
                                         r"and 3\)"):
        refuse_repeats([5, 6, 7, 5])


# ---- validate_out: the byte ranges of what a kernel writes and reads -------------------------

def test_byte_range_spans_every_element_of_a_view_whatever_its_strides():
    # mutants: the last element's bytes left out of the range, or a negative stride taken as
    # a positive one (a reversed view's range ran past its end)
    buf = np.zeros(24, np.float32)
    start = buf.ctypes.data
    assert byte_range(buf[4:10]) == (start + 16, start + 40)
    assert byte_range(buf[4:10][::-1]) == (start + 16, start + 40)
    assert byte_range(buf.reshape(4, 6)[::-1, ::2]) == (start, start + 4 * 23)
    assert byte_range(buf[:0]) == (0, 0)


def test_an_output_sharing_only_one_element_with_an_input_is_refused():
    # the same two mutants, through the checks the entry points call
    buf = np.zeros(16, np.float32)
    q, out = buf[:8].reshape(2, 4), buf[7:15].reshape(2, 4)   # q's last float is out's first
    with pytest.raises(ValueError, match=r"^out: shares memory with q"):
        check_out(out, q=q)
    check_out(buf[8:16].reshape(2, 4), q=q)   # the next one, adjacent: no shared byte
    reversed_q = buf[:8][::-1]                # its range is buf[0:8] however it is walked
    with pytest.raises(ValueError, match=r"^k: shares memory with q"):
        check_disjoint("k", buf[:1], q=reversed_q)
    check_disjoint("k", buf[8:9], q=reversed_q)


# ---- validate_values: infinities refused by name ---------------------------------------------

def test_scales_of_rows_with_infinities_name_the_first():
    # mutants: the infinite values let through (the scale inf), or the last of them named
    x = np.ones((2, 2, 16), np.float32)
    x[1, 0, 3] = np.inf
    x[1, 1, 5] = -np.inf
    with pytest.raises(ValueError, match=r"^x: expected finite values within float32's range "
                                         r"\(\+-3.4e38\), got x\[1, 0, 3\] = inf"):
        static_scales(x, "int8")
    with pytest.raises(ValueError, match=r"got x\[1, 0, 3\] = inf"):
        per_token_scales(x, "fp8_e4m3")


# ---- distributed.shard: the step's buffer and rank 0's refusal -------------------------------

def test_pack_tables_refuses_lengths_of_another_batch_by_name():
    # mutant: seq_lens' shape unchecked: one length was broadcast to every sequence
    tables = np.array([[0], [1]], np.int32)
    with pytest.raises(ValueError, match=r"^seq_lens: expected shape \(2,\), got \(1,\)"):
        pack_tables(tables, np.array([3], np.int32), 4, 2)


def test_head_range_refuses_a_negative_rank():
    # mutant: rank checked from -1, which owned heads -1..-1 (an empty slice of every cache)
    with pytest.raises(ValueError, match=r"^rank: expected an int >= 0, got -1"):
        head_range(-1, 2, 8, 4)
    assert head_range(1, 2, 8, 4) == (2, 4, 4, 8)


def test_unpack_refuses_a_max_batch_whose_rows_would_end_inside_the_table():
    # mutant: `body // max_batch >= pages` read a buffer packed for 2 rows of 2 pages as 3 rows
    # of 1 page, and returned the table from the wrong offset
    buf = pack_tables(np.array([[5, 6]], np.int32), np.array([7], np.int32), 2, 2)
    tables, lens = unpack_tables(buf, 2)
    assert tables.tolist() == [[5, 6]] and lens.tolist() == [7]
    with pytest.raises(ValueError, match=r"^buf: 8 entries, not a size pack_tables fills for "
                                         r"max_batch=3"):
        unpack_tables(buf, 3)


def test_unpack_refuses_a_header_of_negative_pages():
    # mutant: pages < 0 let through to a reshape that fails naming nothing
    buf = pack_tables(np.array([[5, 6]], np.int32), np.array([7], np.int32), 2, 2)
    buf[1] = -1
    with pytest.raises(ValueError, match=r"^buf: its header says 1 rows of -1 pages, a negative"):
        unpack_tables(buf, 2)


def test_a_refusal_header_of_an_unknown_kind_is_refused_by_name():
    # mutant: a kind past OTHER_KIND passed the check and failed with an IndexError
    message = refusal_message(TypeError("no"))
    words = refusal_header(REFUSAL_WORDS, TypeError("no"))
    assert isinstance(refusal_error(words, message), TypeError)
    words[1] = OTHER_KIND + 1
    with pytest.raises(ValueError, match=rf"^header: expected \({REFUSED}, 0..{OTHER_KIND}, 2, "
                                         r"0\)"):
        refusal_error(words, message)


def test_a_long_refusal_crosses_to_its_last_byte():
    # mutant: the message cut one byte short
    text = "x" * 2000 + "\u00e9\u4e2d"
    message = refusal_message(ValueError(text))
    assert bytes(message).decode("utf-8") == text
    assert refusal_header(REFUSAL_WORDS, ValueError(text))[2] == message.size == 2005


def test_step_bytes_takes_lengths_up_to_int32():
    # mutant: a length of 2^31, which the int32 buffer cannot carry, was counted
    assert step_bytes([INT32_MAX], 8, 8, 64, 2**20, 2).kv_read == INT32_MAX * 2 * 4 * 64 * 2
    with pytest.raises(ValueError, match=rf"^seq_lens\[1\]: expected a length <= {INT32_MAX}"):
        step_bytes([1, INT32_MAX + 1], 8, 8, 64, 2**20, 2)


def test_a_refusal_header_needs_room_for_its_words():
    # mutant: a capacity below the refusal's words failed in NumPy, naming nothing
    with pytest.raises(ValueError, match=rf"^capacity: expected an int >= {REFUSAL_WORDS}, "
                                         rf"got {REFUSAL_WORDS - 1}"):
        refusal_header(REFUSAL_WORDS - 1, ValueError("no"))


# ---- engine.adaptive: the page size chosen, and the dry run's counts -------------------------

PROMPTS, OUTPUTS = [3, 10, 17], [5, 9, 2]


def test_a_page_size_whose_waste_equals_the_target_is_taken():
    _, waste = choose_page_size(PROMPTS, OUTPUTS, candidates=(4, 8, 16))
    assert waste[4] < waste[8] < waste[16]
    # mutant: `w < max_waste` left out the page size exactly at the target
    assert choose_page_size(PROMPTS, OUTPUTS, (4, 8, 16), max_waste=waste[8])[0] == 8


def test_with_no_page_size_under_the_target_the_smallest_is_taken():
    # mutant: the largest candidate taken where none fits
    assert choose_page_size(PROMPTS, OUTPUTS, (16, 4, 8), max_waste=0.0)[0] == 4


def test_a_waste_target_past_one_is_refused():
    # mutant: max_waste checked against 0 only (1.5 of the slots: every page size fits)
    with pytest.raises(ValueError, match=r"^max_waste: expected a share of the slots in \[0, 1\], "
                                         r"got 1.5"):
        choose_page_size(PROMPTS, OUTPUTS, max_waste=1.5)


def _dry_run_of(mode, caching=False):
    """Three requests in a pool of 12 pages of 4 tokens: one is preempted once."""
    config = EngineConfig(page_size=4, num_pages=12, max_num_batched_tokens=64, watermark=0.0,
                          enable_prefix_caching=caching, preemption_mode=mode,
                          num_host_pages=16 if mode == "swap" else 0)
    return dry_run(config, [8, 8, 8], [12, 12, 12])


def test_a_swapped_request_counts_as_preempted_and_waiting():
    # mutants: a swap not counted among the preemptions, and a swapped request not among
    # those waiting (the steps measured by waste_fraction and mean_running)
    swap, recompute = _dry_run_of("swap"), _dry_run_of("recompute")
    assert (swap.preemptions, swap.recomputed_tokens) == (1, 0)
    assert recompute.preemptions == 1 and recompute.recomputed_tokens > 0
    assert swap.series["waiting"].tolist() == recompute.series["waiting"].tolist()
    assert max(swap.series["waiting"]) == 1


def test_a_request_preempted_by_recompute_finds_its_own_pages_in_the_prefix_cache():
    # mutant: the dry run never offered computed pages to the prefix cache
    assert _dry_run_of("recompute", caching=True).recomputed_tokens < \
        _dry_run_of("recompute").recomputed_tokens


def test_the_dry_run_counts_held_memory_in_token_slots():
    # mutant: pages counted where slots are meant (fewer than the tokens they hold)
    run = _dry_run_of("recompute")
    held, tokens = run.series["held"], run.series["tokens"]
    assert (held % 4 == 0).all() and (held >= tokens).all() and (held > tokens).any()


def _dry_run_series(running, waiting):
    n = len(running)
    series = {"running": np.array(running), "waiting": np.array(waiting),
              "held": np.full(n, 8), "tokens": np.arange(1, n + 1)}
    return DryRun(EngineConfig(), n, n, 0, 0, series)


def test_the_dry_run_measures_the_steps_where_requests_wait_or_else_every_step():
    # mutants: every step measured though some waited, or none where none waited (NaN)
    waiting = _dry_run_series([1, 4, 1], [0, 2, 0])
    assert waiting.mean_running == 4.0 and waiting.waste_fraction == pytest.approx(1 - 2 / 8)
    idle = _dry_run_series([1, 4, 1], [0, 0, 0])
    assert idle.mean_running == 2.0 and idle.waste_fraction == pytest.approx(1 - 6 / 24)


def test_dry_run_prompts_share_no_prefix():
    # mutant: every prompt 0, 1, 2, ...: the second request found the first one's pages in the
    # prefix cache, and the run measured a workload of shared prompts
    runs = []
    for caching in (True, False):
        config = EngineConfig(page_size=4, num_pages=32, max_num_batched_tokens=64,
                              watermark=0.0, max_num_seqs=1, max_prefill_chunk=4,
                              enable_prefix_caching=caching)
        run = dry_run(config, [16, 16], [2, 2])
        runs.append((run.steps, run.series["tokens"].tolist()))
    assert runs[0] == runs[1] == (10, [4, 8, 12, 16, 0] * 2)


def test_dry_run_stops_after_max_steps():
    # mutant: `steps <= max_steps` ran one step more
    assert dry_run(EngineConfig(), [16, 16], [20, 20], max_steps=3).steps == 3
