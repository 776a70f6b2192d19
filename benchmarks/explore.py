"""Time variants of the tensor-core decode kernel on the GPU in one process, next to
FlashInfer's tensor-core decode on the same pages (tuning runs; the results go to NOTES.md).

    python3 benchmarks/explore.py [--rows D64-gqa4,...] [--reps 15] [--json out.json]
                                  [--no-flashinfer] [--no-quant] [--no-host]

A variant is one compiled shape of kernels/decode_tc.cu (warps per block, tokens per K/V
tile, tiles in flight, accumulators of the S chain: -D options through
`decode_plan.tc_config`) and the split-K target (blocks per SM). Each variant's output is
compared with the first's; compressed-page variants (int8 / fp8 codes, static or per-token
scales) with the fp16 kernel run on the dequantized cache. Kernels are compiled in a thread
pool while FlashInfer builds its own in the background (the first tens of seconds of a fresh
machine). Every line is printed as soon as it is measured.
"""
import argparse
import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402
import numpy as np  # noqa: E402

from pagedattn_lab import decode_plan as dp  # noqa: E402
from pagedattn_lab.bench.timing import Timer, copy_bandwidth, host_time  # noqa: E402
from pagedattn_lab.bench.workloads import build_decode_inputs, decode_workloads  # noqa: E402
from pagedattn_lab.kernels import kernel as load_kernel  # noqa: E402
from pagedattn_lab.wrappers import BatchDecodeWrapper  # noqa: E402

# name: (warps, tile tokens, stages, S accumulators, blocks per SM for the split, quant, per-token)
V = {
    "W4T64S2": (4, 64, 2, 2, 4, 0, False),     # v2's shape (+ two S accumulators)
    "W4T64S2c1": (4, 64, 2, 1, 4, 0, False),   # v2's shape as it was
    "W2T32S4": (2, 32, 4, 2, 4, 0, False),     # 2 warps, 3 tiles in flight: 96 KB per SM
    "W2T32S5": (2, 32, 5, 2, 4, 0, False),     # 128 KB in flight per SM
    "W2T32S3": (2, 32, 3, 2, 4, 0, False),     # 61 KB blocks: 3 per SM
    "W3T48S3": (3, 48, 3, 2, 4, 0, False),
    "W1T16S8": (1, 16, 8, 2, 4, 0, False),     # one warp, no barrier partners
    "W2T32S4/b2": (2, 32, 4, 2, 2, 0, False),  # split for one wave of 2 blocks per SM
    "W2T32S4/b8": (2, 32, 4, 2, 8, 0, False),
    "W4T64S2/b2": (4, 64, 2, 2, 2, 0, False),
    "W4T64S2/b8": (4, 64, 2, 2, 8, 0, False),
    "W1T16S8/b2": (1, 16, 8, 2, 2, 0, False),
    "W3T48S3/b2": (3, 48, 3, 2, 2, 0, False),
    "W2T32S2": (2, 32, 2, 2, 4, 0, False),     # head_dim 256: 80 KB, 2 blocks per SM
    "W1T16S6": (1, 16, 6, 2, 4, 0, False),     # head_dim 256: 110 KB, 160 KB in flight
    "W1T16S4": (1, 16, 4, 2, 4, 0, False),
    "fp8 W4T64S2": (4, 64, 2, 2, 4, 2, False),
    "fp8 W4T64S3": (4, 64, 3, 2, 4, 2, False),
    "fp8 W4T64S4": (4, 64, 4, 2, 4, 2, False),
    "fp8 W2T32S6": (2, 32, 6, 2, 4, 2, False),
    "int8 W4T64S4": (4, 64, 4, 2, 4, 1, False),
    "fp8/tok W4T64S4": (4, 64, 4, 2, 4, 2, True),
    "int8/tok W4T64S4": (4, 64, 4, 2, 4, 1, True),
}
FP16_D128 = ["W4T64S2", "W4T64S2c1", "W2T32S4", "W2T32S5", "W2T32S3", "W3T48S3", "W1T16S8"]
SPLITS = ["W2T32S4/b2", "W2T32S4/b8", "W4T64S2/b2", "W4T64S2/b8", "W1T16S8/b2", "W3T48S3/b2"]
QUANT = ["fp8 W4T64S2", "fp8 W4T64S3", "fp8 W4T64S4", "fp8 W2T32S6", "int8 W4T64S4",
         "fp8/tok W4T64S4", "int8/tok W4T64S4"]
ROWS = {   # row: variants (the first is the reference for the error column), most wanted first
    "D64-gqa4": FP16_D128 + QUANT,
    "D64-mqa16": FP16_D128 + SPLITS,
    "1x32k-gqa4": FP16_D128 + SPLITS,
    "8x32k-gqa4": FP16_D128 + ["fp8 W4T64S4", "int8/tok W4T64S4"],
    "D64-gqa4-d256": ["W4T64S2", "W2T32S2", "W1T16S6", "W1T16S4", "W2T32S3"],
    "D64-gqa8": FP16_D128,
}


def config(w, name):
    warps, tile, stages, chains, _, quant, per_token = V[name]
    return dp.tc_config(w.dtype, w.head_dim, w.group, quant, per_token, warps=warps,
                        tile_t=tile, stages=stages, s_chains=chains)


def compile_all(workloads, names_of):
    """Compile every variant's kernel (NVRTC) in threads; returns the failures by name."""
    jobs = {(w.head_dim, w.group, n): config(w, n) for w in workloads for n in names_of(w)}

    def build(cfg):
        try:
            load_kernel("decode_tc", "paged_decode_tc", cfg.options).gpu.compile()
            return None
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc)[-400:]}"
    with ThreadPoolExecutor(max_workers=12) as pool:
        return {k: r for k, r in zip(jobs, pool.map(build, jobs.values())) if r}


def plan(inp, w, name):
    """Blocks per SM 8 also lets a sequence be cut into 128 partitions (not 64)."""
    per_sm = V[name][4]
    saved = dp.TC_BLOCKS_PER_SM, dp.TC_AUTO_MAX_PARTS
    dp.TC_BLOCKS_PER_SM = per_sm
    dp.TC_AUTO_MAX_PARTS = 128 if per_sm >= 8 else saved[1]
    try:
        p = BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], w.num_heads,
                                      w.num_kv_heads, w.head_dim, w.page_size, w.dtype,
                                      kernel="simt")
        p.kernel, p._launches = "tensor_core", []
        p._plan_tensor_core(cp.asnumpy(inp["seq_lens"]), None, tc=config(w, name))
        return p
    finally:
        dp.TC_BLOCKS_PER_SM, dp.TC_AUTO_MAX_PARTS = saved


def launch(p, q, k, v, out, scale, ks=None, vs=None):
    s = np.float32(scale * dp_log2e())
    for kern, grid, block, make_args, shared in p._launches:
        args = make_args(q, k, v, out, s) if ks is None else make_args(q, k, v, out, s, ks, vs)
        kern(grid, block, args, shared_mem=shared)
    return out


def dp_log2e():
    return 1.4426950408889634


def quantize(torch, x, quant, per_token):
    """(uint8 codes, float32 scales, fp16 dequantized) of an fp16 CuPy cache, on the GPU."""
    t = torch.from_dlpack(x)
    qmax = 127.0 if quant == 1 else 448.0
    amax = t.abs().amax(dim=3) if per_token else t.abs().amax(dim=(0, 1, 3))
    scale = torch.where(amax > 0, amax.float() / qmax, torch.ones_like(amax, dtype=torch.float32))
    s = scale[..., None] if per_token else scale[None, None, :, None]
    y = t.float() / s
    if quant == 1:
        codes = y.round().clamp(-127, 127).to(torch.int8).view(torch.uint8)
        deq = codes.view(torch.int8).float() * s
    else:
        codes = y.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
        deq = codes.view(torch.float8_e4m3fn).float() * s
    del y
    return (cp.from_dlpack(codes.contiguous()), cp.from_dlpack(scale.contiguous()),
            cp.from_dlpack(deq.half().contiguous()))


def rel(a, b):
    a, b = cp.asarray(a, cp.float32), cp.asarray(b, cp.float32)
    return float(cp.linalg.norm(a - b) / cp.linalg.norm(b))


class FlashInfer:
    """FlashInfer's tensor-core decode, built in a background thread."""

    def __init__(self, head_dims):
        self.error, self.fi, self.torch = None, None, None
        self.thread = threading.Thread(target=self._build, args=(head_dims,), daemon=True)
        self.t0 = time.time()
        self.thread.start()

    def _build(self, head_dims):
        try:
            import torch

            from pagedattn_lab.bench.flashinfer_baseline import (decode_runner,
                                                                 import_flashinfer)
            from pagedattn_lab.bench.workloads import DecodeWorkload
            fi = import_flashinfer()
            for d in head_dims:   # one tiny plan per head size compiles its module
                tiny = DecodeWorkload("tiny", (17,), num_heads=8, num_kv_heads=2, head_dim=d)
                decode_runner(fi, torch, build_decode_inputs(cp, tiny), tiny, 0.1, True)()
            self.fi, self.torch = fi, torch
            self.built_s = time.time() - self.t0
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def runner(self, inp, w):
        from pagedattn_lab.bench.flashinfer_baseline import decode_runner
        return decode_runner(self.fi, self.torch, inp, w, 1 / math.sqrt(w.head_dim), True)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--json", default=None)
    p.add_argument("--no-flashinfer", action="store_true")
    p.add_argument("--no-quant", action="store_true")
    p.add_argument("--no-host", action="store_true")
    p.add_argument("--fi-dims", default="128")
    args = p.parse_args(argv)
    t_start = time.time()
    results = []

    def say(line, **row):
        print(f"[{time.time() - t_start:5.1f}s] {line}", flush=True)
        if row:
            results.append(row)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))

    fi = None if args.no_flashinfer else FlashInfer([int(d) for d in args.fi_dims.split(",")])
    by_name = {w.name: w for w in decode_workloads()}
    workloads = [by_name[n] for n in args.rows.split(",")]
    names_of = lambda w: [n for n in ROWS[w.name] if not (args.no_quant and V[n][5])]  # noqa
    failed = compile_all(workloads, names_of)
    say(f"compiled {sum(len(names_of(w)) for w in workloads)} kernels, failures {failed}")
    timer = Timer(cp)
    timer.warm_up(0.5)
    copy_bw = copy_bandwidth(cp, timer)
    say(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s", kind="copy", gbps=copy_bw / 1e9)
    torch, kept = None, []
    for w in workloads:
        inp = build_decode_inputs(cp, w)
        q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
        scale = 1 / math.sqrt(w.head_dim)
        fp16_bytes = w.bytes_moved()
        ref, t_ref = None, None
        for name in names_of(w):
            quant, per_token = V[name][5], V[name][6]
            try:
                pl = plan(inp, w, name)
                out = cp.empty_like(q)
                if quant:
                    if torch is None:
                        import torch
                    kc, ks, kd = quantize(torch, k, quant, per_token)
                    vc, vs, vd = quantize(torch, v, quant, per_token)
                    fn = lambda: launch(pl, q, kc, vc, out, scale, ks, vs)  # noqa: E731
                    fn()
                    expect = launch(plan(inp, w, names_of(w)[0]), q, kd, vd, cp.empty_like(q),
                                    scale)
                    err = rel(out, expect)
                    nbytes = fp16_bytes - w.kv_bytes() // 2 + ks.nbytes + vs.nbytes
                else:
                    fn = lambda: launch(pl, q, k, v, out, scale)  # noqa: E731
                    fn()
                    err = 0.0 if ref is None else rel(out, ref)
                    ref = out.copy() if ref is None else ref
                    nbytes = fp16_bytes
                t = timer.time(fn, reps=args.reps).median_ms
                t_ref = t_ref or t
                pct = 100 * nbytes / (t * 1e-3) / copy_bw
                cfg = pl.tc_config
                say(f"{w.name:<14} {name:<17} {t:7.3f} ms {pct:6.1f}% copy  x{t / t_ref:5.2f} "
                    f"part {pl.part_len:5d} x{pl.max_parts:<3d} grid {pl.grid} smem "
                    f"{cfg.shared // 1024} KB err {err:.1e}",
                    kind="variant", workload=w.name, variant=name, ms=t, pct_copy=pct,
                    part_len=pl.part_len, grid=list(pl.grid), shared=cfg.shared, err=err,
                    bytes=nbytes)
                if quant:
                    del kc, vc, ks, vs, kd, vd
            except Exception as exc:
                say(f"{w.name:<14} {name:<17} failed: {type(exc).__name__}: {str(exc)[-300:]}",
                    kind="variant", workload=w.name, variant=name, error=str(exc)[-300:])
        # our automatic choice (simt where the planner says so)
        auto = BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], w.num_heads,
                                         w.num_kv_heads, w.head_dim, w.page_size, w.dtype)
        out = cp.empty_like(q)
        t = timer.time(lambda: auto.run(q, k, v, out=out, scale=scale), reps=args.reps).median_ms
        say(f"{w.name:<14} {'auto: ' + auto.kernel:<17} {t:7.3f} ms", kind="auto",
            workload=w.name, kernel=auto.kernel, ms=t)
        kept.append((w, inp, ref))
    # FlashInfer last: its JIT build ran in the background meanwhile (inputs kept for it)
    fi_dims = [int(d) for d in args.fi_dims.split(",")]
    for w, inp, ref in kept if fi is not None else []:
        if w.head_dim not in fi_dims:
            continue
        fi.thread.join(timeout=max(0.0, 85 - (time.time() - t_start)))
        if fi.fi is None:
            say(f"{w.name:<14} flashinfer TC not ready: {fi.error}")
            continue
        try:
            run = fi.runner(inp, w)
            got = run()
            err = rel(cp.from_dlpack(got), ref) if ref is not None else 0.0
            t = timer.time(run, reps=args.reps).median_ms
            pct = 100 * w.bytes_moved() / (t * 1e-3) / copy_bw
            say(f"{w.name:<14} {'flashinfer TC':<17} {t:7.3f} ms {pct:6.1f}% copy  "
                f"err {err:.1e} (built in {fi.built_s:.0f} s)", kind="flashinfer",
                workload=w.name, ms=t, pct_copy=pct, err=err)
        except Exception as exc:
            say(f"{w.name:<14} flashinfer TC failed: {exc}", kind="flashinfer",
                workload=w.name, error=str(exc))
    del kept
    cp.get_default_memory_pool().free_all_blocks()
    if not args.no_host:
        host_rows(say, timer)


def host_rows(say, timer):
    """run() host overhead on a tiny plan; the one-shot call on D64 against its kernel."""
    from pagedattn_lab import paged_attention_decode
    from pagedattn_lab.bench.workloads import DecodeWorkload
    for w in (DecodeWorkload("tiny", (16,), num_heads=8, num_kv_heads=8),
              DecodeWorkload("tiny-gqa", (16,), num_heads=32, num_kv_heads=8)):
        inp = build_decode_inputs(cp, w)
        pl = BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], w.num_heads,
                                       w.num_kv_heads, w.head_dim, 16, "float16")
        q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
        out = cp.empty_like(q)
        us = host_time(cp, lambda: pl.run(q, k, v, out=out), calls=200) * 1e6
        say(f"host {w.name}: BatchDecodeWrapper.run {us:.1f} us per run ({pl.kernel})",
            kind="host", workload=w.name, us_per_run=us, kernel=pl.kernel)
    for w in [w for w in decode_workloads() if w.name in ("D64", "D64-gqa4")]:
        inp = build_decode_inputs(cp, w)
        args = (inp["q"], inp["k_cache"], inp["v_cache"], inp["block_tables"], inp["seq_lens"])
        out = cp.empty_like(inp["q"])
        scale = 1 / math.sqrt(w.head_dim)
        pl = BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], w.num_heads,
                                       w.num_kv_heads, w.head_dim, w.page_size, w.dtype)
        kernel_ms = timer.time(lambda: pl.run(*args[:3], out=out, scale=scale), reps=10,
                               flush=False).median_ms
        wall = host_time(cp, lambda: paged_attention_decode(*args, scale, out=out), calls=30)
        say(f"one-shot {w.name}: {wall * 1e3:.3f} ms per call, kernel {kernel_ms:.3f} ms, "
            f"x{wall * 1e3 / kernel_ms:.2f}", kind="one-shot", workload=w.name,
            wall_ms=wall * 1e3, kernel_ms=kernel_ms)
        del inp, args
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
