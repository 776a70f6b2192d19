"""kernels/decode_mma_rows.cu (tokens as the rows of the tile: S^T = K Q^T, O^T = V^T P^T, P^T
transposed in registers by movmatrix) on the CPU executor against the float64 reference:
every head size the PTX kernels take, groups 1 to 16 (one and two n tiles of 8 heads),
fp16/bf16 pages and int8 / fp8 e4m3 codes with static and per-token scales; lengths 1,
page-1, page, page+1, tile-1, tile, tile+1; split-K; shared pages; NaN in the unused tail
slots (decode_cases.decode_problem) and outputs poisoned with NaN."""
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import decode_plan as dp

from .decode_cases import check_close, cpu_executor_has, decode_problem, poisoned, reference
from .test_decode_tc_quant import check_compressed

pytestmark = pytest.mark.skipif(not cpu_executor_has("mma.h"),
                                reason="the CPU executor's shim has no WMMA (mma.h) yet")


def run_rows(rng, dtype, heads, kv, head_dim, page, lens, splits, shape=None, prefix=0):
    args = decode_problem(rng, lens, page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=head_dim, dtype=dtype, shared_prefix=prefix)
    q, k, v, tables, seq_lens = args
    w = pl.BatchDecodeWrapper().plan(tables, seq_lens, heads, kv, head_dim, page, dtype,
                                     kernel="tensor_core", num_splits=splits)
    if shape is not None:
        w._launches = []
        w._plan_tensor_core(np.asarray(seq_lens), splits,
                            tc=dp.tc_config(dtype, head_dim, heads // kv, impl="rows", **shape))
    assert w.tc_config.impl == "rows" and w.tc_config.source == "decode_mma_rows"
    out = w.run(q, k, v, out=poisoned(q.shape, dtype))
    check_close(out, reference(args), dtype)


CASES = [
    # dtype, heads, kv, head_dim, page, lens, splits
    ("float16", 4, 4, 16, 16, [1, 15, 16, 17], None),       # MHA, head 16
    ("float16", 8, 4, 32, 7, [1, 6, 7, 8, 50], 3),          # group 2, page 7, split
    ("float16", 8, 2, 48, 1, [1, 2, 40], None),             # page 1
    ("float16", 8, 2, 64, 16, [127, 128, 129, 1], 2),       # tile-1, tile, tile+1
    ("float16", 24, 3, 80, 16, [33, 200], 1),               # group 8, one partition
    ("float16", 16, 1, 96, 32, [31, 65], None),             # group 16: two n tiles
    ("float16", 12, 1, 112, 16, [70, 3], 3),                # group 12: the second tile part-used
    ("float16", 6, 2, 128, 256, [255, 257, 3], 2),          # page 256, group 3
    ("float16", 4, 1, 144, 16, [40, 17], None),
    ("float16", 10, 2, 160, 12, [50, 9], 2),                # group 5
    ("float16", 7, 1, 176, 16, [20, 33], None),             # group 7
    ("float16", 6, 3, 192, 16, [40, 17], None),
    ("float16", 16, 2, 208, 16, [30, 1], 2),
    ("float16", 8, 1, 224, 8, [25, 16], None),
    ("float16", 4, 2, 240, 16, [17, 2], None),
    ("float16", 16, 1, 256, 16, [70, 1], 3),                # head 256, group 16
    ("bfloat16", 8, 2, 64, 16, [1, 17, 100], 2),
    ("bfloat16", 16, 1, 128, 12, [25, 12], None),
    ("bfloat16", 8, 8, 256, 16, [33, 2], 2),                # MHA, head 256
]


@pytest.mark.parametrize("dtype,heads,kv,head_dim,page,lens,splits", CASES)
def test_rows_kernel(rng, dtype, heads, kv, head_dim, page, lens, splits, monkeypatch):
    if dtype == "bfloat16" and not cpu_executor_has("cuda_bf16.h"):
        pytest.skip("the CPU executor's shim has no bfloat16 (cuda_bf16.h) yet")
    monkeypatch.setattr(dp, "TC_IMPL", "rows")
    run_rows(rng, dtype, heads, kv, head_dim, page, lens, splits)


SHAPES = [   # the block shapes: warps, tile tokens (m tiles per warp), stages, pipes, d_split
    {"warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True},
    {"warps": 2, "tile_t": 64, "stages": 2},
    {"warps": 8, "tile_t": 64, "stages": 2, "d_split": 2},
    {"warps": 4, "tile_t": 128, "stages": 2, "q_regs": False},
    {"warps": 4, "tile_t": 128, "stages": 2, "s_chains": 2},   # two accumulator chains
]


@pytest.mark.parametrize("shape", SHAPES)
def test_rows_kernel_shapes(rng, shape):
    run_rows(rng, "float16", 8, 2, 128, 16, [1, 63, 64, 65, 300], 2, shape)


def test_rows_kernel_shared_pages(rng, monkeypatch):
    monkeypatch.setattr(dp, "TC_IMPL", "rows")
    run_rows(rng, "float16", 8, 2, 64, 16, [40, 50, 37], 9, prefix=2)


def test_groups_past_16_take_the_heads_as_rows():
    assert dp.tc_config("float16", 128, 16, impl="rows").impl == "rows"
    assert dp.tc_config("float16", 128, 17, impl="rows").impl == "mma"
    assert "-DHEAD_TILES=2" in dp.tc_config("float16", 128, 9, impl="rows").options
    assert "-DHEAD_TILES=1" in dp.tc_config("float16", 128, 8, impl="rows").options


def test_copies_through_l1_where_rows_are_not_whole_lines(monkeypatch):
    monkeypatch.setattr(dp, "TC_IMPL", "auto")
    def l1(*args, **kw):
        return "-DCOPY_L1=1" in dp.tc_config(*args, **kw).options
    assert l1("float16", 96, 4) and l1("bfloat16", 80, 4)                 # 192 / 160-byte rows
    assert not l1("float16", 128, 4) and not l1("float16", 256, 4)        # whole lines
    assert not l1("float16", 96, 4, dp.KV_QUANT_IDS["int8"])              # codes (wmma at 96)
    assert not l1("float16", 96, 4, warps=4, tile_t=64, stages=3)         # a shape of its own
    assert not l1("float16", 96, 32)                                      # group 32: "mma"
    assert l1("float16", 128, 4, copy_l1=True) and not l1("float16", 96, 4, copy_l1=False)
    monkeypatch.setattr(dp, "COPY_L1_AUTO", False)
    assert not l1("float16", 96, 4)


FUSED_CASES = [
    # dtype, heads, kv, page, lens, splits, scheme (head_dim 96: two KV heads per block)
    ("float16", 8, 2, 7, [1, 6, 7, 8, 127, 129], 3, None),     # split: the merge's writes
    ("float16", 8, 2, 16, [300, 17, 1], 1, None),              # one part: finish_rows' writes
    ("float16", 8, 4, 16, [200, 64, 1, 65], None, "balanced"), # two fused blocks, ranges
    ("float16", 8, 4, 5, [90, 33], 2, "items"),                # group 2: 4 rows per block
    ("float16", 4, 4, 16, [40, 1, 17], 2, None),               # MHA: group 1, 2 rows
    ("bfloat16", 8, 2, 16, [70, 3, 129], None, "balanced"),
]


@pytest.mark.parametrize("dtype,heads,kv,page,lens,splits,scheme", FUSED_CASES)
def test_fused_kv_heads(rng, dtype, heads, kv, page, lens, splits, scheme, monkeypatch):
    if dtype == "bfloat16" and not cpu_executor_has("cuda_bf16.h"):
        pytest.skip("the CPU executor's shim has no bfloat16 (cuda_bf16.h) yet")
    monkeypatch.setattr(dp, "TC_IMPL", "rows")
    monkeypatch.setattr(dp, "KV_FUSE_AUTO", {96: 2})   # (the default, pinned)
    args = decode_problem(rng, lens, page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=96, dtype=dtype)
    q, k, v, tables, seq_lens = args
    w = pl.BatchDecodeWrapper().plan(tables, seq_lens, heads, kv, 96, page, dtype,
                                     kernel="tensor_core", num_splits=splits)
    if scheme is not None:
        w._launches = []
        w._plan_tensor_core(np.asarray(seq_lens), splits, scheme=scheme)
    assert w.tc_config.kv_fuse == 2 and "-DKV_FUSE=2" in w.tc_config.options
    assert w.grid[1] == kv // 2
    out = w.run(q, k, v, out=poisoned(q.shape, dtype))
    check_close(out, reference(args), dtype)


def test_which_kv_heads_fuse(monkeypatch):
    monkeypatch.setattr(dp, "TC_IMPL", "auto")
    monkeypatch.setattr(dp, "KV_FUSE_AUTO", {96: 2})
    int8 = dp.KV_QUANT_IDS["int8"]
    assert dp.kv_fuse("float16", 96, 4, 8, 0) == 2 and dp.kv_fuse("bfloat16", 96, 1, 2, 0) == 2
    assert dp.kv_fuse("float16", 96, 4, 7, 0) == 1          # an odd number of KV heads
    assert dp.kv_fuse("float16", 96, 8, 4, 0) == 1          # 16 rows: past one n tile
    assert dp.kv_fuse("float16", 96, 4, 8, int8) == 1       # codes
    assert dp.kv_fuse("float32", 96, 4, 8, 0) == 1
    assert dp.kv_fuse("float16", 128, 4, 8, 0) == 1         # whole lines already
    assert dp.kv_fuse("float16", 96, 32, 2, 0) == 1         # group 32: "mma"
    monkeypatch.setattr(dp, "KV_FUSE_AUTO", {})
    assert dp.kv_fuse("float16", 96, 4, 8, 0) == 1
    with pytest.raises(ValueError, match="kv_fuse"):
        dp.tc_config("float16", 192, 8, kv_fuse=2, impl="mma")
    with pytest.raises(ValueError, match="kv_fuse"):
        dp.tc_config("float16", 256, 8, int8, kv_fuse=2)


ROWS_QUANT_CASES = [
    # dtype, heads, kv, head_dim, page, lens, splits, shape
    ("float16", 8, 2, 128, 7, [1, 6, 7, 8, 127, 129], 3, {}),      # the planner's shape; split
    ("float16", 16, 1, 128, 16, [1, 15, 16, 17, 200], None,         # group 16, warp pipes
     {"warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True}),
    ("float16", 2, 2, 256, 16, [70, 3], 2, {}),                     # MHA, head 256
    ("float16", 16, 2, 256, 5, [40, 9], None,                       # group 8, head 256, pairs
     {"warps": 8, "tile_t": 64, "stages": 2, "d_split": 2}),
    ("bfloat16", 8, 2, 128, 12, [25, 12, 1], 2, {}),                # bf16 queries
    ("float16", 12, 3, 128, 16, [1, 70, 17], 2, {"fp8_bits": True}),   # e4m3 by moving bits
    ("float16", 8, 2, 128, 16, [1, 33, 130], 2,                     # two S chains, mb4
     {"warps": 4, "tile_t": 64, "stages": 3, "s_chains": 2, "min_blocks": 4}),
    ("float16", 6, 2, 128, 8, [1, 31, 32, 33, 90], 3,               # 2 warps x 16 tokens
     {"warps": 2, "tile_t": 32, "stages": 4}),
    ("float16", 8, 2, 128, 7, [1, 100, 129], 2, {"heads_on_x": False}),   # the work on x
    ("float16", 8, 2, 128, 7, [1, 6, 7, 8, 127, 129], 3, {"merge_after_loop": True}),
]


def test_warps_o_take_their_heads_rows_only():
    """decode_mma_rows.cu puts a warp's O (WARP_O_ROWS: its heads' rows, 4 in the head pairs'
    layout) in the stage buffer just computed: small tiles of codes keep their size there,
    while decode_mma.cu's O (16 rows per warp) needs 128 tokens at head_dim 128. (Over 16-bit
    pages a warp's 16 tokens of K and V hold as many bytes as 16 rows of its O in floats.)"""
    fp8 = dp.KV_QUANT_IDS["fp8_e4m3"]
    for warps, tile, group in ((4, 64, 4), (2, 32, 3), (8, 128, 2)):
        cfg = dp.tc_config("float16", 128, group, fp8, warps=warps, tile_t=tile, stages=3,
                           impl="rows")
        assert (cfg.tile_t, "-DHEAD_PAIRS=1" in cfg.options) == (tile, True)
    assert dp.tc_config("float16", 128, 4, fp8, warps=4, tile_t=64, stages=3,
                        impl="mma").tile_t == 128


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("dtype,heads,kv,head_dim,page,lens,splits,shape", ROWS_QUANT_CASES)
def test_rows_kernel_compressed_pages(rng, kv_dtype, scheme, dtype, heads, kv, head_dim, page,
                                      lens, splits, shape):
    check_compressed(rng, kv_dtype, scheme, dtype, heads, kv, head_dim, page, lens, splits,
                     {**shape, "impl": "rows"})


def test_the_planner_takes_rows_where_the_table_says(monkeypatch):
    monkeypatch.setattr(dp, "TC_IMPL", "auto")
    monkeypatch.setattr(dp, "ROWS_AUTO", [(True, (128, 256), 8)])
    assert dp.tc_config("float16", 128, 4, dp.KV_QUANT_IDS["fp8_e4m3"]).impl == "rows"
    assert dp.tc_config("float16", 128, 16, dp.KV_QUANT_IDS["int8"]).impl == "mma"   # group 16
    assert dp.tc_config("float16", 128, 4).impl == "mma"                              # fp16 pages
    assert dp.tc_config("float16", 96, 4, dp.KV_QUANT_IDS["int8"]).impl == "wmma"     # codes at 96
    monkeypatch.setattr(dp, "ROWS_AUTO", [])
    assert dp.tc_config("float16", 128, 4, dp.KV_QUANT_IDS["fp8_e4m3"]).impl == "mma"
    monkeypatch.setattr(dp, "TC_IMPL", "rows")                                        # forced
    assert dp.tc_config("float16", 128, 4).impl == "rows"


GRID_ORDER_CASES = [
    # dtype, heads, kv, head_dim, page, lens, splits, impl (grids never square: a swap shows)
    ("float16", 8, 2, 64, 7, [1, 6, 7, 8, 127, 129], 3, "rows"),   # split: the merge's counters
    ("float16", 12, 3, 32, 16, [40, 17, 1, 90], None, "rows"),
    ("float16", 24, 3, 64, 5, [90, 3, 33], 2, "rows"),             # group 8
    ("float16", 32, 1, 64, 16, [70, 2, 17], 3, "mma"),             # two row tiles
]


@pytest.mark.parametrize("scheme", ["items", "balanced"])
@pytest.mark.parametrize("dtype,heads,kv,head_dim,page,lens,splits,impl", GRID_ORDER_CASES)
def test_heads_on_x(rng, dtype, heads, kv, head_dim, page, lens, splits, impl, scheme,
                    monkeypatch):
    """The grid as (row blocks, work) (-DHEADS_ON_X) gives the same outputs; a plan of more
    blocks than the grid's y holds keeps the work on x (exactly as many still fit)."""
    args = decode_problem(rng, lens, page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=head_dim, dtype=dtype)
    q, k, v, tables, seq_lens = args
    cfg = dp.tc_config(dtype, head_dim, heads // kv, impl=impl, heads_on_x=True)
    w = pl.BatchDecodeWrapper().plan(tables, seq_lens, heads, kv, head_dim, page, dtype,
                                     kernel="tensor_core", num_splits=splits)

    def plan_with_grid_y_max(grid_y_max):
        monkeypatch.setattr(dp, "GRID_Y_MAX", grid_y_max)
        w._launches = []
        w._plan_tensor_core(np.asarray(seq_lens), splits, tc=cfg, scheme=scheme)
        return w.grid
    rows, blocks = plan_with_grid_y_max(dp.GRID_Y_MAX)[:2]
    assert rows == kv * w.tc_config.chunks and rows != blocks
    for grid_y_max, on_x in ((dp.GRID_Y_MAX, True), (blocks, True), (blocks - 1, False)):
        grid = plan_with_grid_y_max(grid_y_max)
        assert w.tc_config.heads_on_x == on_x
        assert ("-DHEADS_ON_X=1" in w.tc_config.options) == on_x
        assert grid[:2] == ((rows, blocks) if on_x else (blocks, rows))
        check_close(w.run(q, k, v, out=poisoned(q.shape, dtype)), reference(args), dtype)


def test_where_plans_put_the_heads_on_x(monkeypatch):
    fp8, int8 = dp.KV_QUANT_IDS["fp8_e4m3"], dp.KV_QUANT_IDS["int8"]
    monkeypatch.setattr(dp, "TC_IMPL", "auto")
    assert dp.tc_config("float16", 128, 4, fp8).heads_on_x            # rows over codes
    assert dp.tc_config("float16", 128, 8, int8, True).heads_on_x
    assert not dp.tc_config("float16", 128, 4).heads_on_x             # 16-bit pages
    assert not dp.tc_config("float16", 128, 16, fp8).heads_on_x       # "mma" over codes
    assert not dp.tc_config("float16", 96, 4, int8).heads_on_x        # "wmma" at 96
    assert dp.tc_config("float16", 128, 16, heads_on_x=True).heads_on_x
    off = dp.tc_config("float16", 128, 4, fp8, heads_on_x=False)             # asked: off
    assert not off.heads_on_x and "-DHEADS_ON_X=1" not in off.options
    for bad in ({"impl": "wmma"}, {"impl": "mma", "separate_merge": True}):
        with pytest.raises(ValueError, match="heads_on_x"):
            dp.tc_config("float16", 128, 4, heads_on_x=True, **bad)
    monkeypatch.setattr(dp, "HEADS_ON_X_CODES", False)
    assert not dp.tc_config("float16", 128, 4, fp8).heads_on_x
