"""kernels/decode_mma.cu's balanced ranges (stream-K) on the GPU against the float64 reference:
the planner's automatic plans (balanced) on every head size, groups 1-64, fp16 / bf16; ranges
forced to cut many sequences (one-tile segments, ranges across 3+ sequences, more ranges than
tiles) on each pipeline shape; compressed pages. Marked `gpu`: skipped without one.
"""
import numpy as np
import pytest

from pagedattn_lab import decode_plan as dp
from pagedattn_lab.kernels import kernel as load_kernel
from pagedattn_lab.wrappers import BatchDecodeWrapper

from .decode_cases import check_close, decode_problem, reference
from .test_decode_gpu import HEAD_DIMS, on_gpu, poisoned_out
from .test_decode_tc_quant import launch, quantized

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


@pytest.mark.parametrize("group", [1, 4, 16, 64])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_balanced_grid(rng, cp, dtype, head_dim, group):
    """The plan's balanced ranges, one per resident slot (here more ranges than tiles: every
    tile a block, every sequence past one tile split and merged)."""
    kv = 2 if group <= 16 else 1
    args = decode_problem(rng, [1, 15, 16, 17, 300, 129], num_heads=group * kv, num_kv_heads=kv,
                          head_dim=head_dim, dtype=dtype)
    dev = on_gpu(cp, args, dtype)
    w = BatchDecodeWrapper().plan(dev[3], dev[4], group * kv, kv, head_dim, 16, dtype,
                                  kernel="tensor_core")
    w._launches = []
    w._plan_tensor_core(args[4], None, scheme="balanced")
    host = cp.asnumpy(w.run(*dev[:3], out=poisoned_out(cp, dev, dtype)))
    check_close(host.view(args[0].dtype) if dtype == "bfloat16" else host, reference(args),
                dtype)


def test_the_planner_balances_many_sequences(rng, cp):
    """Automatic: balanced where the sequences need more than one wave of blocks."""
    lens = list(rng.integers(1, 2000, 120))
    args = decode_problem(rng, lens, num_heads=32, num_kv_heads=8, head_dim=128)
    dev = on_gpu(cp, args, "float16")
    w = BatchDecodeWrapper().plan(dev[3], dev[4], 32, 8, 128, 16, "float16")
    assert w.kernel == "tensor_core" and w.scheme == "balanced", w.describe()
    check_close(cp.asnumpy(w.run(*dev[:3])), reference(args), "float16")


SHAPES = [None, dict(warps=4, tile_t=64, stages=3), dict(warps=2, tile_t=32, stages=4,
                                                         warp_pipe=True),
          dict(warps=8, tile_t=64, stages=3, d_split=2, min_blocks=2),
          dict(separate_merge=True)]


@pytest.mark.parametrize("shape", SHAPES, ids=["planner", "W4S3", "W2PT32S4", "W8D2S3",
                                               "separate-merge"])
@pytest.mark.parametrize("ranges", [3, 7, 33, 1000])
def test_balanced_ranges_cut_many_sequences(rng, cp, shape, ranges):
    lens = list(rng.integers(1, 3000, 20)) + [1, 1, 1, 64, 65]
    args = decode_problem(rng, lens, page_size=16, num_heads=8, num_kv_heads=2, head_dim=128)
    dev = on_gpu(cp, args, "float16")
    w = BatchDecodeWrapper().plan(dev[3], dev[4], 8, 2, 128, 16, "float16", kernel="tensor_core")
    cfg = dp.tc_config("float16", 128, 4, impl="mma", **(shape or {}))
    w._launches = []
    w._plan_tensor_core(np.asarray(lens, np.int32), None, tc=cfg, scheme="balanced",
                        ranges=ranges)
    for scale in (None, 0.05):   # twice: the merge counters are reset by the merging blocks
        out = w.run(*dev[:3], out=poisoned_out(cp, dev, "float16"), scale=scale)
        ref = reference(args, scale)
        host = cp.asnumpy(out)
        check_close(host, ref, "float16")
        for b in range(len(lens)):
            check_close(host[b], ref[b], "float16")


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("head_dim", [128, 256])
def test_balanced_ranges_over_compressed_pages(rng, cp, kv_dtype, scheme, head_dim):
    args = decode_problem(rng, [1, 700, 17, 64, 300], page_size=16, num_heads=8,
                          num_kv_heads=2, head_dim=head_dim)
    q, k, v, tables, lens = args
    kc, vc, ks, vs, kd, vd = quantized(rng, args, kv_dtype, scheme)
    w = BatchDecodeWrapper().plan(cp.asarray(tables), cp.asarray(lens), 8, 2, head_dim, 16,
                                  "float16", kernel="tensor_core", kv_dtype=kv_dtype,
                                  scale_scheme=scheme)
    # decode_mma.cu itself (the planner takes decode_mma_rows.cu at head_dim 128; its balanced
    # ranges over codes: test_decode_rows_gpu.py)
    cfg = dp.tc_config("float16", head_dim, 4, dp.KV_QUANT_IDS[kv_dtype], scheme == "per_token",
                       impl="mma")
    w._launches = []
    w._plan_tensor_core(lens, None, tc=cfg, scheme="balanced", ranges=3)
    assert w.tc_config.impl == "mma" and w.scheme == "balanced"
    dev = [cp.asarray(a) for a in (q, kc, vc, ks, vs)]
    out = launch(w, *dev, cp.full(q.shape, np.nan, np.float16))
    check_close(cp.asnumpy(out), reference((q, kd, vd, tables, lens)), "float16")


@pytest.mark.parametrize("shape", [None, dict(warps=4, tile_t=64, stages=2, impl="rows")],
                         ids=["planner", "R W4 T64 S2"])
def test_balanced_ranges_fill_one_wave_of_the_drivers_count(rng, cp, shape):
    """On the GPU a plan counts the blocks an SM holds as the driver does (the occupancy API
    on the compiled kernel), and cuts one range per slot, rounded down, so that every block
    starts at once: the two-stage rows shape (73 KB) holds 3 per SM on the H200, where
    50 x 8 ranges (rounded up) left 4 blocks for a second wave."""
    lens = list(rng.integers(1, 3000, 100))
    args = decode_problem(rng, lens, num_heads=32, num_kv_heads=8, head_dim=128)
    dev = on_gpu(cp, args, "float16")
    cfg = dp.tc_config("float16", 128, 4, **(shape or {}))
    w = BatchDecodeWrapper().plan(dev[3], dev[4], 32, 8, 128, 16, "float16",
                                  kernel="tensor_core")
    w._launches = []
    w._plan_tensor_core(args[4], None, tc=cfg, scheme="balanced")
    kern = load_kernel(cfg.source, cfg.function, cfg.options)
    resident = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
        kern.gpu.kernel.ptr, cfg.threads, cfg.shared)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    blocks = w.grid[0] * w.grid[1]
    assert resident * sms - w.grid[1] < blocks <= resident * sms, (resident, w.grid)
    check_close(cp.asnumpy(w.run(*dev[:3], out=poisoned_out(cp, dev, "float16"))),
                reference(args), "float16")
