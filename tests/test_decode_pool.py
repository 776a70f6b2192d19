"""decode_mma_rows.cu's pool (POOL): the plan keeps each sequence's last tiles out of the blocks'
balanced ranges and cuts them into small entries that each block takes, one at a time (an atomic
counter per KV head), once its own range is done. On the CPU executor against the float64
reference: every token covered once, entries crossing sequence ends, more blocks than
entries, a sequence wholly in the pool, and two launches of one plan (the counter must be
zero again after the first, or the second computes no entry).
"""
import numpy as np
import pytest

from pagedattn_lab import decode_plan as dp
from pagedattn_lab import decode_work as dw
from pagedattn_lab.wrappers import BatchDecodeWrapper

from .decode_cases import check_close, cpu_executor_has, decode_problem, poisoned, reference
from .test_decode_balanced import covered

needs_wmma = pytest.mark.skipif(not cpu_executor_has("mma.h"),
                                reason="the CPU executor's shim has no WMMA (mma.h) yet")


@pytest.mark.parametrize("lens,tile_t,ranges,pool,tiles_per", [
    ([1, 63, 64, 65, 300, 2, 7], 16, 3, 0.3, 2), ([5000, 17], 64, 11, 0.1, 4),
    ([100] * 40, 16, 7, 0.5, 3), ([32768] * 8, 64, 33, 0.1, 4)])
def test_pool_segments_cover_every_token_once(lens, tile_t, ranges, pool, tiles_per):
    lens = np.array(lens)
    seg = dw.balanced_segments(lens, tile_t, ranges, 10_000, pool, tiles_per)
    assert all((h == 1).all() for h in covered(lens, tile_t, seg))
    tiles = -(-lens // tile_t)
    pooled = np.minimum(np.floor(pool * tiles).astype(int), tiles - 1) // tiles_per * tiles_per
    assert seg.pool == (pooled // tiles_per).sum()
    assert seg.blocks == min(ranges, (tiles - pooled).sum())
    b, start, end, _ = seg.segs.T
    per_range = np.add.reduceat(-(-(end - start) // tile_t), seg.seg_ptr[:-1])
    static, entries = per_range[:seg.blocks], per_range[seg.blocks:]
    assert static.max() - static.min() <= 1 and static.sum() == (tiles - pooled).sum()
    assert (entries == tiles_per).all() and (np.diff(seg.seg_ptr[seg.blocks:]) == 1).all()
    first = seg.seg_ptr[seg.blocks]   # the entries: each sequence's last tiles, round robin
    assert (end[first:] > tiles[b[first:]] * tile_t - pooled[b[first:]] * tile_t).all()
    if seg.pool > 1:
        assert b[first] != b[first + 1] or (pooled > 0).sum() == 1
    ptr = seg.kernel_ptr(77)          # as the kernel reads it
    b = seg.blocks
    assert (ptr[:b + 1] == seg.seg_ptr[:b + 1]).all() and list(ptr[b + 1:b + 3]) == [seg.pool, 77]
    assert (ptr[b + 3:] == seg.seg_ptr[b:]).all()


def test_pool_falls_back_when_its_entries_cut_a_sequence_too_often(monkeypatch):
    monkeypatch.setattr(dw, "TC_POOL", 0.5)   # 20 entries of one tile in one sequence
    monkeypatch.setattr(dw, "TC_POOL_TILES", 1)
    cfg = dp.tc_config("float16", 64, 4, warps=4, tile_t=64, stages=2, impl="rows", pool=True)
    _, seg = dw.tc_work(np.array([64 * 40]), cfg, 2, 4, 2, max_parts=6, num_splits=None,
                        scheme="balanced")
    assert seg.pool == 0 and seg.max_parts <= 6


SHAPES = [dict(warps=4, tile_t=64, stages=2), dict(warps=2, tile_t=32, stages=2),
          dict(warps=1, tile_t=16, stages=2, q_regs=False)]   # (Q read from its buffer per tile)


@needs_wmma
@pytest.mark.parametrize("shape", SHAPES, ids=["W4 T64", "W2 T32", "W1 T16 Q in smem"])
@pytest.mark.parametrize("lens,pool,tiles", [
    ([1, 15, 16, 17, 200, 3, 70], 0.4, 1),     # entries of one tile, across sequence ends
    ([300, 2, 129], 0.9, 2),                   # most of it pooled: whole sequences in the pool
    ([260], 0.5, 1),                           # one sequence, more blocks than entries (T64)
    ([1, 1, 1, 1, 1, 30, 1, 1, 1, 90], 0.6, 1)])   # one-tile ranges and entries in a row
def test_pool_against_the_reference(rng, monkeypatch, shape, lens, pool, tiles):
    """The copies run on from a block's range into the entries it takes (no drain), each
    segment's Q in the buffer of its place along the block's stream."""
    monkeypatch.setattr(dw, "TC_POOL", pool)
    monkeypatch.setattr(dw, "TC_POOL_TILES", tiles)
    args = decode_problem(rng, lens, num_heads=8, num_kv_heads=2, head_dim=64)
    q, k, v, tables, lens = args
    cfg = dp.tc_config("float16", 64, 4, impl="rows", pool=True, **shape)
    assert "-DPOOL=1" in cfg.options and cfg.pool
    w = BatchDecodeWrapper().plan(tables, lens, 8, 2, 64, 16, "float16", kernel="tensor_core")
    w._launches = []
    w._plan_tensor_core(lens, None, tc=cfg, ranges=3)
    assert w.scheme == "balanced" and 1 <= w.grid[0] <= 3 and w.max_parts > 1
    ref = reference(args)
    for _ in range(2):   # the second launch needs the pool counters back at zero
        check_close(w.run(q, k, v, out=poisoned(q.shape, "float16")), ref, "float16")


@needs_wmma
def test_pool_kernel_on_one_partition_per_block(rng):
    """A POOL kernel on an items plan (num_splits): a pool of none, every block's one take
    past it, the counter zeroed by the last."""
    args = decode_problem(rng, [70, 5, 130], num_heads=8, num_kv_heads=2, head_dim=64)
    q, k, v, tables, lens = args
    cfg = dp.tc_config("float16", 64, 4, impl="rows", pool=True, warps=4, tile_t=64, stages=2)
    w = BatchDecodeWrapper().plan(tables, lens, 8, 2, 64, 16, "float16", kernel="tensor_core")
    w._launches = []
    w._plan_tensor_core(lens, 2, tc=cfg)
    assert w.scheme == "items"
    for _ in range(2):
        check_close(w.run(q, k, v, out=poisoned(q.shape, "float16")), reference(args), "float16")


def test_pool_wants_the_block_pipeline_over_two_stages():
    with pytest.raises(ValueError, match="pool"):
        dp.tc_config("float16", 128, 4, impl="rows", pool=True, warps=4, tile_t=64, stages=3)
    with pytest.raises(ValueError, match="pool"):
        dp.tc_config("float16", 128, 4, impl="rows", pool=True, warps=4, tile_t=64, stages=2,
                     warp_pipe=True)
