"""kernels/decode_mma_rows.cu on the GPU (CuPy) against the float64 reference: head sizes
from 32 to 256, groups 1 to 16, fp16/bf16 pages and int8 / fp8 e4m3 codes (the sm_89+
conversion instruction, which the CPU executor does not run) with both scale schemes.
Marked `gpu`."""
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import decode_plan as dp

from .decode_cases import check_close, decode_problem, reference
from .test_decode_tc_quant import launch, quantized
from .test_decode_tc_quant_gpu import check_compressed_gpu

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 128, 192, 256])
@pytest.mark.parametrize("group", [1, 4, 8, 16])
def test_rows_kernel(rng, cp, monkeypatch, head_dim, group):
    monkeypatch.setattr(dp, "TC_IMPL", "rows")
    kv = 2
    args = decode_problem(rng, [1, 15, 16, 17, 127, 129, 700], num_heads=group * kv,
                          num_kv_heads=kv, head_dim=head_dim)
    dev = [cp.asarray(a) for a in args]
    w = pl.BatchDecodeWrapper().plan(dev[3], dev[4], group * kv, kv, head_dim, 16, "float16",
                                     kernel="tensor_core", num_splits=3)
    assert w.tc_config.impl == "rows"
    out = w.run(*dev[:3], out=cp.full(args[0].shape, np.nan, np.float16))
    check_close(cp.asnumpy(out), reference(args), "float16")


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("head_dim", [128, 256])
@pytest.mark.parametrize("group", [1, 4, 16])
def test_rows_kernel_compressed_pages(rng, cp, kv_dtype, scheme, head_dim, group):
    check_compressed_gpu(rng, cp, kv_dtype, scheme, head_dim, group, "rows")


@pytest.mark.parametrize("scheme", ["balanced", "items"])
@pytest.mark.parametrize("group,kv", [(4, 2), (2, 4), (1, 8)])
def test_rows_kernel_fused_kv_heads(rng, cp, monkeypatch, scheme, group, kv):
    monkeypatch.setattr(dp, "KV_FUSE_AUTO", {96: 2})   # (the default, pinned)
    args = decode_problem(rng, [1, 15, 16, 17, 127, 129, 700], num_heads=group * kv,
                          num_kv_heads=kv, head_dim=96)
    dev = [cp.asarray(a) for a in args]
    w = pl.BatchDecodeWrapper().plan(dev[3], dev[4], group * kv, kv, 96, 16, "float16",
                                     kernel="tensor_core", num_splits=3)
    w._launches = []
    w._plan_tensor_core(np.asarray(args[4]), 3, scheme=scheme)
    assert w.tc_config.kv_fuse == 2 and w.grid[1] == kv // 2
    out = w.run(*dev[:3], out=cp.full(args[0].shape, np.nan, np.float16))
    check_close(cp.asnumpy(out), reference(args), "float16")


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_rows_kernel_bfloat16(rng, cp, monkeypatch, head_dim):
    monkeypatch.setattr(dp, "TC_IMPL", "rows")
    args = decode_problem(rng, [1, 17, 300], num_heads=8, num_kv_heads=2, head_dim=head_dim,
                          dtype="bfloat16")
    q = args[0]
    dev = [cp.asarray(a.view(np.uint16) if i < 3 else a) for i, a in enumerate(args)]
    w = pl.BatchDecodeWrapper().plan(dev[3], dev[4], 8, 2, head_dim, 16, "bfloat16",
                                     kernel="tensor_core", num_splits=2)
    assert w.tc_config.impl == "rows"
    out = w.run(*dev[:3], out=cp.full(q.shape, 0x7fc0, np.uint16))   # bf16 NaN bits
    check_close(cp.asnumpy(out).view(q.dtype), reference(args), "bfloat16")


def balanced(dev, lens, heads, kv, head_dim, cfg, ranges):
    w = pl.BatchDecodeWrapper().plan(dev[3], dev[4], heads, kv, head_dim, 16, "float16",
                                     kernel="tensor_core")
    w._launches = []
    w._plan_tensor_core(lens, None, tc=cfg, scheme="balanced", ranges=ranges)
    assert w.scheme == "balanced" and w.tc_config.impl == "rows"
    return w


BAL_LENS = [1, 15, 16, 17, 300, 129, 1, 1, 64, 2]


@pytest.mark.parametrize("ranges", [None, 3])   # the plan's (more than the tiles), and few
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("group", [1, 4, 16])
def test_rows_kernel_balanced(rng, cp, head_dim, group, ranges):
    """Balanced ranges on decode_mma_rows.cu: every tile its own block (sequences split and
    merged), or three ranges each across several sequences, ending mid-page."""
    kv = 2
    args = decode_problem(rng, BAL_LENS, num_heads=group * kv, num_kv_heads=kv,
                          head_dim=head_dim)
    dev = [cp.asarray(a) for a in args]
    w = balanced(dev, args[4], group * kv, kv, head_dim,
                 dp.tc_config("float16", head_dim, group, impl="rows"), ranges)
    out = w.run(*dev[:3], out=cp.full(args[0].shape, np.nan, np.float16))
    check_close(cp.asnumpy(out), reference(args), "float16")


SMALL_TILES = [{}, {"warps": 4, "tile_t": 64, "stages": 3, "min_blocks": 4},
               {"warps": 2, "tile_t": 32, "stages": 4, "min_blocks": 8},
               {"warps": 8, "tile_t": 128, "stages": 2, "min_blocks": 2}]


@pytest.mark.parametrize("ranges", [None, 3])
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("head_dim,shape", [(128, s) for s in SMALL_TILES] + [(256, {})])
def test_rows_kernel_balanced_compressed_pages(rng, cp, kv_dtype, scheme, head_dim, shape,
                                               ranges):
    """The planner's shape, and smaller tiles with more blocks per SM (whose warps' O fit
    their stage buffers in the head pairs' layout)."""
    args = decode_problem(rng, BAL_LENS, num_heads=8, num_kv_heads=2, head_dim=head_dim)
    q, k, v, tables, lens = args
    kc, vc, ks, vs, kd, vd = quantized(rng, args, kv_dtype, scheme)
    cfg = dp.tc_config("float16", head_dim, 4, dp.KV_QUANT_IDS[kv_dtype], scheme == "per_token",
                       impl="rows", **shape)
    assert cfg.tile_t == shape.get("tile_t", cfg.tile_t)
    dev = [cp.asarray(a) for a in (q, kc, vc, tables, lens)]
    w = balanced((dev[0], None, None, dev[3], dev[4]), lens, 8, 2, head_dim, cfg, ranges)
    out = launch(w, dev[0], dev[1], dev[2], cp.asarray(ks), cp.asarray(vs),
                 cp.full(q.shape, np.nan, np.float16))
    check_close(cp.asnumpy(out), reference((q, kd, vd, tables, lens)), "float16")


@pytest.mark.parametrize("impl,group", [("rows", 4), ("rows", 8), ("mma", 16)])
@pytest.mark.parametrize("scheme", ["balanced", "items"])
def test_heads_on_x(rng, cp, monkeypatch, impl, group, scheme):
    """The grid as (row blocks, work) (-DHEADS_ON_X; the planner's over codes) on 16-bit pages,
    and its fallback to the work on x past the grid's y limit."""
    kv = 2
    args = decode_problem(rng, [1, 15, 16, 17, 127, 129, 700], num_heads=group * kv,
                          num_kv_heads=kv, head_dim=128)
    dev = [cp.asarray(a) for a in args]
    cfg = dp.tc_config("float16", 128, group, impl=impl, heads_on_x=True)
    w = pl.BatchDecodeWrapper().plan(dev[3], dev[4], group * kv, kv, 128, 16, "float16",
                                     kernel="tensor_core", num_splits=3)
    for grid_y_max, on_x in ((dp.GRID_Y_MAX, True), (1, False)):
        monkeypatch.setattr(dp, "GRID_Y_MAX", grid_y_max)
        w._launches = []
        w._plan_tensor_core(np.asarray(args[4]), 3, tc=cfg, scheme=scheme)
        assert w.tc_config.heads_on_x == on_x and w.grid[0 if on_x else 1] == kv
        for _ in range(2):   # twice: the merge counters were reset by the first launch
            out = w.run(*dev[:3], out=cp.full(args[0].shape, np.nan, np.float16))
            check_close(cp.asnumpy(out), reference(args), "float16")
