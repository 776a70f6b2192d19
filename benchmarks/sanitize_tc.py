"""The tensor-core decode kernels' shapes (kernels/decode_mma.cu, the planner's for fp16/bf16
pages, and lesson 09's kernels/decode_tc.cu: "wmma" cases and compressed pages) and
compressed-page variants once each at a small size on the GPU, for compute-sanitizer
(memcheck, racecheck, synccheck):

    compute-sanitizer --tool racecheck --error-exitcode 9 python3 benchmarks/sanitize_tc.py
                                                                         [--balanced]

(--balanced: only decode_mma.cu's balanced-range cases.)

Every array is its own cudaMalloc (no memory pool), outputs are poisoned with NaN, and each
result is checked against the float64 reference (exit status 1 on a mismatch). Run from the
repository root.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

from pagedattn_lab import decode_plan as dp  # noqa: E402
from pagedattn_lab import quant  # noqa: E402
from pagedattn_lab.reference import reference_decode  # noqa: E402
from pagedattn_lab.validate_scale import LOG2E  # noqa: E402
from pagedattn_lab.wrappers import BatchDecodeWrapper  # noqa: E402
from sanitize import problem as sanitize_problem  # noqa: E402 - benchmarks/ is the script's folder

cp.cuda.set_allocator(None)


def problem(rng, lens, page, heads, kv_heads, head_dim):
    """sanitize.py's problem with float32 K/V (quantized or cast per case) and fp16 q."""
    q, k, v, tables, lens = sanitize_problem(rng, lens, page, heads, kv_heads, head_dim,
                                             np.float32)
    return q.astype(np.float16), k, v, tables, lens


def run_case(rng, name, lens, page, heads, kv, d, splits, cfg_kw, kv_dtype=None, scheme=None,
             ranges=None):
    """ranges: decode_mma.cu's balanced ranges, that many (None: the plan's; with splits,
    one partition per block)."""
    q, k, v, tables, lens = problem(rng, lens, page, heads, kv, d)
    cfg = dp.tc_config("float16", d, heads // kv,
                       dp.KV_QUANT_IDS[kv_dtype], scheme == "per_token", **cfg_kw)
    if kv_dtype:
        codes, scales, deq = [], [], []
        for x in (k, v):
            s = (quant.per_token_scales(x, kv_dtype) if scheme == "per_token"
                 else quant.static_scales(x.reshape(-1, kv, d), kv_dtype))
            per_slot = s if scheme == "per_token" else np.broadcast_to(s, x.shape[:3])
            c = quant.quantize(x, kv_dtype, per_slot)
            codes.append(c.view(np.uint8))
            scales.append(np.ascontiguousarray(s, np.float32))
            deq.append(quant.dequantize(c, kv_dtype, per_slot))
        kd, vd = deq
    else:
        k, v = k.astype(np.float16), v.astype(np.float16)
        codes, scales, (kd, vd) = [k, v], [None, None], (k, v)
    dev_t, dev_l = cp.asarray(tables), cp.asarray(lens)
    w = BatchDecodeWrapper().plan(dev_t, dev_l, heads, kv, d, page, "float16",
                                  kernel="tensor_core", num_splits=splits)
    w._launches = []
    w._plan_tensor_core(lens, splits, tc=cfg, scheme="balanced" if ranges else None,
                        ranges=ranges)   # (unasked, a problem this small is one wave of items)
    assert ranges is None or w.scheme == "balanced"
    out = cp.full(q.shape, np.nan, np.float16)
    dq, dk, dv = cp.asarray(q), cp.asarray(codes[0]), cp.asarray(codes[1])
    s = np.float32(LOG2E / np.sqrt(d))
    for _ in range(2):   # twice: the merge counters must be reset by the first launch
        for kern, grid, block, make_args, shared in w._launches:
            a = (make_args(dq, dk, dv, out, s) if kv_dtype is None else
                 make_args(dq, dk, dv, out, s, cp.asarray(scales[0]), cp.asarray(scales[1])))
            kern(grid, block, a, shared_mem=shared)
    ref = reference_decode(q.astype(np.float32), kd.astype(np.float32), vd.astype(np.float32),
                           tables, lens)
    res = cp.asnumpy(out).astype(np.float64)
    err = float(np.linalg.norm(res - ref) / np.linalg.norm(ref))
    ok = bool(np.isfinite(res).all() and err < 2e-3)
    print(f"{name:52s} rel err {err:.2e} {'ok' if ok else 'WRONG'}", flush=True)
    return ok


def main():
    rng = np.random.default_rng(11)
    cases = [   # name, lens, page, heads, kv, head_dim, splits, shape, kv_dtype, scheme
        ("tc default GQA4 d128 split 3", [300, 17, 1], 16, 8, 2, 128, 3, {}),
        ("tc default MQA16 d128 (8 warps in pairs) auto split", [900, 17, 1], 16, 16, 1, 128,
         None, {}),
        ("tc default GQA4 d256 (pairs, 32-token tiles) split 2", [120, 5], 16, 8, 2, 256, 2, {}),
        ("tc W8D2 GQA4 d128 page 7 split 3", [300, 17, 1], 7, 8, 2, 128, 3,
         {"warps": 8, "tile_t": 64, "stages": 2, "d_split": 2, "min_blocks": 2}),
        ("tc W8D4T32 MQA16 d128 split 2", [200, 9], 16, 16, 1, 128, 2,
         {"warps": 8, "tile_t": 32, "stages": 2, "d_split": 4, "min_blocks": 3}),
        ("tc W4D2T32S3 GQA8 d64 page 12", [150, 40], 12, 16, 2, 64, None,
         {"warps": 4, "tile_t": 32, "stages": 3, "d_split": 2, "min_blocks": 3}),
        ("tc W6D2T48 GQA4 d96 split 2", [200, 30], 16, 8, 2, 96, 2,
         {"warps": 6, "tile_t": 48, "stages": 2, "d_split": 2, "min_blocks": 3}),
        ("tc W8D4T32 GQA4 d256 split 2", [120, 5], 16, 8, 2, 256, 2,
         {"warps": 8, "tile_t": 32, "stages": 2, "d_split": 4, "min_blocks": 2}),
        ("tc W4D4T16 GQA4 d256 split 2", [120, 5], 16, 8, 2, 256, 2,
         {"warps": 4, "tile_t": 16, "stages": 2, "d_split": 4, "min_blocks": 4}),
        ("tc group 40 (4 row tiles) d64 split 2", [90, 5], 16, 40, 1, 64, 2, {}),
        ("tc W4 warp pipelines GQA4 d128 page 7 split 3", [300, 17, 1], 7, 8, 2, 128, 3,
         {"warps": 4, "tile_t": 64, "stages": 2, "warp_pipe": True}),
        ("tc W2 warp pipelines S3 MQA16 d64", [200, 9], 16, 16, 1, 64, 2,
         {"warps": 2, "tile_t": 32, "stages": 3, "warp_pipe": True}),
        ("tc W8D2 group 40 (4 row tiles) d64 split 2", [90, 5], 16, 40, 1, 64, 2,
         {"warps": 8, "tile_t": 64, "stages": 2, "d_split": 2, "min_blocks": 2}),
    ]
    cases += [   # decode_mma.cu's variants (explore.py) and lesson 09's WMMA kernel
        ("mma W4 S3 two S chains GQA4 d64 page 7 split 3", [300, 17, 1], 7, 8, 2, 64, 3,
         {"warps": 4, "tile_t": 64, "stages": 3, "s_chains": 2, "impl": "mma"}),
        ("mma W8 T128 GQA8 d128 split 2", [300, 9], 16, 16, 2, 128, 2,
         {"warps": 8, "tile_t": 128, "stages": 2, "impl": "mma"}),
        ("mma W4 padded rows GQA4 d128 page 5", [100, 9], 5, 8, 2, 128, None,
         {"warps": 4, "tile_t": 64, "stages": 2, "swizzle": False, "impl": "mma"}),
        ("mma W4 T32 Q reloaded GQA4 d256 split 2", [120, 5], 16, 8, 2, 256, 2,
         {"warps": 4, "tile_t": 32, "stages": 2, "impl": "mma"}),
        ("mma W2 T32 S4 GQA4 d80 page 3 split 2", [100, 9], 3, 8, 2, 80, 2,
         {"warps": 2, "tile_t": 32, "stages": 4, "min_blocks": 4, "impl": "mma"}),
        ("mma W4 warp pipelines S3 GQA4 d128 page 7 split 3", [300, 17, 1], 7, 8, 2, 128, 3,
         {"warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True, "impl": "mma"}),
        ("wmma default GQA4 d128 split 3", [300, 17, 1], 16, 8, 2, 128, 3, {"impl": "wmma"}),
        ("wmma default MQA16 d128 auto split", [900, 17, 1], 16, 16, 1, 128, None,
         {"impl": "wmma"}),
        ("wmma W4 warp pipelines GQA4 d128 page 7 split 3", [300, 17, 1], 7, 8, 2, 128, 3,
         {"warps": 4, "tile_t": 64, "stages": 2, "warp_pipe": True, "impl": "wmma"}),
    ]
    for kv_dtype in ("int8", "fp8_e4m3"):
        for scheme in ("static", "per_token"):
            cases.append((f"mma {kv_dtype} {scheme} GQA4 d128 W4P S3 page 7 split 3", [300, 17, 1],
                          7, 8, 2, 128, 3, {"warps": 4, "tile_t": 64, "stages": 3,
                                            "warp_pipe": True, "impl": "mma"}, kv_dtype, scheme))
            cases.append((f"mma {kv_dtype} {scheme} GQA4 d256 pairs T32 split 2", [120, 5], 16,
                          8, 2, 256, 2, {"impl": "mma"}, kv_dtype, scheme))
            cases.append((f"mma {kv_dtype} {scheme} GQA4 d128 T128 e4m3 bits split 2",
                          [300, 5], 16, 8, 2, 128, 2, {"warps": 4, "tile_t": 128, "stages": 2,
                                                       "fp8_bits": True, "impl": "mma"},
                          kv_dtype, scheme))
            cases.append((f"tc {kv_dtype} {scheme} GQA4 d128 page 16 split 3", [300, 17, 1], 16,
                          8, 2, 128, 3, {}, kv_dtype, scheme))
            cases.append((f"tc {kv_dtype} {scheme} MQA16 d64 page 5 W8D2S3", [90, 3], 5, 16,
                          1, 64, 2, {"warps": 8, "tile_t": 64, "stages": 3, "d_split": 2,
                                     "min_blocks": 2}, kv_dtype, scheme))
            cases.append((f"tc {kv_dtype} {scheme} GQA4 d128 warp pipelines S3", [200, 9], 16,
                          8, 2, 128, 2, {"warps": 4, "tile_t": 64, "stages": 3,
                                         "warp_pipe": True}, kv_dtype, scheme))
    ones = [1] * 9 + [50, 1, 1, 1, 30]   # one-tile segments in a row: Q buffers rotate
    balanced = [   # decode_mma.cu's balanced ranges across sequences (stream-K)
        ("mma balanced planner GQA4 d128 7 ranges", [300, 17, 1, 1, 1, 64, 129], 16, 8, 2,
         128, None, {}, None, None, 7),
        ("mma balanced W4 S3 block pipeline GQA4 d128 page 7", [300, 17, 1, 64, 129], 7, 8, 2,
         128, None, {"warps": 4, "tile_t": 64, "stages": 3, "impl": "mma"}, None, None, 5),
        ("mma balanced W2P T32 S4 one-token sequences d64", ones, 16, 8, 2, 64, None,
         {"warps": 2, "tile_t": 32, "stages": 4, "warp_pipe": True, "impl": "mma"}, None, None,
         3),
        ("mma balanced W1 T16 S3 one-token sequences d64", ones, 16, 8, 2, 64, None,
         {"warps": 1, "tile_t": 16, "stages": 3, "impl": "mma"}, None, None, 4),
        ("mma balanced MQA16 W8D2 S3 d128 9 ranges", [900, 17, 1], 16, 16, 1, 128, None, {},
         None, None, 9),
        ("mma balanced GQA4 d256 pairs 4 ranges", [120, 5, 33], 16, 8, 2, 256, None, {}, None,
         None, 4),
        ("mma balanced group 40 d64 3 ranges", [90, 5, 33], 16, 40, 1, 64, None, {}, None,
         None, 3),
        ("mma balanced separate merge launch GQA4 d128", [300, 17, 1, 64, 129], 16, 8, 2, 128,
         None, {"separate_merge": True}, None, None, 5),
        ("mma balanced more ranges than tiles d128", [300, 1, 70], 16, 8, 2, 128, None, {},
         None, None, 100),
        ("mma balanced fp8 static T128 d128 4 ranges", [300, 17, 1, 129], 16, 8, 2, 128, None,
         {}, "fp8_e4m3", "static", 4),
        ("mma balanced int8 per-token W4P T128 S3 d128", [300, 17, 1, 129], 16, 8, 2, 128, None,
         {"warps": 4, "tile_t": 128, "stages": 3, "warp_pipe": True, "impl": "mma"}, "int8",
         "per_token", 4),
    ]
    only = sys.argv[1:] == ["--balanced"]   # the balanced cases alone
    ok = all([run_case(rng, *c) for c in (balanced if only else cases + balanced)])
    print("all results match the reference" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
