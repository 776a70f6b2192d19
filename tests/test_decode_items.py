"""One partition per block ("items", decode_work.item_segments) in its two forms: full
partitions and a remainder, longest first (tc_work_list's), or each sequence cut into equal
whole-tile pieces (tile_t) and the blocks in snake order over rounds of one block per SM
(sms); on the CPU executor, decode_mma.cu over both against the float64 reference (MQA 16/1,
the row those forms are for, and GQA), with the split sequences merged by their last block.
"""
import numpy as np
import pytest

from pagedattn_lab import decode_plan as dp
from pagedattn_lab import decode_work as dw

from .decode_cases import decode_problem, poisoned, reference
from .test_decode_balanced import check_rows, needs_wmma, planned
from .test_decode_tc_quant import launch


def sizes_by_sequence(seg, batch):
    """Each sequence's (start, end) pieces, in token order."""
    pieces = [[] for _ in range(batch)]
    for b, start, end, _ in seg.segs.tolist():
        pieces[b].append((start, end))
    return [sorted(p) for p in pieces]


@pytest.mark.parametrize("lens,part_len,tile_t", [
    ([5, 12, 1, 9], 4, 2), ([1], 64, 64), ([1, 64, 65, 640, 641, 1280, 4096], 640, 64),
    ([100] * 7, 30, 64),                                  # partitions shorter than a tile
    (list(np.random.default_rng(0).integers(512, 4097, 64)), 640, 64)])   # D64's lengths
def test_even_items_cut_each_sequence_into_equal_whole_tiles(lens, part_len, tile_t):
    lens = np.array(lens)
    seg = dw.item_segments(lens, part_len, tile_t=tile_t)
    assert (np.diff(seg.seg_ptr) == 1).all()   # one segment per block
    tiles = -(-lens // tile_t)
    assert seg.parts.tolist() == np.minimum(-(-lens // part_len), tiles).tolist()
    for b, pieces in enumerate(sizes_by_sequence(seg, lens.size)):
        assert pieces[0][0] == 0 and pieces[-1][1] == lens[b]           # covers the sequence,
        assert all(e == s for (_, e), (s, _) in zip(pieces, pieces[1:]))   # once, in order
        assert all(s % tile_t == 0 for s, _ in pieces)                   # from tile starts
        counts = [-(-(e - s) // tile_t) for s, e in pieces]
        assert max(counts) - min(counts) <= 1 and sum(counts) == tiles[b]
        assert all(e > s for s, e in pieces)
    size = seg.segs[:, 2] - seg.segs[:, 1]
    assert (np.diff(size) <= 0).all() and seg.range_tokens == size.max()   # longest first
    full = dw.item_segments(lens, part_len)   # the remainder form: same count where P >= tile
    if part_len >= tile_t and part_len % tile_t == 0:
        assert full.segs.shape == seg.segs.shape and size.max() <= full.range_tokens


def test_d64_mqa_even_items_hold_fewer_full_partitions():
    """D64 at 640 tokens: 200 of 264 blocks take a full partition in the remainder form; in
    equal pieces 61 take 600 or more (NOTES.md, "MQA 16/1 (session 4)")."""
    lens = np.random.default_rng(0).integers(512, 4097, 64)
    full = dw.item_segments(lens, 640)
    even = dw.item_segments(lens, 640, tile_t=64)
    assert len(full.segs) == len(even.segs) == 264
    assert ((full.segs[:, 2] - full.segs[:, 1]) == 640).sum() == 200
    assert ((even.segs[:, 2] - even.segs[:, 1]) >= 600).sum() == 61


@pytest.mark.parametrize("tile_t", [None, 2])
def test_snake_order_pairs_long_and_short_blocks(tile_t):
    lens = np.array([5, 12, 1, 9, 3, 7, 2])
    plain = dw.item_segments(lens, 4, tile_t=tile_t)
    snake = dw.item_segments(lens, 4, tile_t=tile_t, sms=3)
    size = lambda s: (s.segs[:, 2] - s.segs[:, 1]).tolist()  # noqa: E731
    a, b = size(plain), size(snake)
    assert sorted(a) == sorted(b) and a == sorted(a, reverse=True)
    assert b[:3] == a[:3] and b[3:6] == a[3:6][::-1] and b[6:9] == a[6:9]   # rounds of 3
    assert sorted(map(tuple, snake.segs[:, :3].tolist())) == \
        sorted(map(tuple, plain.segs[:, :3].tolist()))


@needs_wmma
@pytest.mark.parametrize("heads,kv,head_dim,lens,part_len", [
    (16, 1, 128, [1, 90, 17, 33, 200, 64, 65], 40),   # MQA 16/1: the planner's 8 warps in pairs
    (8, 2, 64, [1, 15, 16, 17, 200, 3, 70], 32),       # GQA: warp pipelines
])
def test_even_snake_items_against_the_reference(rng, monkeypatch, heads, kv, head_dim, lens,
                                                part_len):
    args = decode_problem(rng, lens, num_heads=heads, num_kv_heads=kv, head_dim=head_dim)
    q = args[0]
    monkeypatch.setattr(dw, "TC_ITEMS_EVEN", True)
    monkeypatch.setattr(dw, "TC_ITEMS_SNAKE", True)
    monkeypatch.setattr(dw, "choose_tc_part_len", lambda *a, **k: part_len)
    cfg = dp.tc_config("float16", head_dim, heads // kv, impl="mma")
    w = planned(args, heads, kv, head_dim, 16, "float16", cfg, None, scheme="items")
    assert w.max_parts > 1   # split sequences, merged by their last block
    for scale in (None, 0.05):   # twice: the merge counters were reset by the first launch
        out = launch(w, *args[:3], None, None, poisoned(q.shape, "float16"), scale)
        check_rows(out, reference(args, scale), "float16")


@needs_wmma
@pytest.mark.parametrize("impl,heads,kv,head_dim,lens,shape,part_len,scheme", [
    ("mma", 16, 1, 128, [1, 300, 17, 33, 200, 64, 65], {}, 16, "items"),   # > MERGE_PARTS parts
    # 128 threads and 12 heads: the items in two rounds, the rows below 16 padded
    ("mma", 12, 1, 128, [1, 300, 17, 33, 200], dict(warps=4, tile_t=64, stages=3), 16, "items"),
    ("mma", 8, 2, 64, [1, 15, 16, 17, 200, 3, 70], {}, 32, "items"),           # warp pipelines
    ("mma", 16, 1, 128, [1, 90, 17, 33, 200, 64, 65], {}, None, "balanced"),   # mid-range too
    ("mma", 40, 2, 64, [130, 3, 64], {}, None, "balanced"),                    # two row tiles
    ("mma", 4, 2, 256, [70, 1, 40], {}, None, "balanced"),                     # head 256 pairs
    # decode_mma_rows.cu: tokens as rows (GQA), heads on x or not, two n tiles, fused KV heads
    ("rows", 8, 2, 64, [1, 300, 17, 33, 200, 64, 65], {}, 16, "items"),
    ("rows", 8, 2, 64, [1, 90, 17, 33, 64, 65, 200], {"heads_on_x": True}, None, "balanced"),
    ("rows", 24, 2, 32, [130, 3, 64, 1], {}, None, "balanced"),                # 12 heads
    ("rows", 8, 4, 48, [70, 1, 40, 18], {"kv_fuse": 2}, None, "balanced"),     # fused pairs
])
def test_the_merge_after_the_loop_against_the_reference(rng, monkeypatch, impl, heads, kv,
                                                        head_dim, lens, shape, part_len, scheme):
    """decode_mma.cu and decode_mma_rows.cu with merge_after_loop: a split sequence's last
    block merges it after its tile loop, with every load in flight (merge_parts_together);
    a segment in mid-range (balanced ranges) merges at once, as without it."""
    args = decode_problem(rng, lens, num_heads=heads, num_kv_heads=kv, head_dim=head_dim)
    q = args[0]
    if part_len:
        monkeypatch.setattr(dw, "choose_tc_part_len", lambda *a, **k: part_len)
    cfg = dp.tc_config("float16", head_dim, heads // kv, impl=impl, merge_after_loop=True,
                       **shape)
    assert cfg.impl == impl
    assert "-DMERGE_AFTER_LOOP=1" in cfg.options
    plans = []
    real_tc_work = dw.tc_work
    monkeypatch.setattr(dw, "tc_work", lambda *a, **k: plans.append(real_tc_work(*a, **k))
                        or plans[-1])
    w = planned(args, heads, kv, head_dim, 16, "float16", cfg, None if part_len else 5,
                scheme=scheme)
    assert w.max_parts > 1
    assert impl == "mma" or merges_after_the_loop(plans[-1][1])
    for scale in (None, 0.05):
        out = launch(w, *args[:3], None, None, poisoned(q.shape, "float16"), scale)
        check_rows(out, reference(args, scale), "float16")


def merges_after_the_loop(seg):
    """Whether some block's last segment is the last part of a split sequence in block order
    (the CPU executor runs a KV head's blocks in that order, so that block finishes the
    sequence last and merges it after its loop)."""
    seq, parts, ptr = seg.segs[:, 0], seg.segs[:, 3] >> 16, seg.seg_ptr
    last_block = {int(b): k for k in range(len(ptr) - 1) for b in seq[ptr[k]:ptr[k + 1]]}
    return any(parts[ptr[k + 1] - 1] > 1 and last_block[int(seq[ptr[k + 1] - 1])] == k
               for k in range(len(ptr) - 1))


@pytest.mark.gpu
@pytest.mark.parametrize("merge_after_loop", [None, False])
def test_mqa_planner_on_the_gpu(rng, merge_after_loop):
    """D64-like MQA 16/1 on the GPU: the automatic plan (one wave of equal-tile items in snake
    order, the split sequences merged by their last block after its tile loop), and the same
    plan merging in the loop, against the float64 reference, twice per plan."""
    import cupy as cp

    from pagedattn_lab.wrappers import BatchDecodeWrapper
    lens = list(rng.integers(1, 2000, 40)) + [1, 16, 17, 4096]
    q, k, v, tables, lens = decode_problem(rng, lens, num_heads=16, num_kv_heads=1,
                                           head_dim=128)
    dev = [cp.asarray(a) for a in (q, k, v, tables, lens)]
    w = BatchDecodeWrapper().plan(dev[3], dev[4], 16, 1, 128, 16, "float16")
    assert w.kernel == "tensor_core" and w.scheme == "items" and w.max_parts > 1
    assert "-DMERGE_AFTER_LOOP=1" in w.tc_config.options
    if merge_after_loop is not None:
        cfg = dp.tc_config("float16", 128, 16, merge_after_loop=merge_after_loop)
        w._launches = []
        w._plan_tensor_core(np.asarray(lens), None, tc=cfg)
        w._prepare_run()
    for scale in (None, 0.05):
        out = cp.full(q.shape, np.nan, np.float16)
        res = cp.asnumpy(w.run(dev[0], dev[1], dev[2], out=out, scale=scale))
        check_rows(res, reference((q, k, v, tables, lens), scale), "float16")
