"""8 x 32k GQA and resident blocks (session 4): what an SM really holds of the tensor-core
decode's blocks, and where the 8 x 32k row's time goes, on the GPU in one process (tuning
runs; the results go to NOTES.md, "8 x 32k GQA and resident blocks").

    python3 benchmarks/explore_long.py [--round s4a|s4b|s4c] [--parts occ,times,bench,ncu]
                                       [--reps 20] [--json out.json] [--raw probe.npz]
                                       [--no-flashinfer] [--alternate N]

occ: per compiled shape, the plan's count of resident blocks from the sizes
(decode_tc_sizes) against the driver's (attention_common.gpu_resident_blocks: the occupancy
API on the compiled kernel with the launch's dynamic shared memory); round s4a asked it with
the default shared-memory carveout and with the preference at 100 %.
times: the kernel recompiled with a clock probe (each block's first thread writes its SM, its
start and end on %globaltimer into a __device__ array; the source is instrumented here, not in
the repository): blocks per SM that actually ran at the same time, the spread of start and end
times, blocks that waited for a slot (--raw: every block's SM, start and end). The probe adds
registers: a shape at the edge of a residency limit may hold fewer blocks with it.
bench: each round's variants (explore.py's and explore_rows.py's names; "+c": carveout
preference 100) and FlashInfer's tensor-core decode on the same pages, last (--alternate N:
then the planner and FlashInfer in turn, N times). ncu: one launch per NCU variant.
Rounds s4b and s4c also timed a pool of entries taken by the blocks after their ranges
(commit ec0bb8d; measured no gain, removed: NOTES.md).
"""
import argparse
import math
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402
import numpy as np  # noqa: E402

import explore as ex  # noqa: E402
import explore_rows  # noqa: E402,F401  (its "R ..." variants into ex.V)
from pagedattn_lab.bench.timing import Timer, copy_bandwidth  # noqa: E402
from pagedattn_lab.bench.workloads import (DecodeWorkload, build_decode_inputs,  # noqa: E402
                                           decode_workloads)
from pagedattn_lab.attention_common import gpu_resident_blocks  # noqa: E402
from pagedattn_lab.decode_tc_sizes import tc_resident_blocks  # noqa: E402
from pagedattn_lab.kernels import expanded_source  # noqa: E402
from pagedattn_lab.kernels import kernel as load_kernel  # noqa: E402
from pagedattn_lab.rawkernel import gpu_options  # noqa: E402

V = ex.V
V["R W4 T64 S2/bal"] = {**V["R W4 T64 S2"], "split": "balanced"}
V["R W4 T64 S2/items"] = {**V["R W4 T64 S2"], "split": "items"}
V["R W4P T64 S2/bal"] = {**explore_rows.rshape(4, 64, 2, pipe=True), "split": "balanced"}
V["R W4P T64 S2 mb3/bal"] = {**explore_rows.rshape(4, 64, 2, mb=3, pipe=True),
                             "split": "balanced"}
V["R W4P T64 S3/items"] = {**V["R W4P T64 S3"], "split": "items"}
for r in ("r1", "r2", "r3"):
    V[f"R W4P T64 S3/{r}"] = {**V["R W4P T64 S3"], "split": r}
V["R W4P T64 S3/b8"] = {**V["R W4P T64 S3"], "split": 8}
V["R W4P T64 S3/b16"] = {**V["R W4P T64 S3"], "split": 16}
V["R W4P T64 S3 C2/items"] = {**explore_rows.rshape(4, 64, 3, pipe=True, s_chains=2),
                              "split": "items"}
V["R W4P T128 S2/items"] = {**explore_rows.rshape(4, 128, 2, pipe=True), "split": "items"}
V["R W8 T128 S2/items"] = {**V["R W8 T128"], "split": "items"}
# round s4b: 3 blocks per SM (73 KB, two stages) on either scheme, with the ranges rounded down
for tag, kw in (("R W4 T64 S2", {}), ("R W4P T64 S2", dict(pipe=True)),
                ("R W4 T64 S2 C2", dict(s_chains=2)),
                ("R W4P T64 S2 C2", dict(pipe=True, s_chains=2)),
                ("R W4 T64 S2 mb3", dict(mb=3)), ("R W4P T64 S2 mb3", dict(mb=3, pipe=True)),
                ("R W2 T32 S2", {}), ("R W2 T32 S3", {}), ("R W2P T32 S3", dict(pipe=True))):
    w_, t_, st = (2, 32, int(tag.split(" S")[1][0])) if "W2" in tag else (4, 64, 2)
    for sch, stag in (("items", "items"), ("balanced", "bal")):
        V[f"{tag}/{stag}"] = {**explore_rows.rshape(w_, t_, st, **kw), "split": sch}
V["R fp8 W4T128S2mb3/bal"] = {**V["R fp8 W4T128S2mb3"], "split": "balanced"}
V["R fp8 W4T128S2mb3/items"] = {**V["R fp8 W4T128S2mb3"], "split": "items"}

# occ: shapes whose residency is asked (name -> workload); the r7 puzzle's three first
OCC_S4A = {"R W4 T64 S2/bal": "D64-gqa4", "R fp8 W4T128S2mb3/bal": "D64-gqa4",
       "M W4P q0 mb3/r1": "D64-gqa4", "R W4P T64 S2 mb3/bal": "D64-gqa4",
       "R W4P T64 S3/r1": "D64-gqa4", "R W4P T64 S2/bal": "D64-gqa4",
       "M W4P S3/r1": "D64-gqa4", "R d256 W4D2T32": "D64-gqa4-d256",
       "R W8 T128 S2/items": "8x32k-gqa4"}
# times: (workload, variant, carveout) clock-probed
TIMES_S4A = [("8x32k-gqa4", "R W4P T64 S3/items", False), ("8x32k-gqa4", "R W4P T64 S3/r1", False),
         ("D64-gqa4", "R W4 T64 S2/bal", False), ("D64-gqa4", "R W4 T64 S2/bal", True),
         ("D64-gqa4", "R fp8 W4T128S2mb3/bal", False), ("D64-gqa4", "R fp8 W4T128S2mb3/bal", True),
         ("D64-gqa4", "R W4P T64 S3/r1", False)]
# bench: 8 x 32k variants ("+c": carveout 100), then D64 GQA 32/8's 3-block shapes with it
BENCH_S4A = {
    "8x32k-gqa4": ["R W4P T64 S3/items", "R W4P T64 S3/items+c", "R W4P T64 S3/r1",
                   "R W4P T64 S3/r2", "R W4P T64 S3/r3", "R W4P T64 S3/b8", "R W4P T64 S3/b16",
                   "R W4P T64 S3 C2/items", "R W4 T64 S3", "R W4 T64 S2/items",
                   "R W4 T64 S2/items+c", "R W4 T64 S2/bal+c", "R W4P T64 S2 mb3/bal+c",
                   "R W4P T128 S2/items", "R W8 T128 S2/items", "M W4P S3/r1",
                   "M W4P S3 sm/r1"],
    # the same kernel on half and twice the tokens: time = fixed + tokens x rate, for both
    "8x16k-gqa4": ["R W4P T64 S3/items", "R W4P T64 S3/r1"],
    "8x64k-gqa4": ["R W4P T64 S3/items", "R W4P T64 S3/r1"],
    "D64-gqa4": ["R W4P T64 S3/r1", "R W4 T64 S2/bal", "R W4 T64 S2/bal+c",
                 "R W4P T64 S2 mb3/bal", "R W4P T64 S2 mb3/bal+c",
                 "R fp8 W4T128S2mb3/bal", "R fp8 W4T128S2mb3/bal+c", "R fp8 W4T128S2mb3/items",
                 "M W4P q0 mb3/r1", "M W4P q0 mb3/r1+c"],
}
# ncu: (workload, variant) launched once each
NCU_S4A = [("8x32k-gqa4", "R W4P T64 S3/items"), ("D64-gqa4", "R W4 T64 S2/bal")]
# round s4b: the ranges rounded down, the driver's count of resident blocks in the plan
S2 = ["R W4 T64 S2", "R W4P T64 S2", "R W4 T64 S2 C2", "R W4P T64 S2 C2", "R W4P T64 S2 mb3"]
OCC_S4B = {f"{n}/bal": "D64-gqa4" for n in S2 + ["R W2 T32 S2", "R W2 T32 S3"]}
OCC_S4B["R W4P T64 S3/r1"] = "D64-gqa4"
OCC_S4B.update({"R fp8 W4T128S2mb3/bal": "D64-gqa4", "M W4P q0 mb3/r1": "D64-gqa4",
                "M W4P S3/r1": "D64-gqa4", "R d256 W4D2T32": "D64-gqa4-d256"})
TIMES_S4B = [("8x32k-gqa4", "R W4P T64 S3/items", False),
             ("8x32k-gqa4", "R W4 T64 S2/items", False),
             ("8x32k-gqa4", "R W4 T64 S2/bal", False), ("D64-gqa4", "R W4 T64 S2/bal", False),
             ("D64-gqa4", "R W4P T64 S3/r1", False)]
BENCH_S4B = {
    "8x32k-gqa4": ["planner", "R W4P T64 S3/items"] + [f"{n}/{s_}" for n in S2
                                                      for s_ in ("items", "bal")]
    + ["R W2 T32 S2/items", "R W2 T32 S3/items", "R W2P T32 S3/items", "M W4P q0 mb3/r1"],
    "D64-gqa4": ["planner", "R W4P T64 S3/r1"] + [f"{n}/bal" for n in S2]
    + ["R W2 T32 S3/bal", "M W4P q0 mb3/r1", "R fp8 W4T128S2mb3/bal", "R fp8 W4T128S2mb3/items"],
    "D64-gqa8": ["planner", "R W4 T64 S2/bal", "R W4P T64 S2/bal", "R W4 T64 S2 C2/bal"],
    "D64-gqa8-p64": ["planner", "R W4 T64 S2/bal", "R W4P T64 S2/bal"],
    "1x32k-gqa4": ["planner", "R W4 T64 S2/items", "R W4P T64 S2/items", "R W4 T64 S2 C2/items"],
    "8x16k-gqa4": ["planner", "R W4 T64 S2/items"],
    "8x64k-gqa4": ["planner", "R W4 T64 S2/items"],
    "D64-gqa4-d256": ["planner"],
}
# round s4c: the planner (two stages, 3 blocks per SM), twice, against the earlier shape
BENCH_S4C = {"8x32k-gqa4": ["planner", "R W4P T64 S3/items", "planner"]}
ROUNDS = {"s4a": (OCC_S4A, TIMES_S4A, BENCH_S4A, NCU_S4A),
          "s4c": ({}, [], BENCH_S4C, []),
          "s4b": (OCC_S4B, TIMES_S4B, BENCH_S4B, [("8x32k-gqa4", "R W4 T64 S2/items")])}
OCC, TIMES, BENCH, NCU = ROUNDS["s4b"]
CARVEOUT_ATTR = 9   # CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT


def base(name):
    return name[:-2] if name.endswith("+c") else name


MAX_DYN_ATTR = 8     # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES


def fptr(func):
    """The CUfunction of a cupy.RawKernel (its .kernel) or of a cupy Function."""
    return func.kernel.ptr if hasattr(func, "kernel") else func.ptr


def set_carveout(func, on):
    """The carveout preference of a compiled cupy function: 100 % or the default (-1)."""
    cp.cuda.driver.funcSetAttribute(fptr(func), CARVEOUT_ATTR, 100 if on else -1)


PROBE = r"""
__device__ unsigned long long probe_times[1 << 16];
__device__ __forceinline__ unsigned long long probe_now() {
    unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
"""


def probe_function(cfg):
    """The plan's kernel with the clock probe: (cupy function, its module)."""
    src = expanded_source(cfg.source + ".cu")
    head = re.search(r"extern \"C\" __global__ void __launch_bounds__\([^)]*\) "
                     + cfg.function + r"\(.*?\)\s*\{", src, re.S)
    body_end = src.rindex("}")   # the kernel is the source's last function
    src = (PROBE + src[:head.end()] + "\n    const unsigned long long probe_t0 = probe_now();\n"
           + src[head.end():body_end]
           + "    if (threadIdx.x == 0) { unsigned sm; asm volatile(\"mov.u32 %0, %%smid;\" : "
             "\"=r\"(sm));\n        const int id = 3 * (blockIdx.y * gridDim.x + blockIdx.x);\n"
             "        probe_times[id] = probe_t0; probe_times[id + 1] = probe_now(); "
             "probe_times[id + 2] = sm; }\n" + src[body_end:])
    mod = cp.RawModule(code=src, options=gpu_options(src, cfg.options))
    fn = mod.get_function(cfg.function)
    cp.cuda.driver.funcSetAttribute(fptr(fn), MAX_DYN_ATTR, cfg.shared)
    return fn, mod


def probe_report(p, fn, mod, q, k, v, scale, sms, quant=0, per_token=False):
    kern, grid, block, make_args, shared = p._launches[0]
    extra = ()
    if quant:   # codes and scales as the plan's kernel reads them
        import torch
        k, ks, _ = ex.quantize(torch, k, quant, per_token)
        v, vs, _ = ex.quantize(torch, v, quant, per_token)
        extra = (ks, vs)
    args = make_args(q, k, v, cp.empty_like(q), np.float32(scale * ex.dp_log2e()), *extra)
    n = grid[0] * grid[1]
    for _ in range(3):   # warm; the last launch's times are read
        fn(grid, block, args, shared_mem=shared)
    cp.cuda.Device().synchronize()
    ptr = mod.get_global("probe_times")
    t = cp.ndarray((n, 3), cp.uint64, memptr=ptr).get().astype(np.int64)
    t0, t1, sm = t[:, 0], t[:, 1], t[:, 2]
    origin = t0.min()
    start, end = (t0 - origin) / 1e3, (t1 - origin) / 1e3   # us
    # blocks of one SM running at the same time: the most intervals overlapping on any SM
    conc = 0
    for s in np.unique(sm):
        ev = sorted([(a, 1) for a in t0[sm == s]] + [(b, -1) for b in t1[sm == s]],
                    key=lambda e: (e[0], e[1]))
        c = 0
        for _, d in ev:
            c += d
            conc = max(conc, c)
    per_sm = np.bincount(sm, minlength=sms)
    late = int((start > 0.25 * end.max()).sum())   # blocks that waited for a slot
    return dict(blocks=int(n), kernel_us=float(end.max()),
                start_p50=float(np.median(start)), start_max=float(start.max()),
                end_min=float(end.min()), end_p10=float(np.percentile(end, 10)),
                end_p50=float(np.median(end)), end_p90=float(np.percentile(end, 90)),
                end_max=float(end.max()), dur_min=float((end - start).min()),
                dur_max=float((end - start).max()), max_concurrent=int(conc),
                sms_used=int((per_sm > 0).sum()), max_blocks_per_sm=int(per_sm.max()),
                late_starts=late), np.stack([sm, start, end], 1)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="occ,times,bench")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-flashinfer", action="store_true")
    ap.add_argument("--round", default="s4b", choices=sorted(ROUNDS))
    ap.add_argument("--raw", default=None, help="the clock probe's per-block times (.npz)")
    ap.add_argument("--alternate", type=int, default=0,
                    help="then time the planner and FlashInfer in turn, that many times each")
    args = ap.parse_args(argv)
    global OCC, TIMES, BENCH, NCU
    OCC, TIMES, BENCH, NCU = ROUNDS[args.round]
    parts = args.parts.split(",")
    say = ex.Say(args.json, "long-explore")

    fi = None if args.no_flashinfer or "bench" not in parts else ex.FlashInfer([128, 256])
    by_name = {w.name: w for w in decode_workloads()}
    for n in (16, 64):
        by_name[f"8x{n}k-gqa4"] = DecodeWorkload(f"8x{n}k-gqa4", (1024 * n,) * 8, num_kv_heads=8)
    names = {}
    for name, wname in OCC.items():
        names.setdefault(wname, set()).add(base(name))
    for wname, _, _ in TIMES:
        names.setdefault(wname, set())
    for wname, variants in BENCH.items():
        names.setdefault(wname, set()).update(base(n) for n in variants)
    for wname, vname, _ in TIMES:
        names[wname].add(vname)
    if "ncu" in parts:
        names = {w: {v for w2, v in NCU if w2 == w} for w, _ in NCU}
    failed = ex.compile_all([by_name[w] for w in names], lambda w: sorted(names[w.name]))
    say(f"compiled, failures {failed}")
    dev = cp.cuda.Device()
    sms = dev.attributes["MultiProcessorCount"]
    at = dev.attributes
    say(f"SMs {sms}, shared per SM {at.get('MaxSharedMemoryPerMultiprocessor')} B, "
        f"per block optin {at.get('MaxSharedMemoryPerBlockOptin')} B, "
        f"registers per SM {at.get('MaxRegistersPerMultiprocessor')}")

    timer = Timer(cp)
    timer.warm_up(0.3)
    copy_bw = copy_bandwidth(cp, timer)
    say(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s", kind="copy", gbps=copy_bw / 1e9)
    if "occ" in parts:   # (after the timer's allocations: a context is current)
        for name, wname in OCC.items():
            try:
                w = by_name[wname]
                cfg = ex.config(w, base(name))
                kern = load_kernel(cfg.source, cfg.function, cfg.options)
                api = gpu_resident_blocks(kern, cfg.threads, cfg.shared)
                regs = kern.gpu.num_regs
                sizes = tc_resident_blocks(cfg, w.head_dim)
                say(f"occ {name:<26} {wname:<14} regs {regs:3d} smem {cfg.shared:6d} threads "
                    f"{cfg.threads:3d} sizes' count {sizes} driver's {api}"
                    + ("" if api == sizes else "  DIFFERENT"),
                    kind="occ", variant=name, workload=wname, regs=regs, shared=cfg.shared,
                    threads=cfg.threads, sizes=sizes, api=api)
            except Exception as exc:
                say(f"occ {name} failed: {type(exc).__name__}: {str(exc)[-300:]}")

    inputs = {}

    def inputs_of(wname):
        if wname not in inputs:
            inputs.clear()
            cp.get_default_memory_pool().free_all_blocks()
            inputs[wname] = build_decode_inputs(cp, by_name[wname])
        return inputs[wname]

    if "times" in parts:
        probes = {}
        with ThreadPoolExecutor(max_workers=8) as pool:   # NVRTC in threads, as compile_all
            jobs = {vname: pool.submit(probe_function, ex.config(by_name[wname], vname))
                    for wname, vname, _ in TIMES}
            for vname, job in jobs.items():
                try:
                    probes[vname] = job.result()
                except Exception as exc:
                    say(f"probe {vname} failed to compile: {str(exc)[-300:]}")
        say("probes compiled")
        raws = {}
        for wname, vname, carve in sorted(TIMES, key=lambda x: x[0]):
            w = by_name[wname]
            inp = inputs_of(wname)
            try:
                p = ex.plan(inp, w, vname)
                fn, mod = probes[vname]
                set_carveout(fn, carve)
                r, raw = probe_report(p, fn, mod, inp["q"], inp["k_cache"], inp["v_cache"],
                                 1 / math.sqrt(w.head_dim), sms, V[vname]["quant"],
                                 V[vname]["tok"])
                raws[f"{wname} {vname} c{int(carve)}"] = raw
                if args.raw:
                    np.savez_compressed(args.raw, **raws)
                say(f"times {wname:<12} {vname:<24} c{int(carve)} " + " ".join(
                    f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
                    kind="times", workload=wname, variant=vname, carveout=carve, **r)
            except Exception as exc:
                say(f"times {wname} {vname} failed: {type(exc).__name__}: {str(exc)[-300:]}")

    if "ncu" in parts:   # one launch each, for Nsight Compute (run under ncu)
        for wname, vname in NCU:
            w = by_name[wname]
            inp = inputs_of(wname)
            p = ex.plan(inp, w, vname)
            ex.launch(p, inp["q"], inp["k_cache"], inp["v_cache"], cp.empty_like(inp["q"]),
                      1 / math.sqrt(w.head_dim))
            cp.cuda.Device().synchronize()
            say(f"ncu {wname} {vname} grid {p.grid} {p.tc_config.options}")

    refs = {}
    if "bench" in parts:
        for wname, variants in BENCH.items():
            w = by_name[wname]
            inp = inputs_of(wname)
            q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
            scale = 1 / math.sqrt(w.head_dim)
            for name in variants:
                vb = V[base(name)]
                try:
                    pl = ex.plan(inp, w, base(name))
                    carve = name.endswith("+c")
                    cfun = load_kernel(pl.tc_config.source, pl.tc_config.function,
                                       pl.tc_config.options).gpu.kernel
                    set_carveout(cfun, carve)
                    out = cp.empty_like(q)
                    if vb["quant"]:
                        import torch
                        kc, ks, _ = ex.quantize(torch, k, vb["quant"], vb["tok"])
                        vc, vs, _ = ex.quantize(torch, v, vb["quant"], vb["tok"])
                        fn = lambda: ex.launch(pl, q, kc, vc, out, scale, ks, vs)  # noqa: E731
                        nbytes = w.bytes_moved() - w.kv_bytes() // 2 + ks.nbytes + vs.nbytes
                        err = 0.0
                        fn()
                    else:
                        fn = lambda: ex.launch(pl, q, k, v, out, scale)  # noqa: E731
                        fn()
                        ref = refs.setdefault(wname, out.copy())
                        err = ex.rel(out, ref)
                        nbytes = w.bytes_moved()
                    t = timer.time(fn, reps=args.reps)
                    set_carveout(cfun, False)
                    pct = 100 * nbytes / (t.median_ms * 1e-3) / copy_bw
                    say(f"{wname:<12} {name:<26} {t.median_ms:7.4f} ms (min {t.min_ms:.4f}) "
                        f"{pct:6.1f}% copy {pl.scheme[:3]} part {pl.part_len:5d} "
                        f"x{pl.max_parts:<3d} grid {pl.grid} smem {pl.tc_config.shared // 1024} "
                        f"KB err {err:.1e}", kind="variant", workload=wname, variant=name,
                        ms=t.median_ms, min_ms=t.min_ms, pct_copy=pct, grid=list(pl.grid),
                        scheme=pl.scheme, part_len=pl.part_len, err=err)
                except Exception as exc:
                    say(f"{wname} {name} failed: {type(exc).__name__}: {str(exc)[-300:]}",
                        kind="variant", workload=wname, variant=name, error=str(exc)[-300:])
        for wname in BENCH:
            if fi is None:
                break
            w = by_name[wname]
            inp = inputs_of(wname)
            fi.thread.join(timeout=max(0.0, 60 - say.elapsed()))
            if fi.fi is None:
                say(f"{wname} flashinfer TC not ready: {fi.error}")
                break
            run = fi.runner(inp, w)
            got = run()
            t = timer.time(run, reps=args.reps)
            err = ex.rel(cp.from_dlpack(got), refs[wname]) if wname in refs else 0.0
            pct = 100 * w.bytes_moved() / (t.median_ms * 1e-3) / copy_bw
            say(f"{wname:<12} {'flashinfer TC':<26} {t.median_ms:7.4f} ms (min {t.min_ms:.4f}) "
                f"{pct:6.1f}% copy err {err:.1e}", kind="flashinfer", workload=wname,
                ms=t.median_ms, min_ms=t.min_ms, pct_copy=pct, err=err)
            if args.alternate:   # the planner and FlashInfer in turn, for the run-to-run spread
                pl = ex.plan(inp, w, "planner")
                out = cp.empty_like(inp["q"])
                ours = lambda: ex.launch(pl, inp["q"], inp["k_cache"], inp["v_cache"],  # noqa
                                         out, 1 / math.sqrt(w.head_dim))
                for k in range(args.alternate):
                    for who, fn in (("planner", ours), ("flashinfer TC", run)):
                        t = timer.time(fn, reps=args.reps)
                        say(f"{wname:<12} alternate {k} {who:<16} {t.median_ms:7.4f} ms (min "
                            f"{t.min_ms:.4f})", kind="alternate", workload=wname, who=who,
                            turn=k, ms=t.median_ms, min_ms=t.min_ms)


if __name__ == "__main__":
    main()
