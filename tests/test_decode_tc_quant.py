"""The tensor-core decode kernels' compile-time shapes (warps, tile, stages) and their reading
of compressed pages (int8 / fp8 e4m3 codes with static or per-token scales), on the CPU
executor against the float64 reference: lesson 09's WMMA source (kernels/decode_tc.cu, codes
converted in shared memory) and kernels/decode_mma.cu (PTX mma.sync; codes converted in
registers at head_dim 128 and 256).

The compressed path is launched through the plan's own launcher (`BatchDecodeWrapper`'s
tensor-core launch with a `decode_plan.tc_config(..., kv_quant=, per_token=)`), with the
scales passed where `run` passes them. Bound: the codes become fp16 exactly (every int8 and
e4m3 value is a 16-bit float) and the scales are applied in fp32, so against the reference
on the DEQUANTIZED cache (code * scale, float64) the kernel is an fp16 kernel and the fp16
tolerance of decode_cases.check_close holds.
"""
import numpy as np
import pytest

from pagedattn_lab import decode_plan as dp
from pagedattn_lab import quant
from pagedattn_lab.backend import to_numpy
from pagedattn_lab.wrappers import BatchDecodeWrapper

from .decode_cases import check_close, cpu_executor_has, decode_problem, poisoned, reference

pytestmark = pytest.mark.skipif(not cpu_executor_has("mma.h"),
                                reason="the CPU executor's shim has no WMMA (mma.h) yet")


def planned(args, num_heads, num_kv_heads, head_dim, page_size, dtype, splits, cfg):
    """A tensor-core plan of the problem, launching the kernel `cfg` describes."""
    q, k, v, tables, lens = args
    w = BatchDecodeWrapper().plan(tables, lens, num_heads, num_kv_heads, head_dim, page_size,
                                  dtype, kernel="tensor_core", num_splits=splits)
    w._launches = []
    w._plan_tensor_core(to_numpy(lens), splits, tc=cfg)
    return w


def planned_impl(impl, group):
    """The source tc_config takes for `impl`: "rows" holds up to 16 heads, more take "mma"."""
    return "mma" if impl == "rows" and group > dp.ROWS_MAX_GROUP else impl


def launch(w, q, k, v, k_scale, v_scale, out, scale=None):
    """What run() does once it has checked its arguments, with the scales passed on."""
    s = np.float32(w._default_scale_log2 if scale is None else scale * 1.4426950408889634)
    for kern, grid, block, make_args, shared in w._launches:
        kern(grid, block, make_args(q, k, v, out, s, k_scale, v_scale), shared_mem=shared)
    return out


SHAPES = [
    # heads, kv, head_dim, page, lens, splits, warps, tile, stages, d_split
    (8, 2, 64, 7, [1, 6, 7, 8, 50], 3, 2, 32, 4, 1),      # 2 warps, 4 stages; split
    (16, 1, 32, 16, [1, 15, 16, 17, 90], None, 1, 16, 6, 1),   # 1 warp, MQA
    (12, 3, 128, 16, [33, 100], 2, 3, 48, 3, 1),          # 3 warps, 48-token tiles
    (40, 2, 64, 5, [70, 3], 2, 4, 64, 3, 1),              # two row tiles, 3 stages
    (4, 2, 256, 16, [40, 1], None, 2, 32, 2, 1),          # head 256, 2 warps
    (8, 2, 128, 16, [1, 17, 100], 3, 8, 64, 2, 2),        # 8 warps in pairs sharing tokens
    (40, 2, 64, 7, [90, 3], 2, 8, 64, 2, 2),              # pairs over two row tiles
    (4, 1, 256, 16, [70, 2], 2, 8, 32, 2, 4),             # head 256: 4 warps per slice
    (16, 1, 80, 16, [33, 5], None, 8, 64, 3, 5),          # head 80: 5 column tiles, 5 warps
]
PIPES = [   # heads, kv, head_dim, page, lens, splits, warps, tile, stages: WARP_PIPE=1
    (8, 2, 128, 7, [1, 17, 100], 3, 4, 64, 2),            # warps copying their own tokens
    (16, 1, 64, 16, [1, 15, 16, 17, 90], None, 2, 32, 3),
    (4, 2, 256, 16, [40, 1], 2, 2, 32, 2),
]


@pytest.mark.parametrize("impl", dp.TC_IMPLS)
@pytest.mark.parametrize("heads,kv,head_dim,page,lens,splits,warps,tile,stages,d_split", SHAPES)
def test_kernel_shapes(rng, heads, kv, head_dim, page, lens, splits, warps, tile, stages,
                       d_split, impl):
    args = decode_problem(rng, lens, page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=head_dim)
    for chains in (1, 2):
        cfg = dp.tc_config("float16", head_dim, heads // kv, warps=warps, tile_t=tile,
                           stages=stages, s_chains=chains, d_split=d_split, impl=impl)
        assert cfg.d_split == d_split and cfg.impl == planned_impl(impl, heads // kv)
        w = planned(args, heads, kv, head_dim, page, "float16", splits, cfg)
        assert w.tc_config.threads == cfg.warps * 32 and w.grid[0] >= len(lens)
        out = w.run(*args[:3], out=poisoned(args[0].shape, "float16"))
        check_close(out, reference(args), "float16")


@pytest.mark.parametrize("impl", dp.TC_IMPLS)
@pytest.mark.parametrize("heads,kv,head_dim,page,lens,splits,warps,tile,stages", PIPES)
def test_warp_pipelines(rng, heads, kv, head_dim, page, lens, splits, warps, tile, stages, impl):
    args = decode_problem(rng, lens, page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=head_dim)
    cfg = dp.tc_config("float16", head_dim, heads // kv, warps=warps, tile_t=tile,
                       stages=stages, warp_pipe=True, impl=impl)
    assert cfg.warp_pipe and cfg.impl == planned_impl(impl, heads // kv)
    w = planned(args, heads, kv, head_dim, page, "float16", splits, cfg)
    out = w.run(*args[:3], out=poisoned(args[0].shape, "float16"))
    check_close(out, reference(args), "float16")


def quantized(rng, args, kv_dtype, scheme):
    """(codes K, codes V as uint8, k_scale, v_scale, dequantized K and V as float32)."""
    q, k, v, tables, lens = args
    live = np.zeros(k.shape[:2], bool)
    page_size = k.shape[1]
    for b, n in enumerate(lens):
        for t in range(n):
            live[tables[b, t // page_size], t % page_size] = True
    out = []
    for x in (k.astype(np.float32), v.astype(np.float32)):
        if scheme == "static":
            scales = quant.static_scales(x[live], kv_dtype)
            per_slot = np.broadcast_to(scales, x.shape[:3])
        else:
            scales = per_slot = quant.per_token_scales(x, kv_dtype)
        codes = quant.quantize(x, kv_dtype, per_slot)
        deq = quant.dequantize(codes, kv_dtype, per_slot)
        out.append((codes.view(np.uint8), np.ascontiguousarray(scales, np.float32), deq))
    (kc, ks, kd), (vc, vs, vd) = out
    return kc, vc, ks, vs, kd, vd


QUANT_CASES = [
    # dtype, heads, kv, head_dim, page, lens, splits
    ("float16", 8, 2, 64, 7, [1, 6, 7, 8, 50], 3),      # GQA 4, page not a power of two, split
    ("float16", 16, 1, 128, 16, [1, 15, 16, 17, 130], None),   # MQA 16
    ("float16", 40, 2, 32, 16, [70, 3], 2),             # two row tiles
    ("bfloat16", 4, 2, 96, 12, [25, 12], None),         # bf16 queries: the generic conversion
]


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("dtype,heads,kv,head_dim,page,lens,splits", QUANT_CASES)
@pytest.mark.parametrize("shape", [{"impl": "wmma"},
                                   {"warps": 8, "tile_t": 64, "stages": 3, "d_split": 2,
                                    "impl": "wmma"},
                                   {"warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True,
                                    "impl": "wmma"}])
def test_compressed_pages(rng, kv_dtype, scheme, dtype, heads, kv, head_dim, page, lens, splits,
                          shape):
    check_compressed(rng, kv_dtype, scheme, dtype, heads, kv, head_dim, page, lens, splits,
                     shape)


MMA_QUANT_CASES = [
    # dtype, heads, kv, head_dim, page, lens, splits, shape
    ("float16", 8, 2, 128, 7, [1, 6, 7, 8, 130], 3, {}),     # the planner's shape; split
    ("float16", 16, 1, 128, 16, [1, 15, 16, 17, 200], None,   # MQA 16, 128-token tiles
     {"warps": 4, "tile_t": 128, "stages": 3}),
    ("float16", 40, 1, 256, 16, [70, 3], 2, {}),              # head 256 in pairs; 3 row tiles
    ("float16", 8, 2, 256, 5, [40, 9], None,                   # head 256, one warp per slice
     {"warps": 4, "tile_t": 64, "stages": 2, "d_split": 1}),
    ("bfloat16", 8, 2, 128, 12, [25, 12, 1], 2,               # bf16 queries
     {"warps": 8, "tile_t": 128, "stages": 2, "s_chains": 2}),
    ("float16", 8, 2, 128, 7, [1, 100, 33], 2,                # warps copying their own tokens
     {"warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True}),
    ("float16", 8, 2, 256, 16, [1, 70, 17], 2,                # e4m3 by moving bits (int8: same)
     {"fp8_bits": True}),
]


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
@pytest.mark.parametrize("dtype,heads,kv,head_dim,page,lens,splits,shape", MMA_QUANT_CASES)
def test_compressed_pages_in_registers(rng, kv_dtype, scheme, dtype, heads, kv, head_dim, page,
                                       lens, splits, shape):
    check_compressed(rng, kv_dtype, scheme, dtype, heads, kv, head_dim, page, lens, splits,
                     {**shape, "impl": "mma"})


def check_compressed(rng, kv_dtype, scheme, dtype, heads, kv, head_dim, page, lens, splits,
                     shape):
    if dtype == "bfloat16" and not cpu_executor_has("cuda_bf16.h"):
        pytest.skip("the CPU executor's shim has no bfloat16 (cuda_bf16.h) yet")
    args = decode_problem(rng, lens, page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=head_dim, dtype=dtype)
    q, k, v, tables, seq_lens = args
    kc, vc, ks, vs, kd, vd = quantized(rng, args, kv_dtype, scheme)
    cfg = dp.tc_config(dtype, head_dim, heads // kv, dp.KV_QUANT_IDS[kv_dtype],
                       scheme == "per_token", **shape)
    assert cfg.impl == shape["impl"]
    w = planned(args, heads, kv, head_dim, page, dtype, splits, cfg)
    out = launch(w, q, kc, vc, ks, vs, poisoned(q.shape, dtype))
    ref = reference((q, kd, vd, tables, seq_lens))
    check_close(out, ref, dtype)
    # the same plan, another scale: the logit scale multiplies K's scales, not replaces them
    out = launch(w, q, kc, vc, ks, vs, poisoned(q.shape, dtype), scale=0.05)
    check_close(out, reference((q, kd, vd, tables, seq_lens), 0.05), dtype)


@pytest.mark.parametrize("impl,head_dim,bits", [("wmma", 64, False), ("mma", 128, False),
                                               ("mma", 128, True), ("rows", 128, False),
                                               ("rows", 128, True)])
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
def test_every_code_is_read_exactly(rng, kv_dtype, impl, head_dim, bits):
    """Random codes over the whole format (every e4m3 code but NaN: subnormals, 448, -0) with
    random per-token scales: a conversion that drops a bit, a sign or the subnormals fails."""
    heads, kv, page = 8, 2, 16
    args = decode_problem(rng, [40, 17], page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=head_dim)
    q, k, v, tables, lens = args
    if kv_dtype == "int8":
        codes = rng.integers(-127, 128, size=(2, *k.shape)).astype(np.int8).view(np.uint8)
    else:
        pool = np.array([c for c in range(256) if c & 0x7f != 0x7f], np.uint8)
        codes = rng.choice(pool, size=(2, *k.shape))
    qmax = dp_qmax = 127.0 if kv_dtype == "int8" else 448.0
    scales = (rng.uniform(0.5, 2.0, size=(2, *k.shape[:3])) / qmax).astype(np.float32)
    deq = [quant.dequantize(codes[i].view(np.int8) if kv_dtype == "int8" else codes[i],
                            kv_dtype, scales[i]) for i in range(2)]
    assert dp_qmax * scales.max() < 5   # logits stay moderate: no one-hot softmax
    cfg = dp.tc_config("float16", head_dim, heads // kv, dp.KV_QUANT_IDS[kv_dtype], True,
                       impl=impl, **({"fp8_bits": True} if bits else {}))
    assert cfg.impl == impl
    w = planned(args, heads, kv, head_dim, page, "float16", 2, cfg)
    out = launch(w, q, codes[0], codes[1], scales[0], scales[1], poisoned(q.shape, "float16"))
    check_close(out, reference((q, deq[0], deq[1], tables, lens)), "float16")
