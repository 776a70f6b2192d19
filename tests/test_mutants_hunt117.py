"""Tests that kill mutants which survived the package's own tests (hunt 117: a hand-driven
mutation test of the core modules). Each test names the mutant it kills: a change a learner
or a refactor could plausibly make, under which every earlier test still passed."""
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.csr import from_csr

I32 = np.int32


# -- csr -------------------------------------------------------------------------------------

def test_from_csr_refuses_an_empty_last_page_of_a_sequence_with_pages():
    # mutant: `last < 1` -> `last < 0`: a sequence of 2 pages with last_page_len 0 became
    # seq_len 4 (one page of 4 and an empty one), read as a length one page short
    with pytest.raises(ValueError, match=r"^last_page_len\[1\]: expected 1\.\.4 .* got 0$"):
        from_csr(np.array([0, 1, 3], I32), np.array([5, 6, 7], I32), np.array([2, 0], I32), 4)


def test_from_csr_refuses_the_padding_id_minus_one_as_a_page():
    # mutant: `indices < 0` -> `indices < -1`: padding (-1) copied from a table into the CSR
    # indices came back as a table entry that reads as padding, inside a sequence's pages
    with pytest.raises(ValueError, match=r"^indices\[1\]: expected a page id >= 0, got -1$"):
        from_csr(np.array([0, 2], I32), np.array([3, -1], I32), np.array([1], I32), 4)


# -- addressing ------------------------------------------------------------------------------

@pytest.mark.parametrize("token, page, offset", [(3, 0, 3), (4, 1, 0), (7, 1, 3), (8, 2, 0)])
def test_virtual_page_and_offset_at_both_edges_of_a_page(token, page, offset):
    # mutant: `token // page_size` -> `(token + 1) // page_size`: the last token of a page was
    # put in the next one; the earlier tests used tokens in the middle of a page
    assert (pl.virtual_page(token, 4), pl.page_offset(token, 4)) == (page, offset)
    t = pl.translate([9, 5, 2], token, 4, 1, 1)
    assert (t.virtual_page, t.offset, t.physical_page) == (page, offset, [9, 5, 2][page])


# -- paging ----------------------------------------------------------------------------------

def test_unallocate_of_returned_pages_restores_their_queue_order():
    # mutant: `extendleft(reversed(ids))` -> `extendleft(ids)`: the returned pages came back
    # in reverse order, so the next allocate handed them out in another order
    alloc = pl.BlockAllocator(4)
    alloc.allocate(4)
    alloc.free([2, 0])
    before = alloc.free_list()
    pages = alloc.allocate(2)
    assert pages == [2, 0]
    alloc.unallocate(pages, never_used=0)
    assert alloc.free_list() == before == [2, 0]
    alloc.check_invariants()


def test_restore_refuses_a_state_that_loses_a_handed_out_page():
    # mutant: `len(pages) != fresh` -> `len(pages) > fresh`: 2 pages handed out but only
    # one listed free or in use; restored, page 1 was neither, lost for good
    from pagedattn_lab.paging import AllocatorState
    alloc = pl.BlockAllocator(4)
    saved = alloc.state()
    with pytest.raises(ValueError, match=r"^state: 2 pages were handed out but 1 are free or "
                                         r"in use \(a page would be lost\)$"):
        alloc.restore(AllocatorState(2, (0,), {}))
    assert alloc.state() == saved


def test_restore_refuses_the_first_page_never_handed_out():
    # mutant: `0 <= p < fresh` -> `0 <= p <= fresh`: page 1 of a state that handed out only
    # page 0 was taken as returned, and then handed out twice (fresh and from the queue)
    from pagedattn_lab.paging import AllocatorState
    alloc = pl.BlockAllocator(4)
    with pytest.raises(ValueError, match=r"^state: page 1 is not among the 1 pages handed out"):
        alloc.restore(AllocatorState(1, (1,), {}))
    assert alloc.free_list() == [0, 1, 2, 3]


# -- split_k ---------------------------------------------------------------------------------

def test_partial_state_is_the_max_its_sum_and_its_average():
    # mutant: `scores.max()` -> `scores.mean()`: the merge still came out right (any m with
    # its own l gives the same weights), so only m and l themselves show it; and scores far
    # apart overflowed exp(score - mean) to inf, l to inf and o to NaN
    from pagedattn_lab.split_k import partial_state
    values = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    m, l, o = partial_state([1.0, 3.0, 2.0], values)
    w = np.exp(np.array([1.0, 3.0, 2.0]) - 3.0)
    assert m == 3.0
    assert l == pytest.approx(w.sum(), rel=1e-15)
    np.testing.assert_allclose(o, w @ values / w.sum(), rtol=1e-15)
    m, l, o = partial_state([0.0, 2000.0], values[:2])
    assert (m, l) == (2000.0, 1.0) and np.isfinite(o).all()


# -- reference -------------------------------------------------------------------------------

def _dense_attend(q, k, v, scale, visible):
    """softmax(q . k[:visible] * scale) @ v[:visible] for one query row, in float64."""
    s = k[:visible] @ q * scale
    w = np.exp(s - s.max())
    return w @ v[:visible] / w.sum()


def test_reference_decode_keeps_float64_inputs_float64():
    # mutant: q cast to float32 (the caches still float64): every test fed float32 queries,
    # which a float32 cast keeps exactly, so the oracle's float64 claim went unchecked
    rng = np.random.default_rng(117)
    q = rng.standard_normal((1, 1, 8))
    k, v = rng.standard_normal((2, 3, 1, 8)), rng.standard_normal((2, 3, 1, 8))
    out = pl.reference_decode(q, k, v, np.array([[1, 0]], I32), np.array([5], I32))
    keys = np.concatenate([k[1], k[0]])[:5, 0]
    vals = np.concatenate([v[1], v[0]])[:5, 0]
    np.testing.assert_allclose(out[0, 0], _dense_attend(q[0, 0], keys, vals, 8 ** -0.5, 5),
                               rtol=1e-13, atol=1e-15)


def test_packed_reference_of_a_chunk_over_a_cached_prefix_is_prefills_last_rows():
    # mutant: `visible = first + arange(1, q_len + 1)` -> `arange(1, q_len + 1)`: a chunk's
    # queries saw only the first keys (top-left alignment); every packed test had q_len ==
    # seq_len, where the two agree
    rng = np.random.default_rng(7)
    k, v = rng.standard_normal((3, 4, 2, 8)), rng.standard_normal((3, 4, 2, 8))
    tables, lens = np.array([[2, 0, 1]], I32), np.array([10], I32)
    q_full = rng.standard_normal((1, 10, 4, 8))
    full = pl.reference_prefill(q_full, k, v, tables, lens)
    q_len = 3
    packed = pl.reference_prefill_packed(q_full[0, -q_len:], k, v, np.array([0, q_len], I32),
                                         tables, lens)
    np.testing.assert_allclose(packed, full[0, -q_len:], rtol=1e-13, atol=1e-15)


# -- quant -----------------------------------------------------------------------------------

def test_int8_encoding_of_nan_is_zero_without_a_cast_warning():
    # mutant: the nan_to_num dropped: NaN cast to int8 happens to give 0 on x86 too, but it is
    # undefined (NumPy warns "invalid value encountered in cast"; other machines give -128)
    from pagedattn_lab import quant
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codes = quant.encode(np.array([np.nan, 1.4, -np.nan], np.float32), "int8")
    np.testing.assert_array_equal(codes, np.array([0, 1, 0], np.int8))


def test_per_token_scales_ignore_nan_as_the_kernels_fmaxf_does():
    # mutant: `np.fmax.reduce` -> `np.max`: a NaN in a row made its amax NaN and its scale 1
    from pagedattn_lab import quant
    x = np.array([[[np.nan, -254.0, 3.0]]], np.float32)
    np.testing.assert_array_equal(quant.per_token_scales(x, "int8"), np.array([[2.0]], np.float32))


def test_check_scale_refuses_a_scale_between_the_limit_and_twice_it():
    # mutant: `arr > limit` -> `arr > 2 * limit`: code 127 x 4e36 is inf in float32, and
    # the only test used a scale far past the limit
    from pagedattn_lab import quant
    limit = float(np.finfo(np.float32).max) / 127
    ok = np.array([limit * 0.99], np.float32)
    assert quant.check_scale(ok, "k_scale", (1,), qmax=127) is not None
    with pytest.raises(ValueError, match=r"^k_scale: expected scales <= .*k_scale\[0\] is"):
        quant.check_scale(np.array([limit * 1.5], np.float32), "k_scale", (1,), qmax=127)


@pytest.mark.parametrize("scale", [np.array([0.5], np.float32),
                                   np.array([[0.5], [4.0]], np.float32)], ids=["static", "per-token"])
def test_quantize_divides_by_the_scale(scale):
    # mutant: `x / scale` -> `x * scale`: quantize was only reached through paths whose
    # scales were 1 or whose round trip tolerance hid it
    from pagedattn_lab import quant
    x = np.array([[[10.0, -20.0]], [[8.0, 3.0]]], np.float32)   # [2 tokens, 1 head, 2]
    codes = quant.quantize(x, "int8", scale)
    np.testing.assert_array_equal(codes, np.rint(x / scale[..., None]).astype(np.int8))
    np.testing.assert_allclose(quant.dequantize(codes, "int8", scale), x,
                               atol=float(scale.max()) / 2)   # half a code


# -- decode_simt_plan ------------------------------------------------------------------------

def test_num_splits_that_does_not_divide_the_longest_sequence():
    # mutants: cut_longest's ceil -> floor (333 tokens: a 4th partition of 1 token), and
    # choose_partitions' max_parts ceil -> floor (2 partitions counted of 3); every earlier
    # case divided evenly
    from pagedattn_lab.decode_simt_plan import choose_partitions
    assert choose_partitions([1000, 10], 1, 132, num_splits=3) == (334, 3)
    assert choose_partitions([1000], 1, 132, num_splits=7) == (143, 7)


def test_automatic_split_stops_at_exactly_the_target_blocks_per_sm():
    # mutant: `< BLOCKS_PER_SM * num_sms` -> `<=`: a grid of exactly 4 blocks per SM was
    # halved once more
    from pagedattn_lab.decode_simt_plan import BLOCKS_PER_SM, choose_partitions
    assert choose_partitions([512] * (BLOCKS_PER_SM * 132), 1, 132) == (512, 1)
    assert choose_partitions([512] * (BLOCKS_PER_SM * 132 - 1), 1, 132) == (256, 2)


@pytest.mark.parametrize("group, gmax", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8)])
def test_group_kernel_size_is_the_smallest_compiled_group_that_holds_it(group, gmax):
    # mutant: `group <= g` -> `group < g`: 1, 2 and 4 heads took the next size up (half the
    # block's heads idle); only the CUDA checks of the quantized kernel noticed
    from pagedattn_lab.decode_simt_plan import group_kernel_size
    assert group_kernel_size(group) == gmax


# -- engine/prefix_cache ---------------------------------------------------------------------

def test_block_hashes_tell_token_ids_past_int16_apart():
    # mutant: the ids hashed as int16: token 70000 hashed as 4464 (70000 - 2**16), a prefix
    # hit on another prompt's block for any vocabulary past 32k tokens
    from pagedattn_lab.engine.prefix_cache import hash_block
    assert hash_block(None, [70000, 1]) != hash_block(None, [70000 - 2**16, 1])
    assert hash_block(None, [2**31 + 5]) != hash_block(None, [5])


def test_lookup_refuses_a_cached_page_whose_tokens_differ():
    # mutant: the token comparison dropped from lookup: a hash registered with other tokens
    # (a collision, or a caller's wrong hash) handed out a page of other tokens' K and V
    from pagedattn_lab.engine.prefix_cache import BlockPool, hash_block
    pool = BlockPool(4)
    page = pool.allocate(1)[0]
    h = hash_block(None, [1, 2])
    assert pool.register(page, h, [1, 2])
    assert pool.lookup(h, [1, 2]) == page
    assert pool.lookup(h, [1, 3]) is None


# -- engine/kv_manager -----------------------------------------------------------------------

def test_one_token_pages_leave_the_last_tokens_cached_page_out_of_the_hits():
    # mutant: cached_prefix returned every hit, not the pages of the computed tokens: with
    # one-token pages the last token's own page came too, to be copied on write only to have
    # its one slot overwritten (the docstring's case; the tests used pages of 4)
    from pagedattn_lab.engine.kv_manager import KVCacheManager
    from pagedattn_lab.engine.request import Request, SamplingParams
    from .engine_fakes import FakeStore
    store = FakeStore(8, 1)
    kv = KVCacheManager(8, 1, store=store)
    first = Request(0, [5, 6, 7], SamplingParams())
    kv.admit(first, [], 0, 3)
    store.write(first, 0, 3)
    first.num_computed_tokens = 3
    kv.register_computed(first)
    hits, computed = kv.cached_prefix(Request(1, [5, 6, 7], SamplingParams()))
    assert (hits, computed) == (first.pages[:2], 2)


def test_decode_refuses_codes_of_another_storage_dtype():
    # mutant: decode's dtype check dropped: int8 codes of an fp8 cache read as e4m3 bits'
    # numbers (code 56 is e4m3 1.0, read as 56.0), float32 values decoded as if codes
    from pagedattn_lab import quant
    with pytest.raises(TypeError, match=r"^codes: expected dtype uint8 \(the codes of fp8_e4m3 "
                                        r"pages\), got int8"):
        quant.decode(np.array([56], np.int8), "fp8_e4m3")
    with pytest.raises(TypeError, match=r"^codes: expected dtype int8 \(the codes of int8 "
                                        r"pages\), got float32"):
        quant.decode(np.array([1.0], np.float32), "int8")


# -- sim -------------------------------------------------------------------------------------

def test_first_fit_takes_a_hole_of_exactly_the_size():
    # mutant: `hole >= size` -> `hole > size`: an exact fit was refused, so a pool with room
    # for exactly one more request admitted none
    from pagedattn_lab.sim_memory import FirstFit
    ff = FirstFit(10)
    assert ff.allocate(4) == 0 and ff.allocate(6) == 4 and ff.holes == []
    ff.free(0, 4)
    assert ff.allocate(4) == 0


@pytest.mark.parametrize("output, reserved", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8)])
def test_reserve_pow2_rounds_the_output_up_to_a_power_of_two(output, reserved):
    # mutant: `max(0, output - 1).bit_length()` -> `max(0, output).bit_length()`: a power of
    # two was doubled (4 tokens reserved 8)
    from pagedattn_lab.sim_memory import Request, reservation
    assert reservation("reserve_pow2", Request(0, 10, 10 + output), 100) == 10 + reserved


def test_free_slots_count_as_external_fragmentation_only_while_requests_wait():
    # mutant: `external = free_slots if queue else 0` -> `free_slots`: once the queue was
    # empty, the free memory of a draining pool was still charged as fragmentation
    from pagedattn_lab.sim import Workload, simulate
    res = simulate("reserve_max", Workload(num_requests=30, seed=1), capacity_tokens=8192)
    idle = res.series["waiting"] == 0
    assert idle.any()
    assert (res.series["external"][idle] == 0).all()
    assert (res.series["free"][idle] > 0).any()
