"""Hunt 150: int32 token counts near 2^31 in the tensor-core decodes and the prefill wrapper.

Hunt 145 bounded the SIMT decode (decode_simt_plan.check_token_range). The other kernels count
tokens in int32 too, and their plans took lengths past what those counts hold:
- decode_mma.cu / decode_mma_rows.cu: a segment's tile cursor steps t0 += TILE_T
  (kernels/decode_tc_tiles.cuh, advance_tile; last_of_segment): past 2^31 - 1 it goes
  negative, passes `t0 >= end` and keeps streaming tiles at negative tokens (shown below on
  the CPU executor), reading the block table before its row;
- decode_tc.cu (compressed pages at head_dim 64): every block counts its sequence's
  partitions as seq_len + part_len - 1 (num_splits=1 wraps from 2^30 + 1 tokens on) and its
  last tile ends at start + ntiles x TILE_T - 1; over compressed pages every tensor-core
  kernel addresses a token by its 32-bit unsigned slot (page x page_size + place);
- prefill_mma.cu / prefill_tc.cu (prefill_tiles.cuh): the key loop's slot lookup runs
  `stages` tiles ahead of the tile computed, up to key k0 + (stages + 1) x kv_tile - 1; a
  block's packed rows end at rho0 + rows.
Plans only at those sizes (a table listing page 0 thousands of times over large pages): each
refused just above the bound, naming the argument, and planned at it.
"""
import re

import numpy as np
import pytest

from pagedattn_lab import BatchDecodeWrapper, BatchPrefillWrapper, decode_plan as dp, kernels
from pagedattn_lab.decode_work import tc_token_reach
from pagedattn_lab.prefill_plan import Variant, check_int32_ranges

INT32_MAX = 2**31 - 1
PAGE = 2**19                          # 4096 entries of page 0: 2^31 slots of one page
WIDE_ROW = np.zeros((1, 4096), np.int32)


def plan_decode(length, w=None, tables=WIDE_ROW, page_size=PAGE, head_dim=64, **kw):
    return (w or BatchDecodeWrapper()).plan(tables, np.array([length], np.int32), 8, 1,
                                            head_dim, page_size, "float16",
                                            kernel="tensor_core", **kw)


# ---- the PTX decodes (decode_mma.cu, decode_mma_rows.cu): the segments' tile cursor ----
@pytest.mark.parametrize("length, num_splits, past", [
    (2**31 - 63, None, 2**31),        # the last tile starts at 2^31 - 64: the next at 2^31
    (INT32_MAX, 1, 2**31),            # one segment of every tile
    (INT32_MAX, 3, 2**31 + 22),       # segments from 715827883 x p: tiles off the 64 grid
])
def test_tc_plan_refuses_lengths_whose_tile_cursor_passes_int32(length, num_splits, past):
    """These plans were taken; the kernel's cursor would have wrapped to -2^31 and streamed
    on (test_the_tile_cursor_wraps_where_the_plan_says below)."""
    w = BatchDecodeWrapper()
    with pytest.raises(ValueError, match=rf"^seq_lens\[0\]: {length} tokens: the tensor-core "
                       rf"kernel \(decode_mma\.cu, tiles of 64\) counts a sequence's tokens in "
                       rf"int32, and the tile past its last would start at {past}, past "
                       rf"2\^31 - 1 \(up to {2**31 - 64} tokens always fit\)$"):
        plan_decode(length, w, num_splits=num_splits)
    assert w.kernel is None   # nothing planned


@pytest.mark.parametrize("num_splits", [None, 1, 7])
def test_tc_plan_takes_the_longest_length_its_cursor_counts(num_splits):
    w = plan_decode(2**31 - 64, num_splits=num_splits)
    assert w.kernel == "tensor_core" and w.tc_config.source == "decode_mma"


def test_rows_kernel_plan_has_the_same_bound():
    """decode_mma_rows.cu (the planner's at head_dim 128, GQA 8) streams the same cursor."""
    assert plan_decode(2**31 - 64, head_dim=128).tc_config.source == "decode_mma_rows"
    with pytest.raises(ValueError, match=r"^seq_lens\[0\]: 2147483585 tokens: the tensor-core "
                                         r"kernel \(decode_mma_rows\.cu, tiles of 64\)"):
        plan_decode(2**31 - 63, head_dim=128)


def test_tc_plan_refusal_keeps_the_previous_plan():
    w = plan_decode(1000)
    before = dict(w.__dict__)
    with pytest.raises(ValueError, match=r"^seq_lens\[0\]: 2147483647 tokens"):
        plan_decode(INT32_MAX, w)
    assert w.__dict__.keys() == before.keys()
    assert all(w.__dict__[k] is v for k, v in before.items())


def test_one_shot_tensor_core_decode_refuses_a_length_its_cursor_wraps(monkeypatch):
    """paged_attention_decode(kernel="tensor_core") plans through the same check: refused by
    name before anything runs (pages of 2^16 tokens: a small cache). It used to launch: on the
    CPU executor, a kernel over 2^31 tokens that never came back."""
    from pagedattn_lab import paged_attention_decode

    def no_run(*args, **kwargs):
        raise AssertionError("launched: the plan took the length")
    monkeypatch.setattr(BatchDecodeWrapper, "run", no_run)
    page = 2**16
    q = np.zeros((1, 8, 64), np.float16)
    k = np.zeros((1, page, 1, 64), np.float16)
    tables = np.zeros((1, 2**15), np.int32)
    with pytest.raises(ValueError, match=r"^seq_lens\[0\]: 2147483585 tokens: the tensor-core"):
        paged_attention_decode(q, k, k.copy(), tables, np.array([2**31 - 63], np.int32),
                               kernel="tensor_core")


# The cursor alone (decode_tc_tiles.cuh's first_tile / advance_tile, decode_mma.cu's headers),
# on the CPU executor: the t0 of every tile of one segment (at most `steps`), then the count.
CURSOR_HEADERS = ("common.cuh", "kv_quant.cuh", "kv_convert.cuh", "mma_ptx.cuh",
                  "decode_tc_sizes.cuh", "decode_mma_layout.cuh", "decode_tc_tiles.cuh")
CURSOR_KERNEL = r'''
extern "C" __global__ void cursor_tiles(const int* segs, const int* seg_ptr, int* t0s, int steps)
{
    TileCursor c = first_tile(segs, seg_ptr);
    int n = 0;
    for (; n < steps && tile_valid(c); ++n) {
        t0s[n] = c.t0;
        advance_tile(c, segs);
    }
    t0s[steps] = n;
}
'''


@pytest.fixture(scope="module")
def cursor():
    from pagedattn_lab.cpu import RawKernel
    cfg = dp.tc_config("float16", 64, 8)   # the planner's decode_mma.cu shape: tiles of 64
    assert cfg.tile_t == 64
    source = "".join(kernels.source(h) + "\n" for h in CURSOR_HEADERS) + CURSOR_KERNEL
    kern = RawKernel(source, "cursor_tiles", options=cfg.options)

    def tiles(start, end, steps=4):
        t0s = np.full(steps + 1, 7, np.int32)
        kern((1,), (1,), (np.array([[0, start, end, 1 << 16]], np.int32),
                          np.array([0, 1], np.int32), t0s, np.int32(steps)))
        return t0s[:t0s[-1]].tolist()
    return tiles


@pytest.mark.parametrize("start, end", [(0, 1), (5, 200), (100, 228), (2**31 - 128, 2**31 - 64),
                                        (2**31 - 100, 2**31 - 37)])
def test_the_cursor_stops_where_tc_token_reach_says(cursor, start, end):
    """tc_token_reach is the kernel's own count: the t0 the cursor steps to after a segment's
    last tile (within int32)."""
    t0s = cursor(start, end)
    reach = tc_token_reach(np.array([end]), 64, np.array([[0, start, end, 1 << 16]]))
    assert t0s == list(range(start, end, 64)) and t0s[-1] + 64 == reach[0] <= INT32_MAX


@pytest.mark.parametrize("start, end", [(2**31 - 128, 2**31 - 63), (2**31 - 64, INT32_MAX)])
def test_the_tile_cursor_wraps_where_the_plan_says(cursor, start, end):
    """One token more than the bound: the cursor's t0 wraps to -2^31 and it keeps going (on the
    GPU: tiles at negative tokens, block-table entries read before the row)."""
    t0s, tiles = cursor(start, end), list(range(start, end, 64))
    assert t0s == tiles + [-2**31 + 64 * i for i in range(4 - len(tiles))]   # never stops
    reach = tc_token_reach(np.array([end]), 64, np.array([[0, start, end, 1 << 16]]))
    assert reach[0] == 2**31


# ---- decode_tc.cu (compressed pages at head_dim 64): partitions' count, 32-bit slots ----
@pytest.mark.parametrize("length, num_splits, part_len, reach", [
    (2**30 + 1, 1, 2**30 + 1, 2**31 + 1),        # seq_len + part_len - 1: nparts wraps
    (INT32_MAX, None, 178956992, 2326440638),    # the automatic 12 partitions
    (INT32_MAX, 2, 2**30, 3221225470),
])
def test_wmma_plan_refuses_lengths_whose_partition_count_passes_int32(length, num_splits,
                                                                      part_len, reach):
    w = BatchDecodeWrapper()
    with pytest.raises(ValueError, match=rf"^seq_lens\[0\]: {length} tokens in partitions of "
                       rf"{part_len}: the tensor-core kernel \(decode_tc\.cu, tiles of 64\) "
                       rf"counts .* reaches {reach}, past 2\^31 - 1"):
        plan_decode(length, w, num_splits=num_splits, kv_dtype="fp8_e4m3")
    assert w.kernel is None


@pytest.mark.parametrize("length, num_splits", [(2**30, 1), (1_900_000_000, 12)])
def test_wmma_plan_takes_the_longest_lengths_it_counts(length, num_splits):
    w = plan_decode(length, num_splits=num_splits, kv_dtype="fp8_e4m3")
    assert w.tc_config.source == "decode_tc"
    assert length + w.part_len - 1 <= INT32_MAX


@pytest.mark.parametrize("kv", [dict(kv_dtype="fp8_e4m3"),
                                dict(kv_dtype="int8", scale_scheme="per_token")])
def test_compressed_tc_plan_refuses_pages_past_32_bit_slots(kv):
    """copy_tile (COPY_SLOTS over codes) addresses a token by page x page_size + place in 32
    unsigned bits: page 2^25 of 128 slots starts at 2^32 (the slot 0's address again)."""
    w = BatchDecodeWrapper()
    with pytest.raises(ValueError, match=r"^block_tables: page 33554432 x page_size 128 is "
                                         r"past the tensor-core kernel's 32-bit cache slots"):
        plan_decode(1, w, np.array([[2**25]], np.int32), 128, **kv)
    assert w.kernel is None
    assert plan_decode(1, None, np.array([[2**25 - 1]], np.int32), 128, **kv).max_page == \
        2**25 - 1   # its last slot is 2^32 - 1
    assert plan_decode(1, None, np.array([[2**25]], np.int32), 128).max_page == 2**25  # 16-bit


# ---- the prefill wrapper (prefill_tiles.cuh) ----
def plan_prefill(q_len, length, w=None, tables=WIDE_ROW, page_size=PAGE, **kw):
    return (w or BatchPrefillWrapper()).plan(np.array([0, q_len], np.int32), tables,
                                             np.array([length], np.int32), 8, 2, 32,
                                             page_size, np.float16, **kw)


@pytest.mark.parametrize("q_len, variant, tile, stages", [
    (1, None, 32, 2),                  # decode-like: the packed launch (mw1r1k32)
    (100, None, 32, 2),                # a chunk over a long prefix (mw4r2k32q at head_dim 32)
    (100, "w4r2k64p3u2", 64, 3),       # the lesson's WMMA kernel, 3 stages
])
def test_prefill_plan_bounds_the_key_loop(q_len, variant, tile, stages):
    """The last tile's look-ahead lookup reaches key k0 + (stages + 1) x tile - 1: refused
    one key past the bound (was planned; wrapped, a negative key passes `key < kv_end`)."""
    bound = 2**31 - stages * tile
    kw = {} if variant is None else dict(variant=variant)
    w = plan_prefill(q_len, bound, **kw)
    before = dict(w.__dict__)
    with pytest.raises(ValueError, match=rf"^seq_lens\[0\]: {bound + 1} keys: the prefill "
                       rf"kernel \(.*tiles of {tile}, {stages} stages\) counts keys in int32, "
                       rf"and its look-ahead reaches key {2**31 + tile - 1}, past 2\^31 - 1 "
                       rf"\(at most {bound} keys\)$"):
        plan_prefill(q_len, bound + 1, w, **kw)
    assert all(w.__dict__[k] is v for k, v in before.items())   # the old plan kept


# The prefill pipeline's look-ahead alone (prefill_tiles.cuh's KvPipeline::lookup_begin, as
# begin_tile calls it for the tile STAGES ahead), on the CPU executor, over one table row.
LOOKAHEAD_KERNEL = r'''
__device__ inline void from_float(float x, __half* p) { *p = __float2half(x); }
#include "prefill_tc_pipeline.cuh"
#include "prefill_tiles.cuh"
extern "C" __global__ void lookahead(const int* table, int k0, int kv_end, int page_size,
                                     int* pages)
{
    KvPipeline p;
    p.table = table;
    p.page_size = page_size;
    p.kv_end = kv_end;
    p.lookup_begin(k0 + STAGES * KV_TILE);
    for (int j = 0; j < SLOTS_PER_THREAD; ++j) pages[threadIdx.x + j * THREADS] = p.page_of[j];
}
'''


def test_the_prefill_look_ahead_reads_before_the_table_past_the_bound():
    """The packed launch's variant (mw1r1k32: 2 stages of 32 keys): at 2^31 - 64 keys the
    last tile's look-ahead finds no key; one more and its first key wraps to -2^31, passes
    `key < kv_end` and reads the block table 4096 entries before its row."""
    from pagedattn_lab.cpu import KernelFault, RawKernel
    from pagedattn_lab.prefill_plan import DECODE_VARIANT
    includes = ("common.cuh", "kv_quant.cuh", "mma_ptx.cuh", "prefill_tc_params.cuh")
    source = "#include <cuda_fp16.h>\n" + "".join(
        kernels.source(h) + "\n" for h in includes) + re.sub(
        r'#include "(\w+\.cuh)"', lambda m: kernels.source(m[1]), LOOKAHEAD_KERNEL)
    kern = RawKernel(source, "lookahead", options=DECODE_VARIANT.options(32) + (
        "-DELEM=__half", "-DKV_QUANT=0", "-DCACHE_T=__half", "-DPER_TOKEN_SCALES=0"))
    table = np.zeros(4096, np.int32)

    def look_ahead(kv_end):
        pages = np.full(32, 9, np.int32)
        kern((1,), (32,), (table, np.int32((kv_end - 1) // 32 * 32), np.int32(kv_end),
                           np.int32(PAGE), pages))
        return pages
    assert (look_ahead(2**31 - 64) == -1).all()   # past the keys: nothing looked up
    with pytest.raises(KernelFault, match=r"out-of-bounds read of 'table' .* element -4096"):
        look_ahead(2**31 - 63)


def test_prefill_plan_bounds_the_packed_rows():
    """512-row tiles (w8r4k32u2) over 2^31 - 100 queries: the last tile ends at row 2^31.
    (Just below, a plan would allocate its 2^31-row output: the check alone is run there.)"""
    with pytest.raises(ValueError, match=r"^qo_indptr: sequence 0 has 2147483548 queries "
                       r"\(2147483548 packed rows\): .* in tiles of 512, and its last tile ends "
                       r"at row 2147483648, past 2\^31 - 1 \(at most 2147483136 rows\)$"):
        plan_prefill(2**31 - 100, 2**31 - 100, variant="w8r4k32u2")
    variant, ok = Variant(8, 4, 32), np.array([True])
    check_int32_ranges(np.array([0, 2**31 - 512]), np.array([2**31 - 512]), ok, variant, 1)
    with pytest.raises(ValueError, match=r"^qo_indptr: sequence 0 has 2147483137 queries"):
        check_int32_ranges(np.array([0, 2**31 - 511]), np.array([2**31 - 511]), ok, variant, 1)


def test_prefill_plan_takes_the_last_int32_slot():
    """The ring keeps page x page_size + place in int32: page 2^28 - 1 of 8 slots ends at slot
    2^31 - 1, which fits (was refused: the check took 2^31 slots for one past the limit)."""
    assert plan_prefill(1, 1, None, np.array([[2**28 - 1]], np.int32), 8).max_page == 2**28 - 1
    with pytest.raises(ValueError, match=r"^block_tables: page 268435456 x page_size 8 is past "
                                         r"the kernel's int32 cache slots"):
        plan_prefill(1, 1, None, np.array([[2**28]], np.int32), 8)
