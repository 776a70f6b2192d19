"""The PTX tensor-core decodes' balanced work (stream-K): the plan's segments (decode_work.
balanced_segments, pure NumPy) and both kernels streaming them across sequence boundaries on
the CPU executor, against the float64 reference: decode_mma.cu (the heads as the rows of the
tile) and decode_mma_rows.cu (the tokens as the rows, groups up to 16).

A block streams the tiles of its range back to back: its copies run on into the next
segment, whose Q is copied in the group of its first tile into one of STAGES Q buffers, and
each segment ends with the warps' merge into its output or partial state (the last block of
a split sequence merges). The awkward cases: sequences of one token (one-tile segments, many
in a row: the Q buffers rotate faster than the pipeline drains), lengths around the page
and the tile, ranges that end mid-page and mid-tile, a sequence shorter than one range, a
range spanning three or more sequences, more ranges than tiles, shared pages, NaN in unused
tail slots, outputs poisoned; every compile-time shape family (warp pipelines or the block's,
pairs of warps, several row tiles, stages 2-4, head sizes 64-256, bf16, compressed pages).
"""
import numpy as np
import pytest

from pagedattn_lab import decode_plan as dp
from pagedattn_lab import decode_work as dw
from pagedattn_lab.wrappers import BatchDecodeWrapper

from .decode_cases import check_close, cpu_executor_has, decode_problem, poisoned, reference
from .test_decode_tc_quant import launch, quantized

needs_wmma = pytest.mark.skipif(not cpu_executor_has("mma.h"),
                                reason="the CPU executor's shim has no WMMA (mma.h) yet")


# ---- the plan ------------------------------------------------------------------------------
def covered(lens, tile_t, seg):
    """Per sequence, how many times each token is covered by the segments."""
    hits = [np.zeros(n, np.int64) for n in lens]
    for b, start, end, _ in seg.segs:
        hits[b][start:end] += 1
    return hits


@pytest.mark.parametrize("cost", [0, 1, 2.5])
@pytest.mark.parametrize("lens,tile_t,ranges", [
    ([1], 64, 1), ([1], 64, 5),                          # more ranges than tiles
    ([1, 63, 64, 65, 300, 2, 7], 64, 3),                 # ranges spanning 3+ sequences
    ([5000, 17], 64, 11), ([100] * 40, 16, 7), ([33, 4096, 512], 32, 264),
    ([1] * 30 + [70, 1, 1, 900], 16, 9)])                # one-tile sequences in a row
def test_balanced_segments_cover_every_token_once_in_equal_ranges(lens, tile_t, ranges, cost):
    """Every token once, tiles from each segment's start, every range at least a tile; the
    ranges' costs (tiles + `cost` per segment) equal up to a tile and a segment's cost on
    either side of a cut (equal tile counts, +-1, at cost 0)."""
    lens = np.array(lens)
    seg = dw.balanced_segments(lens, tile_t, ranges, max_parts=10_000, segment_cost=cost)
    assert all((h == 1).all() for h in covered(lens, tile_t, seg))
    b, start, end, packed = seg.segs.T
    assert (start % tile_t == 0).all() and (end > start).all()   # tiles from each start
    tiles = -(-(end - start) // tile_t)
    per_block = np.add.reduceat(tiles, seg.seg_ptr[:-1])
    total = int((-(-lens // tile_t)).sum())
    assert seg.seg_ptr[0] == 0 and seg.seg_ptr[-1] == len(seg.segs)
    assert len(per_block) == min(ranges, total) and (np.diff(seg.seg_ptr) > 0).all()
    assert per_block.sum() == total and seg.range_tokens == per_block.max() * tile_t
    block_cost = per_block + cost * np.diff(seg.seg_ptr)
    assert block_cost.max() - block_cost.min() <= 1 + (2 * (1 + cost) + cost if cost else 0)
    # parts: numbered 0 .. parts - 1 within each sequence; slots only for split sequences
    part, parts = packed & 0xffff, packed >> 16
    for s in range(lens.size):
        mine = b == s
        assert sorted(part[mine]) == list(range(mine.sum())) and (parts[mine] == mine.sum()).all()
    split = np.bincount(b, minlength=lens.size) > 1
    assert seg.slots == int(np.bincount(b)[split].sum())
    assert seg.max_parts == int(np.bincount(b).max())


def test_balanced_segments_example():
    """Tiles of 4 tokens: lengths 9, 2, 4, 13 are 3 + 1 + 1 + 4 = 9 tiles; 3 ranges of 3."""
    seg = dw.balanced_segments(np.array([9, 2, 4, 13]), 4, 3, max_parts=99, segment_cost=0)
    rows = [(b, s, e, p & 0xffff, p >> 16) for b, s, e, p in seg.segs.tolist()]
    assert rows == [(0, 0, 9, 0, 1),                                  # range 0: sequence 0
                    (1, 0, 2, 0, 1), (2, 0, 4, 0, 1), (3, 0, 4, 0, 2),   # range 1: three
                    (3, 4, 13, 1, 2)]                                 # range 2: the rest of 3
    assert seg.seg_ptr.tolist() == [0, 1, 4, 5]
    assert seg.slot_start.tolist() == [0, 0, 0, 0] and seg.slots == 2


def test_segment_costs_move_tiles_to_blocks_with_fewer_segments():
    """The same example with a sequence start costing 2 tiles: 9 tiles + 4 starts x 2 = 17,
    5.67 a range; range 1 (three segments, cost 9 at equal tiles) now ends before sequence
    3, whose 4 tiles go to range 2 whole: costs 5, 6, 6 and no sequence split. On D64's
    lengths (the bench) the heaviest block by tiles + segments gets lighter than with equal
    tile counts."""
    seg = dw.balanced_segments(np.array([9, 2, 4, 13]), 4, 3, max_parts=99, segment_cost=2)
    rows = [(b, s, e, p >> 16) for b, s, e, p in seg.segs.tolist()]
    assert rows == [(0, 0, 9, 1), (1, 0, 2, 1), (2, 0, 4, 1), (3, 0, 13, 1)]
    assert seg.seg_ptr.tolist() == [0, 1, 3, 4] and seg.slots == 0
    lens = np.random.default_rng(0).integers(512, 4097, 64)
    heaviest = {}
    for cost in (0, 1):
        s = dw.balanced_segments(lens, 64, 49, 64, segment_cost=cost)
        tiles = -(-(s.segs[:, 2] - s.segs[:, 1]) // 64)
        heaviest[cost] = (np.add.reduceat(tiles, s.seg_ptr[:-1]) + np.diff(s.seg_ptr)).max()
    assert heaviest[1] < heaviest[0]
    assert dw.balanced_segments(lens, 64, 49, 64).segs.tolist() == s.segs.tolist()   # default
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="segment_cost"):
            dw.balanced_segments(lens, 64, 49, 64, segment_cost=bad)


def test_balanced_segments_respect_the_merge_limit():
    """A sequence is never cut into more parts than the merge has room for: fewer ranges."""
    seg = dw.balanced_segments(np.array([64 * 1000]), 64, 264, max_parts=100)
    assert seg.max_parts <= 100 and len(seg.seg_ptr) - 1 <= 100


@pytest.mark.parametrize("resident,sms,grid_y", [(3, 132, 8), (2, 132, 8), (3, 132, 5),
                                                (1, 4, 3), (2, 4, 16)])
def test_balanced_ranges_fit_in_one_wave(resident, sms, grid_y):
    """One range per resident slot, rounded down: a range more than the slots hold waits for
    a second wave (3 blocks per SM, 132 SMs, 8 KV heads: 49.5 slots per KV head; 50 ranges
    each were 400 blocks for 396 slots and ran 1.35x slower on the H200)."""
    cfg = dp.tc_config("float16", 128, 4, impl="rows")
    lens = np.full(64, 4096)
    _, seg = dw.tc_work(lens, cfg, grid_y, sms, resident, max_parts=10_000, num_splits=None,
                        scheme="balanced")
    blocks = (seg.seg_ptr.size - 1) * grid_y
    assert blocks <= max(resident * sms, grid_y)   # (one range per KV head at the least)
    assert blocks > resident * sms - grid_y        # and no more than a range's slots idle


def test_item_segments_are_the_partitions():
    seg = dw.item_segments(np.array([5, 12, 1, 9]), 4)
    assert (np.diff(seg.seg_ptr) == 1).all()
    got = sorted((b, s, e) for b, s, e, _ in seg.segs.tolist())
    assert got == [(0, 0, 4), (0, 4, 5), (1, 0, 4), (1, 4, 8), (1, 8, 12), (2, 0, 1),
                   (3, 0, 4), (3, 4, 8), (3, 8, 9)]


# ---- the kernel on the CPU executor -------------------------------------------------------
def planned(args, heads, kv, head_dim, page, dtype, cfg, ranges, scheme="balanced"):
    q, k, v, tables, lens = args
    w = BatchDecodeWrapper().plan(tables, lens, heads, kv, head_dim, page, dtype,
                                  kernel="tensor_core")
    w._launches = []
    w._plan_tensor_core(lens, None, tc=cfg, scheme=scheme, ranges=ranges)
    assert w.scheme == scheme
    return w


def check_rows(out, ref, dtype):
    """check_close, and each sequence on its own (a wrong short sequence among long ones)."""
    check_close(out, ref, dtype)
    for b in range(ref.shape[0]):
        check_close(out[b], ref[b], dtype)


CASES = [
    # dtype, heads, kv, head_dim, page, lens, ranges, shape (tc_config keywords)
    ("float16", 8, 2, 64, 16, [1, 15, 16, 17, 200, 3, 70], 5, {}),   # planner's (warp pipes)
    ("float16", 8, 2, 64, 16, [1, 15, 16, 17, 200, 3, 70], 5,
     dict(warps=4, tile_t=64, stages=3)),                           # the block's pipeline
    ("float16", 8, 2, 128, 256, [255, 257, 3, 600], 7,               # ranges end mid-page
     dict(warps=4, tile_t=64, stages=3, warp_pipe=True)),
    ("float16", 4, 1, 64, 1, [1, 2, 40, 9], 3, dict(warps=2, tile_t=32, stages=2)),   # page 1
    ("float16", 8, 2, 64, 7, [1] * 9 + [50, 1, 1, 1, 30], 3,         # one-tile segments in a row
     dict(warps=2, tile_t=32, stages=4, warp_pipe=True)),
    ("float16", 8, 2, 64, 7, [1] * 9 + [50, 1, 1, 1, 30], 4, dict(warps=1, tile_t=16, stages=3)),
    ("float16", 16, 1, 128, 16, [1, 90, 17, 33], 6, {}),             # MQA: 8 warps in pairs
    ("float16", 40, 2, 64, 16, [130, 3, 64], 4, {}),                 # group 20: two row tiles
    ("float16", 64, 1, 32, 8, [20, 9, 70], 3, {}),                   # group 64: four row tiles
    ("float16", 4, 2, 256, 16, [70, 1, 40], 5, {}),                  # head 256: pairs
    ("float16", 16, 1, 80, 16, [33, 5, 64], 4, dict(warps=8, tile_t=64, stages=3, d_split=5)),
    ("bfloat16", 8, 2, 64, 16, [1, 17, 100], 3, {}),
    ("float16", 8, 2, 64, 16, [300], 40, {}),                        # more ranges than tiles
    ("float16", 8, 2, 64, 16, [1, 15, 16, 17, 200, 3, 70], 5,        # merged by a second launch
     dict(separate_merge=True)),
    ("float16", 40, 2, 64, 16, [130, 3, 64], 4, dict(separate_merge=True)),
]


IMPLS = ("mma", "rows")


@needs_wmma
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype,heads,kv,head_dim,page,lens,ranges,shape", CASES)
def test_balanced_ranges_against_the_reference(rng, impl, dtype, heads, kv, head_dim, page,
                                               lens, ranges, shape):
    if dtype == "bfloat16" and not cpu_executor_has("cuda_bf16.h"):
        pytest.skip("the CPU executor's shim has no bfloat16 (cuda_bf16.h) yet")
    if impl == "rows" and (heads // kv > dp.ROWS_MAX_GROUP or "separate_merge" in shape):
        pytest.skip("decode_mma_rows.cu: groups up to 16, merged by the last block")
    args = decode_problem(rng, lens, page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=head_dim, dtype=dtype)
    q = args[0]
    cfg = dp.tc_config(dtype, head_dim, heads // kv, impl=impl, **shape)
    assert cfg.impl == impl
    w = planned(args, heads, kv, head_dim, page, dtype, cfg, ranges)
    assert len(w._launches) == 1 + cfg.separate_merge
    assert w.grid[0] == min(ranges, sum(-(-n // cfg.tile_t) for n in lens))
    for scale in (None, 0.05):   # twice: the merge counters were reset by the first launch
        out = launch(w, *args[:3], None, None, poisoned(q.shape, dtype), scale)
        check_rows(out, reference(args, scale), dtype)


@needs_wmma
@pytest.mark.parametrize("impl", IMPLS)
def test_balanced_ranges_over_shared_pages(rng, impl):
    args = decode_problem(rng, [40, 50, 37, 90], page_size=16, num_heads=8, num_kv_heads=2,
                          shared_prefix=2)
    w = planned(args, 8, 2, 64, 16, "float16", dp.tc_config("float16", 64, 4, impl=impl), 5)
    out = launch(w, *args[:3], None, None, poisoned(args[0].shape, "float16"))
    check_rows(out, reference(args), "float16")


COMPRESSED = [("mma", "int8", "static", 128), ("mma", "fp8_e4m3", "per_token", 128),
              ("rows", "int8", "static", 128), ("rows", "fp8_e4m3", "static", 128),
              ("rows", "int8", "per_token", 256), ("rows", "fp8_e4m3", "per_token", 128)]


@needs_wmma
@pytest.mark.parametrize("impl,kv_dtype,scheme,head_dim", COMPRESSED)
def test_balanced_ranges_over_compressed_pages(rng, impl, kv_dtype, scheme, head_dim):
    """Ranges ending mid-page and mid-tile (7 ranges over 128-token tiles of 6 sequences)."""
    args = decode_problem(rng, [1, 130, 17, 64, 3, 300], page_size=16, num_heads=8,
                          num_kv_heads=2, head_dim=head_dim)
    q, k, v, tables, lens = args
    kc, vc, ks, vs, kd, vd = quantized(rng, args, kv_dtype, scheme)
    cfg = dp.tc_config("float16", head_dim, 4, dp.KV_QUANT_IDS[kv_dtype], scheme == "per_token",
                       impl=impl)
    w = planned(args, 8, 2, head_dim, 16, "float16", cfg, 7)
    out = launch(w, q, kc, vc, ks, vs, poisoned(q.shape, "float16"))
    check_rows(out, reference((q, kd, vd, tables, lens)), "float16")


@needs_wmma
def test_the_planner_balances_and_says_so(rng):
    """Automatic plans on decode_mma.cu take balanced ranges when the sequences need more
    blocks than one wave holds (the CPU executor counts 4 SMs x 2 blocks); one partition per
    block when they fit in one wave, or when num_splits asks for partitions."""
    lens = [70, 33, 5, 300, 17, 1, 129]
    q, k, v, tables, lens = decode_problem(rng, lens, num_heads=8, num_kv_heads=2)
    w = BatchDecodeWrapper().plan(tables, lens, 8, 2, 64, 16, "float16", kernel="tensor_core")
    assert w.scheme == dw.TC_SCHEME == "balanced" and "balanced ranges" in w.describe()
    check_rows(w.run(q, k, v, out=poisoned(q.shape, "float16")), reference((q, k, v, tables, lens)),
               "float16")
    few = BatchDecodeWrapper().plan(tables[:4], lens[:4], 8, 2, 64, 16, "float16",
                                    kernel="tensor_core")
    assert few.scheme == "items" and "partitions of" in few.describe()
    w = BatchDecodeWrapper().plan(tables, lens, 8, 2, 64, 16, "float16", kernel="tensor_core",
                                  num_splits=3)
    assert w.scheme == "items" and w.max_parts == 3


@needs_wmma
def test_the_planner_balances_rows_too(rng, monkeypatch):
    """decode_mma_rows.cu takes the same work rules: balanced ranges past one wave, and says
    which kernel and layout it runs."""
    monkeypatch.setattr(dp, "TC_IMPL", "rows")
    lens = [70, 33, 5, 300, 17, 1, 129] * 3   # more blocks than one wave (CPU: 4 SMs)
    q, k, v, tables, lens = decode_problem(rng, lens, num_heads=8, num_kv_heads=2)
    w = BatchDecodeWrapper().plan(tables, lens, 8, 2, 64, 16, "float16", kernel="tensor_core")
    text = w.describe()
    assert w.scheme == "balanced" and "balanced ranges" in text
    assert "16 tokens as its rows (kernels/decode_mma_rows.cu)" in text
    check_rows(w.run(q, k, v, out=poisoned(q.shape, "float16")), reference((q, k, v, tables, lens)),
               "float16")


@needs_wmma
@pytest.mark.parametrize("kv_dtype,scheme,work", [("int8", "static", "balanced"),
                                                  ("fp8_e4m3", "per_token", "balanced")])
def test_rows_over_codes_take_the_measured_scheme(rng, monkeypatch, kv_dtype, scheme, work):
    """decode_mma_rows.cu over codes: both scale schemes on balanced ranges past one wave
    (ROWS_STATIC_CODES_SCHEME None since the ranges fit the resident slots; measured)."""
    monkeypatch.setattr(dp, "TC_IMPL", "rows")
    args = decode_problem(rng, [70, 33, 5, 300, 17, 1, 129] * 3, num_heads=8, num_kv_heads=2,
                          head_dim=128)
    q, k, v, tables, lens = args
    kc, vc, ks, vs, kd, vd = quantized(rng, args, kv_dtype, scheme)
    cfg = dp.tc_config("float16", 128, 4, dp.KV_QUANT_IDS[kv_dtype], scheme == "per_token")
    assert cfg.impl == "rows" and cfg.scheme == (None if work == "balanced" else work)
    w = BatchDecodeWrapper().plan(tables, lens, 8, 2, 128, 16, "float16", kernel="tensor_core")
    w._launches = []
    w._plan_tensor_core(lens, None, tc=cfg)
    assert w.scheme == work
    out = launch(w, q, kc, vc, ks, vs, poisoned(q.shape, "float16"))
    check_rows(out, reference((q, kd, vd, tables, lens)), "float16")


@pytest.mark.parametrize("lens,scheme,stages", [
    ([20000, 20000], "items", 2),     # one wave of long items (8 x 32k on the H200)
    ([3000], "items", 3),              # one wave of short items (1 x 32k): warp pipes S3
    ([300] * 40, "balanced", 2)])      # past one wave: balanced ranges
def test_rows_planner_shape_follows_the_work(lens, scheme, stages):
    """decode_mma_rows.cu, fp16 at head_dim 128 (measured, decode_plan.ROWS_SHAPES and
    ROWS_SHORT_ITEMS): two stages of the block's pipeline (3 blocks per SM) for balanced
    ranges and long items, warp pipelines over three stages for one wave of short items."""
    tables = np.arange(len(lens) * 1250, dtype=np.int32).reshape(len(lens), 1250)
    w = BatchDecodeWrapper().plan(tables, np.array(lens, np.int32), 8, 2, 128, 16, "float16",
                                  kernel="tensor_core")
    cfg = w.tc_config
    assert (w.scheme, cfg.impl, cfg.stages, cfg.warp_pipe) == (scheme, "rows", stages,
                                                                stages == 3)
    if scheme == "items":
        assert (w.part_len < dp.ROWS_SHORT_ITEMS) == (stages == 3)


@pytest.mark.parametrize("lens,grid_y,scheme", [
    ([4096, 3000] + [512] * 62, 4, "balanced"),   # uneven: items would keep 4096 whole
    ([32768] * 8, 8, "items"),                    # equal lengths (8 x 32k)
    ([3000], 8, "items"),                         # one sequence (1 x 32k's shape)
    ([700, 650, 600, 640], 8, "items")])          # near-equal: within ONE_WAVE_ITEMS_MAX
def test_one_wave_of_items_only_where_it_is_even(lens, grid_y, scheme):
    """Sequences that fit one wave unsplit take one partition per block only while the
    longest partition is at most ONE_WAVE_ITEMS_MAX times a balanced range (H200 counts:
    132 SMs, 2 resident blocks)."""
    cfg = dp.tc_config("float16", 128, 4, impl="rows")
    lens = np.array(lens, np.int64)
    got, segs = dw.tc_work(lens, cfg, grid_y, 132, 2, 64, None)
    assert got == scheme, (got, segs.range_tokens)
