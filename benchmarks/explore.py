"""Time kernel variants on the GPU in one go (tuning runs; the results go to NOTES.md).

    python3 benchmarks/explore.py [--flex]

Variants are compile-time options of the same sources (-DDECODE_UNROLL=..., -maxrregcount)
and launch choices (threads per block, partition length). Each decode variant's output is
compared with the default's; each prefill variant's with torch SDPA.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

from pagedattn_lab import kernels  # noqa: E402
from pagedattn_lab.attention_decode import DecodePlan  # noqa: E402
from pagedattn_lab.attention_prefill import plan_prefill, tiled_shared_bytes  # noqa: E402
from pagedattn_lab.bench.timing import Timer, copy_bandwidth  # noqa: E402
from pagedattn_lab.bench.workloads import (  # noqa: E402
    DecodeWorkload,
    PrefillWorkload,
    build_decode_inputs,
    build_prefill_inputs,
    d64_lengths,
)

_CACHE = {}


def compiled(file, name, options=()):
    key = (file, name, options)
    if key not in _CACHE:
        _CACHE[key] = cp.RawKernel(kernels.source(file), name, options=options)
    return _CACHE[key]


def decode_variant(plan, opts, threads, part_len):
    """A launcher for `plan`'s inputs with other compile options / block size / partition."""
    s = plan.shapes
    suffix = "f16" if plan.dtype == np.float16 else "f32"
    opts = tuple(opts)
    part = compiled("decode", f"paged_decode_{suffix}_g{plan.gmax}", opts)
    merge = compiled("decode", f"paged_decode_merge_{suffix}")
    max_len = int(cp.asnumpy(plan.seq_lens).max())
    part_len = part_len or max_len
    max_parts = -(-max_len // part_len)
    po = cp.empty((s.batch, s.num_heads, max_parts, s.head_dim), cp.float32)
    pml = cp.empty((s.batch, s.num_heads, max_parts, 2), cp.float32)
    shared = threads // 32 * plan.gmax * (2 + s.head_dim) * 4
    shift = s.page_size.bit_length() - 1 if s.page_size & (s.page_size - 1) == 0 else -1
    i32 = np.int32
    out = cp.empty_like(plan.out)

    def run():
        part((max_parts, plan.grid_y, s.batch), (threads,),
             (plan.q, plan.k_cache, plan.v_cache, plan.block_tables, plan.seq_lens, out, po, pml,
              i32(s.num_heads), i32(s.num_kv_heads), i32(s.head_dim), i32(s.page_size),
              i32(shift), i32(s.max_pages_per_seq), i32(part_len), i32(max_parts),
              plan.scale_log2), shared_mem=shared)
        if max_parts > 1:
            merge((s.num_heads, s.batch), (128,),
                  (po, pml, plan.seq_lens, out, i32(s.num_heads), i32(s.head_dim),
                   i32(part_len), i32(max_parts)))
        return out
    return run


def rel(a, b):
    a, b = cp.asarray(a, cp.float32), cp.asarray(b, cp.float32)
    return float(cp.linalg.norm(a - b) / cp.linalg.norm(b))


def explore_decode(timer, copy_bw, w, variants, reps=20):
    """variants: (options, threads, part_len or None) triples; or unrolls x threads x parts."""
    inp = build_decode_inputs(cp, w)
    plan = DecodePlan(**inp)
    ref = plan().copy()
    nbytes = w.bytes_moved()

    def line(label, ms, err=0.0):
        print(f"  {w.name:9s} {label:58s} {ms:8.3f} ms {nbytes / ms / 1e6:7.0f} GB/s "
              f"{100 * nbytes / (ms * 1e-3) / copy_bw:5.1f}% copy  err {err:.1e}", flush=True)
    line(f"default (part {plan.part_len} x{plan.max_parts})", timer.time(plan, reps=reps).median_ms)
    line("default, launch time not hidden",
         timer.time(plan, reps=reps, hide_launch=False).median_ms)
    best = (1e9, "")
    for opts, th, p in variants:
        fn = decode_variant(plan, opts, th, p)
        err = rel(fn(), ref)
        tv = timer.time(fn, reps=reps)
        label = f"{' '.join(opts) or 'defaults'} threads={th} part={p or 'none'}"
        line(label, tv.median_ms, err)
        best = min(best, (tv.median_ms, label))
    print(f"  best: {best[1]} {best[0]:.3f} ms", flush=True)
    del inp, plan
    cp.get_default_memory_pool().free_all_blocks()


def grid(unrolls, threads_list, parts):
    return [((f"-DDECODE_UNROLL={u}",), th, p) for u in unrolls for th in threads_list
            for p in parts]


def explore_prefill(timer, torch, w):
    inp = build_prefill_inputs(cp, w)
    scale = 1 / math.sqrt(w.head_dim)
    tiled = plan_prefill(**inp, scale=scale)
    ref = tiled().copy()
    flops = w.flops()

    def line(label, ms, err=0.0):
        print(f"  {w.name:9s} {label:34s} {ms:8.3f} ms {flops / ms / 1e9:7.2f} TFLOP/s "
              f"err {err:.1e}", flush=True)
    line("tiled (default)", timer.time(tiled, reps=20).median_ms)
    s_q = inp["q"]
    for opts in [("--maxrregcount=128",), ("--maxrregcount=168",)]:
        try:
            kern = compiled("prefill_tiled", "prefill_tiled_f32_d64", opts)
        except Exception as exc:
            print("  compile failed", opts, exc)
            continue
        out = cp.empty_like(s_q)
        ps = w.page_size
        args = (s_q, inp["k_cache"], inp["v_cache"], inp["block_tables"], inp["seq_lens"], out,
                np.int32(w.seq_len), np.int32(w.num_heads), np.int32(w.num_heads), np.int32(ps),
                np.int32(ps.bit_length() - 1), np.int32(inp["block_tables"].shape[1]),
                np.float32(scale * 1.4426950408889634))
        grid = (w.num_heads, w.batch, -(-w.seq_len // 64))

        def run(kern=kern, args=args, out=out):
            kern(grid, (128,), args, shared_mem=tiled_shared_bytes(64))
            return out
        err = rel(run(), ref)
        line(f"tiled {' '.join(opts)}", timer.time(run, reps=20).median_ms, err)
    naive = plan_prefill(**inp, scale=scale, kernel="naive")
    err = rel(naive(), ref)
    line("naive", timer.time(naive, reps=3, warmup=1).median_ms, err)
    if torch is not None:
        from pagedattn_lab.bench.baselines import sdpa_prefill
        fn = sdpa_prefill(torch, inp, w, scale)
        err = rel(cp.asarray(fn().contiguous()), ref)
        line("torch sdpa fp32 causal", timer.time(fn, reps=20).median_ms, err)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION):
            line("torch sdpa (efficient backend)", timer.time(fn, reps=20).median_ms)
    del inp
    cp.get_default_memory_pool().free_all_blocks()


def explore_flex(timer, torch, copy_bw, w):
    from pagedattn_lab.bench.baselines import flex_paged
    inp = build_decode_inputs(cp, w)
    ref = DecodePlan(**inp)()
    t0 = time.time()
    try:
        fn = flex_paged(torch, inp, w, 1 / math.sqrt(w.head_dim))
        out = fn()
        ms = timer.time(fn, reps=20).median_ms
        print(f"  flex-paged {w.name}: {ms:.3f} ms, "
              f"{100 * w.bytes_moved() / (ms * 1e-3) / copy_bw:.1f}% copy, err "
              f"{rel(cp.asarray(out.contiguous()), ref):.1e}, "
              f"set-up+compile {time.time() - t0:.0f} s")
    except Exception as exc:
        print(f"  flex-paged {w.name} FAILED: {type(exc).__name__}: {exc}"[:2000])
    del inp
    cp.get_default_memory_pool().free_all_blocks()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flex", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gqa", action="store_true", help="only the GQA/prefetch variants")
    args = ap.parse_args()
    try:
        import torch
    except Exception:
        torch = None
    props = cp.cuda.runtime.getDeviceProperties(0)
    timer = Timer(cp)
    timer.warm_up()
    copy_bw = copy_bandwidth(cp, timer)
    print(f"{props['name']}: {props['multiProcessorCount']} SMs, copy {copy_bw / 1e9:.0f} GB/s",
          flush=True)
    d64 = d64_lengths()
    if args.gqa:
        pf, u1, u4 = "-DDECODE_PREFETCH_GROUP=4", "-DDECODE_UNROLL_GQA=1", "-DDECODE_UNROLL_GQA=4"
        gqa = [((), 128, 512), ((u1,), 128, 512), ((u4,), 128, 512), ((pf,), 128, 512),
               ((pf, u1), 128, 512), ((pf, "--maxrregcount=128"), 128, 512), ((), 128, 256),
               ((pf,), 128, 256), ((), 256, 512), ((pf, u1), 256, 512)]
        explore_decode(timer, copy_bw, DecodeWorkload("GQA", d64, num_kv_heads=8), gqa)
        explore_decode(timer, copy_bw, DecodeWorkload("GQA8", d64, num_heads=64, num_kv_heads=8),
                       gqa)
        explore_decode(timer, copy_bw, DecodeWorkload("D64", d64),
                       [((), 128, 512), (("-DDECODE_PREFETCH_GROUP=1",), 128, 512),
                        (("-DDECODE_PREFETCH_GROUP=1", "-DDECODE_UNROLL=2"), 128, 512)])
        return
    explore_decode(timer, copy_bw, DecodeWorkload("D64", d64),
                   grid([2, 4, 8], [128, 256], [256, 512, 1024, None]))
    if not args.quick:
        explore_decode(timer, copy_bw, DecodeWorkload("long", (32768,) * 8),
                       grid([4, 8], [128, 256], [512, 1024, 2048]))
        explore_decode(timer, copy_bw, DecodeWorkload("short", (128,) * 256),
                       grid([2, 4, 8], [128, 256], [None, 64]))
        for ps in (64, 128):
            explore_decode(timer, copy_bw, DecodeWorkload(f"D64-p{ps}", d64, page_size=ps),
                           grid([4, 8], [128], [512]))
    explore_prefill(timer, torch, PrefillWorkload("prefill"))
    if args.flex and torch is not None:
        explore_flex(timer, torch, copy_bw, DecodeWorkload("D64", d64))


if __name__ == "__main__":
    main()
