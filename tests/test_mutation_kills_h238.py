"""Tests that kill mutants of the host-side core (paging, the prefix cache's pool, the KV
cache manager, the scheduler, quant, the decode planner's partitions, the simulators) under
which every earlier test still passed. Each test names the mutant it kills."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pagedattn_lab import decode_work as dw
from pagedattn_lab import quant
from pagedattn_lab.csr import from_csr
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.request import Request, SamplingParams
from pagedattn_lab.cache import PagedKVCache
from pagedattn_lab.paging import BlockAllocator
from pagedattn_lab.sim_memory import FirstFit


# -- paging ----------------------------------------------------------------------------------

def test_unallocate_refuses_a_page_listed_twice_and_changes_nothing():
    # mutant: unallocate without its check_owners: the second removal of the repeated page
    # failed (KeyError) after the first was done, the page lost from both the free list and
    # the pages in use
    alloc = BlockAllocator(4)
    pages = alloc.allocate(2)
    before = alloc.state()
    with pytest.raises(ValueError, match=r"^pages\[1\]: page 0 is listed 2 times"):
        alloc.unallocate([pages[0], pages[0]])
    assert alloc.state() == before
    alloc.check_invariants()


# -- quant -----------------------------------------------------------------------------------

TINY = np.float32(np.finfo(np.float32).tiny)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
def test_a_per_token_scale_is_never_subnormal(kv_dtype):
    # mutant: the scale's floor at the smallest normal float32 dropped: amax 1e-37 over qmax
    # is subnormal, a scale of 0 to a kernel built with -ftz (x / 0 saturates every code)
    x = np.array([[1e-37, -5e-38, 0.0, 0.0]], np.float32)
    assert quant.per_token_scales(x, kv_dtype).tolist() == [TINY]


def test_the_smallest_normal_float32_is_kept_not_flushed():
    # mutant: `abs(x) < tiny` -> `<= tiny`: a row whose amax is exactly the smallest normal
    # float32 was flushed to zeros (scale 1, codes 0) though the kernel keeps it
    x = np.array([[TINY, 0.0]], np.float32)
    assert quant.per_token_scales(x, "int8").tolist() == [TINY]
    codes, scales = quant.quantize_rows(x[None], "int8", "per_token")
    assert codes.tolist() == [[[1, 0]]] and scales.tolist() == [[TINY]]


@pytest.mark.parametrize("bad", [0.0, -1.0, 1e-40, float("nan")])
def test_a_single_bad_scale_is_not_offered_to_be_spread(bad):
    # mutant: the finite-and-normal test of refuse_single_number dropped: the hint told the
    # learner to spread 0 (or NaN, or a subnormal) over every head with np.full
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"^scale: .* each finite, > 0 and not subnormal; got "
                                         r"the single number [^;]*$"):
        quant.quantize(x, "int8", bad)


# -- decode_work -----------------------------------------------------------------------------

@pytest.mark.parametrize("lens, ranges, max_parts, cost", [
    ([7, 153, 146], 17, 1, 0.0), ([63, 48, 158, 175], 2, 1, 1.0),
    ([141, 46, 153, 11], 11, 2, 1.0)])
def test_balanced_segments_never_cut_a_sequence_into_more_parts_than_the_merge_holds(
        lens, ranges, max_parts, cost):
    # mutant: `parts.max() <= max_parts` -> `<= max_parts + 1`: a sequence cut into one part
    # more than the merge kernel has partial-state room for
    seg = dw.balanced_segments(np.array(lens), 16, ranges, max_parts, segment_cost=cost)
    assert seg.parts.max() <= max_parts and seg.max_parts <= max_parts
    covered = np.zeros(sum(lens), bool)   # and still every token, once
    for s, start, end, _ in seg.segs:
        covered[sum(lens[:s]) + start:sum(lens[:s]) + end] ^= True
    assert covered.all()


@given(st.lists(st.integers(1, 300), min_size=1, max_size=6), st.integers(1, 24),
       st.integers(1, 4), st.sampled_from([0.0, 1.0]))
def test_balanced_segments_respect_max_parts(lens, ranges, max_parts, cost):
    seg = dw.balanced_segments(np.array(lens), 16, ranges, max_parts, segment_cost=cost)
    assert seg.parts.max() <= max_parts


# -- csr -------------------------------------------------------------------------------------

def test_from_csr_refuses_a_last_page_length_for_a_sequence_without_pages():
    # mutant: the `last != 0` check of an empty sequence dropped: last_page_len 3 of a
    # sequence with no pages was taken (length 0), hiding a CSR table built wrong
    i32 = np.int32
    with pytest.raises(ValueError, match=r"^last_page_len\[1\]: expected 1\.\.4 .*\(0 without\), "
                                         r"got 3$"):
        from_csr(np.array([0, 1, 1], i32), np.array([5], i32), np.array([2, 3], i32), 4)
    tables, lens = from_csr(np.array([0, 1, 1], i32), np.array([5], i32),
                            np.array([2, 0], i32), 4)
    assert tables.tolist() == [[5], [-1]] and lens.tolist() == [2, 0]


def test_from_csr_refuses_a_length_past_int32_below_two_to_the_32():
    # mutant: the int32 limit on the lengths taken as 2^32: 3 pages of 2^30 tokens (3 x 2^30,
    # past 2^31 - 1) came back as a negative int32 seq_len
    i32 = np.int32
    with pytest.raises(ValueError, match=r"^indptr, last_page_len: sequence 0 has 3 pages of "
                                         r"1073741824 tokens, 3221225472 in all"):
        from_csr(np.array([0, 3], i32), np.array([0, 1, 2], i32), np.array([2**30], i32), 2**30)


def test_from_csr_refuses_more_last_page_lengths_than_sequences():
    # mutant: `last.shape[0] != pages.size` -> `<`: an extra entry (the CSR arrays of another
    # batch) was taken without a word
    i32 = np.int32
    with pytest.raises(ValueError, match=r"^last_page_len: expected 1 entries \(one per "
                                         r"sequence\), got 2$"):
        from_csr(np.array([0, 1], i32), np.array([5], i32), np.array([2, 1], i32), 4)


def test_choose_tc_part_len_counts_a_partial_partition_as_a_block():
    # mutant: the blocks a partition length gives counted as floor(len / part_len): partial
    # partitions are blocks too, so 2559, 3776 and 4752 tokens in 4096-token partitions
    # already fill 4 blocks (1 + 1 + 2) on one SM, and 4096 is the length to take
    lens = np.array([2559, 3776, 4752])
    assert dw.choose_tc_part_len(lens, 1, 1, 64, blocks_per_sm=4) == 4096
    assert dw.choose_tc_part_len(lens, 1, 1, 64, blocks_per_sm=5) == 2048


def test_tc_token_reach_of_partitions_shorter_than_a_tile_is_the_last_tile_end():
    # mutant: the reach taken as seq_len + part_len - 1 alone: with partitions of 10 tokens
    # and tiles of 64, the last partition (tokens 90..99) has its tile end at 90 + 64 - 1,
    # past 100 + 10 - 1, and the int32 check would look at the smaller count
    reach = dw.tc_token_reach(np.array([100, 7]), 64, part_len=10)
    assert reach.tolist() == [153, 63]


# -- sim_memory ------------------------------------------------------------------------------

def test_first_fit_merges_a_freed_run_with_its_neighbours():
    # mutant: adjacency tested as `start + size == s + 1`: runs freed side by side stayed two
    # holes, and a request as large as the whole space never fitted again
    space = FirstFit(10)
    a, b, c = space.allocate(3), space.allocate(3), space.allocate(4)
    space.free(a, 3)
    space.free(c, 4)
    space.free(b, 3)
    assert space.holes == [(0, 10)] and space.allocate(10) == 0


# -- cache -----------------------------------------------------------------------------------

def test_decode_pages_needed_counts_one_copy_of_a_tail_every_owner_leaves():
    # mutant: the shared tails all of whose owners take part priced once per owner: a and its
    # fork b share a partly filled page; a copies it, then b finds it its own (no copy), so
    # the step takes 1 page, not 2 (a scheduler would refuse a step that fits)
    cache = PagedKVCache(num_pages=4, page_size=4, num_kv_heads=1, head_dim=2, device="cpu")
    a = cache.add_sequence()
    cache.append(a, np.ones((2, 1, 2), np.float32), np.ones((2, 1, 2), np.float32))
    b = cache.fork_sequence(a)
    free = cache.allocator.num_free
    assert cache.decode_pages_needed([a, b]) == 1
    for s in (a, b):
        cache.append(s, np.ones((1, 1, 2), np.float32), np.ones((1, 1, 2), np.float32))
    assert free - cache.allocator.num_free == 1


def test_a_failed_transaction_puts_back_rows_saved_twice_as_they_first_were():
    # mutant: the undo log replayed oldest first: a copy on write saves the whole fresh page
    # (here a recycled one, holding 7s), then the write saves its slot again (by then the
    # copy's); replayed in that order, the slot kept the copy, not the page's 7
    def rows(n, value):
        return np.full((n, 1, 2), value, np.float32)
    cache = PagedKVCache(num_pages=2, page_size=4, num_kv_heads=1, head_dim=2, device="cpu")
    c = cache.add_sequence()
    cache.append(c, rows(4, 7.0), rows(4, 7.0))
    cache.free_sequence(c)
    a = cache.add_sequence()
    cache.append(a, rows(2, 1.0), rows(2, 1.0))   # the other page
    b = cache.fork_sequence(a)
    k, v = cache.k_cache.copy(), cache.v_cache.copy()
    with pytest.raises(KeyboardInterrupt), cache.transaction():
        cache.append(b, rows(1, 5.0), rows(1, 5.0))   # copies the shared tail into page c had
        raise KeyboardInterrupt
    assert np.array_equal(cache.k_cache, k) and np.array_equal(cache.v_cache, v)
    assert cache.block_table(b) == cache.block_table(a)


def test_block_tables_of_sequences_without_pages_keep_one_padding_column():
    # mutant: the width's floor of one column dropped: empty sequences gave a table of
    # shape (n, 0), which no kernel's row stride (the table's width) can address
    cache = PagedKVCache(num_pages=2, page_size=4, num_kv_heads=1, head_dim=2, device="cpu")
    a, b = cache.add_sequence(), cache.add_sequence()
    tables, lens = cache.block_tables([a, b])
    assert tables.tolist() == [[-1], [-1]] and lens.tolist() == [0, 0]
    assert cache.block_tables([])[0].shape == (0, 1)


# -- kv_manager ------------------------------------------------------------------------------

def test_a_request_swaps_out_into_exactly_as_many_host_pages_as_it_needs():
    # mutant: `host.num_free >= pages` -> `>`: a request whose computed tokens fill every
    # free host page was recomputed (its work thrown away) instead of swapped out
    kv = KVCacheManager(8, 2, num_host_pages=2)
    req = Request(0, [1, 2, 3, 4, 5], SamplingParams())
    kv.admit(req, [], 0, 5)
    req.num_computed_tokens = 5   # three pages' worth: one more than the host has
    assert not kv.can_swap_out(req)
    req.num_computed_tokens = 4   # two full pages computed (the forward's doing)
    assert kv.can_swap_out(req)
    kv.swap_out(req)
    assert len(req.host_pages) == 2 and kv.host.num_free == 0 and req.pages == []
