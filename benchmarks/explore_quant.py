"""Time variants of the SIMT decode kernel over compressed pages on the GPU in one go (tuning
runs; the results go to NOTES.md).

    python3 benchmarks/explore_quant.py [--reps 20] [--only MHA,GQA] [--kinds fp8_e4m3/static,...]
                                        [--baseline EXPANDED_DECODE_CU]

Variants are compile-time knobs of kernels/decode.cu (packed fp16 arithmetic, tokens in
flight per thread group, blocks per SM, bytes per load of codes) and the query heads per
block; each variant's output is compared with the default's, its time with the fp16 cache's
(the planner's kernel) in the same process.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

from pagedattn_lab import decode_plan as dp  # noqa: E402
from pagedattn_lab import wrappers  # noqa: E402
from pagedattn_lab.bench import quant as bq  # noqa: E402
from pagedattn_lab.bench.timing import Timer, copy_bandwidth  # noqa: E402
from pagedattn_lab.rawkernel import RawKernel  # noqa: E402

# (name, extra -D options, 8-byte loads from this many heads per block, heads per block,
#  the scale schemes it is timed with[, decode_plan constants set for the variant])
BOTH, STATIC, PER_TOKEN = ("static", "per_token"), ("static",), ("per_token",)
VARIANTS = {
    "MHA": [("default", (), wrappers.QUANT_NARROW_GMAX, None, BOTH),
            ("L2 256-byte fetch", ("-DCODE_L2_256=1",), 8, None, BOTH),
            ("slack 3 (round r3)", ("-DRESCALE_SLACK=3",), 8, None, STATIC),
            ("fp32 arithmetic", ("-DHALF2_MATH=0",), 8, None, STATIC)],
    "GQA": [("default", (), wrappers.QUANT_NARROW_GMAX, None, BOTH),
            ("partitions of 512", (), 8, None, BOTH, {"COMPRESSED_SIMT_PART_LEN": 512}),
            ("grid order (no list)", (), 8, None, BOTH, {"COMPRESSED_SIMT_LONGEST_FIRST": False}),
            ("dots in fp32 lanes", ("-DDOT_PACK=0",), 8, None, STATIC)],
}
BASELINE = "baseline source"   # the variant that times --baseline's kernel source
KINDS = [("fp8_e4m3", "static"), ("int8", "static"), ("fp8_e4m3", "per_token"),
         ("int8", "per_token")]


def plan_variant(w, d, kv_dtype, scheme, extra, narrow, gmax, plan=None, source=None):
    """A plan of the SIMT kernel with extra -D options, 8-byte loads from `narrow` heads per
    block, `gmax` heads per block, the decode_plan constants in `plan` (a dict) set, compiled
    from `source` (an expanded decode.cu, e.g. another commit's) instead of the package's
    kernels/decode.cu."""
    plan = plan or {}
    saved = (dp.simt_options, wrappers.QUANT_NARROW_GMAX, dp.group_kernel_size,
             wrappers.load_kernel)
    saved_plan = {name: getattr(dp, name) for name in plan}
    base_options = dp.simt_options
    dp.simt_options = lambda *a: base_options(*a) + tuple(extra)
    wrappers.QUANT_NARROW_GMAX = narrow
    if gmax:
        dp.group_kernel_size = lambda group: gmax
    for name, value in plan.items():
        setattr(dp, name, value)
    if source:
        load = saved[-1]
        wrappers.load_kernel = lambda filename, name, options=(): (
            RawKernel(source, name, options=options) if filename == "decode"
            else load(filename, name, options))
    try:
        return bq.ours(cp, w, d, kv_dtype, scheme, kernel="simt")
    finally:
        dp.simt_options, wrappers.QUANT_NARROW_GMAX, dp.group_kernel_size, wrappers.load_kernel \
            = saved
        for name, value in saved_plan.items():
            setattr(dp, name, value)


def key_of(w):
    return "MHA" if w.num_heads == w.num_kv_heads else "GQA"


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--only", default="MHA,GQA")
    p.add_argument("--kinds", default=",".join(f"{k}/{s}" for k, s in KINDS),
                   help="format/scheme pairs, in this order")
    p.add_argument("--baseline", help="an expanded decode.cu (kernels.expanded_source, e.g. "
                   "of another commit) timed as a variant after the default")
    args = p.parse_args(argv)
    baseline = Path(args.baseline).read_text() if args.baseline else None
    only = args.only.split(",")
    kinds = [tuple(k.split("/")) for k in args.kinds.split(",")]
    timer = Timer(cp)
    timer.warm_up(0.5)
    copy_rate = copy_bandwidth(cp, timer)
    print(f"copy rate {copy_rate / 1e12:.2f} TB/s", flush=True)
    fp16_ms = {}
    for w in bq.workloads():   # the fp16 time of each workload (the planner's kernel)
        if key_of(w) not in only:
            continue
        d = bq.build(cp, w, "float16", None, seed=1)
        fp16_ms[w.name] = timer.time(bq.ours(cp, w, d, "float16", None), reps=args.reps).median_ms
        print(f"{w.name:14s}  float16  (plan's kernel) {fp16_ms[w.name]:.3f} ms", flush=True)
        del d
    for kv_dtype, scheme in kinds:   # the most telling rows first: a time limit may cut the rest
        for w in bq.workloads():
            key = key_of(w)
            if key not in only:
                continue
            d = bq.build(cp, w, kv_dtype, scheme, seed=1)
            nbytes = bq.bytes_read(w, kv_dtype, scheme)
            ref = None
            variants = list(VARIANTS[key])
            if baseline:
                # main's kernel takes neither the work list nor the longer partitions
                variants.insert(1, (BASELINE, (), wrappers.QUANT_NARROW_GMAX, None, BOTH,
                                    {"COMPRESSED_SIMT_LONGEST_FIRST": False,
                                     "COMPRESSED_SIMT_PART_LEN": dp.PART_LEN}, baseline))
            for name, extra, narrow, gmax, schemes, *more in variants:
                if scheme not in schemes:
                    continue
                try:
                    fn = plan_variant(w, d, kv_dtype, scheme, extra, narrow, gmax, *more)
                    t = timer.time(fn, reps=args.reps)
                    out = fn().copy()
                    ref = out if ref is None else ref
                    diff = bq.rel_diff(cp, out, ref)
                    print(f"{w.name:14s} {kv_dtype:>8s} {scheme:>9s} {name:22s} "
                          f"{t.median_ms:.3f} ms  {nbytes / (t.median_ms * 1e-3) / copy_rate:4.0%}"
                          f" of copy  x{t.median_ms / fp16_ms[w.name]:.3f} of fp16  "
                          f"diff {diff:.1e}", flush=True)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"{w.name:14s} {kv_dtype:>8s} {scheme:>9s} {name:22s} failed: "
                          f"{type(exc).__name__}: {str(exc)[:150]}", flush=True)
            del d
            cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
