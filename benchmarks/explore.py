"""Time variants of the tensor-core decode kernel on the GPU in one go (tuning runs; the
results go to NOTES.md).

    python3 benchmarks/explore.py [--only D64,D64-gqa4] [--reps 20]

Variants are the planner's knobs (pagedattn_lab.decode_plan): tokens per K/V tile and tiles in
flight (compile-time -D options of kernels/decode_tc.cu), and how many blocks per SM the
automatic split-K aims for. Each variant's output is compared with the default's.
"""
import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

from pagedattn_lab import decode_plan as dp  # noqa: E402
from pagedattn_lab.bench.timing import Timer, copy_bandwidth  # noqa: E402
from pagedattn_lab.bench.workloads import build_decode_inputs, decode_workloads  # noqa: E402
from pagedattn_lab.wrappers import BatchDecodeWrapper  # noqa: E402

# (name, tokens per tile (None: the default for the head size), stages, blocks per SM target)
B = dp.TC_BLOCKS_PER_SM
VARIANTS = [
    ("default", None, dp.TC_STAGES, B),
    ("T64 S3", 64, 3, B), ("T128 S2", 128, 2, B),
    ("split x0.5", None, dp.TC_STAGES, B // 2), ("split x2", None, dp.TC_STAGES, B * 2),
]
DEFAULT_ONLY = "D64-gqa4,D64-mqa16,8x32k-gqa4,1x32k-gqa4"


def rel(a, b):
    a, b = cp.asarray(a, cp.float32), cp.asarray(b, cp.float32)
    return float(cp.linalg.norm(a - b) / cp.linalg.norm(b))


def plan_variant(inp, w, tile_t, stages, per_sm):
    default_tile = dp.tc_tile_tokens
    saved = (dp.TC_STAGES, dp.TC_BLOCKS_PER_SM, dp.tc_tile_tokens)
    dp.TC_STAGES, dp.TC_BLOCKS_PER_SM = stages, per_sm
    dp.tc_tile_tokens = (lambda d: tile_t) if tile_t else default_tile
    try:
        return BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], w.num_heads,
                                         w.num_kv_heads, w.head_dim, w.page_size, w.dtype,
                                         kernel="tensor_core")
    finally:
        dp.TC_STAGES, dp.TC_BLOCKS_PER_SM, dp.tc_tile_tokens = saved


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--only", default=DEFAULT_ONLY)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    timer = Timer(cp)
    timer.warm_up()
    copy_bw = copy_bandwidth(cp, timer)
    print(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s")
    wanted = args.only.split(",")
    lines = []
    for w in [w for w in decode_workloads() if w.name in wanted]:
        inp = build_decode_inputs(cp, w)
        q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
        ref = None
        for name, tile_t, stages, per_sm in VARIANTS:
            try:
                plan = plan_variant(inp, w, tile_t, stages, per_sm)
                out = cp.empty_like(q)
                fn = lambda p=plan, o=out: p.run(q, k, v, out=o, scale=1 / math.sqrt(w.head_dim))
                fn()
                err = 0.0 if ref is None else rel(out, ref)
                ref = out.copy() if ref is None else ref
                t = timer.time(fn, reps=args.reps)
                pct = 100 * w.bytes_moved() / (t.median_ms * 1e-3) / copy_bw
                line = (f"{w.name:<14} {name:<11} {t.median_ms:7.3f} ms {pct:6.1f}% copy  "
                        f"part {plan.part_len:5d} x{plan.max_parts:<3d} grid {plan.grid}  "
                        f"err {err:.1e}")
            except Exception as exc:
                line = f"{w.name:<14} {name:<11} failed: {type(exc).__name__}: {exc}"
            print(line, flush=True)
            lines.append(line)
        del inp
        cp.get_default_memory_pool().free_all_blocks()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
