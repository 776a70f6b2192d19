"""Where the host time of `BatchDecodeWrapper.run` goes, on the GPU, in one process.

    python3 benchmarks/host_run.py [--reps 5] [--json out.json] [--no-d64] [--no-flashinfer]

Issue 10's targets: `run()` at most 20 microseconds (100 back-to-back runs of the tiny problem
of `pagedattn_lab.bench`: 1 sequence of 16 tokens, 8/8 heads, head_dim 128, page 16, fp16;
wall time, no spin kernel: `bench.timing.host_time`), and the one-shot D64 call at most 1.3x
its kernel. Every figure is taken `reps` times (the lent machine's host is noisy): run() as
the benchmark times it and with out=None / an explicit scale; its parts (the fast check alone,
the packed launches alone, the general check with the packed launches, the general check with
cupy.RawKernel's own argument conversion as run() launched before `rawkernel.PackedLaunch`,
CuPy's Function called with the packed arguments, cuLaunchKernel through CuPy's driver
binding without Function (a variant), the device query), an empty kernel's
launch (CuPy's floor), FlashInfer's run on the same tiny problem when its
JIT-built module is already on the machine (PAGEDATTN_FLASHINFER_PREBUILT=1 with
FLASHINFER_DISABLE_JIT=1: it is not built here), a cProfile of run(), and the one-shot D64
call against its kernel (CUDA events, L2 flushed, spin kernel: `bench.timing.Timer`).
"""
import argparse
import cProfile
import ctypes
import io
import json
import math
import pstats
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402
import numpy as np  # noqa: E402

from pagedattn_lab import BatchDecodeWrapper, paged_attention_decode  # noqa: E402
from pagedattn_lab.bench.timing import Timer, host_time  # noqa: E402
from pagedattn_lab.bench.workloads import (DecodeWorkload, build_decode_inputs,  # noqa: E402
                                           d64_lengths)

EMPTY = r'extern "C" __global__ void empty() {}'


def parts(plan, q, k, v, out):
    """run() and its pieces on one plan, as functions of no arguments."""
    s = plan._default_scale_log2
    bits = plan._default_scale[1]
    checked = plan._layout.fast(q, k, v, out, None, None)
    assert checked is not None, "the benchmark's call must take the fast path"
    values = (*checked[1:5], bits, *checked[5:])
    no_scale = plan._no_scale

    def launch_packed():
        for entry in plan._launches:
            entry[0].launch(values)

    def launch_unpacked():
        for kern, grid, block, make_args, shared in plan._launches:
            kern.kern(grid, block, make_args(q, k, v, out, s, no_scale, no_scale),
                      shared_mem=shared)

    direct = []

    def function_only():
        for entry in plan._launches:
            p = entry[0]
            p._function(p._grid, p._block, p._args, p._shared)

    def driver_direct():   # cuLaunchKernel through CuPy's driver binding, no Function
        from cupy_backends.cuda.api import driver  # noqa: PLC0415 - a variant measured here
        if not direct:
            for entry in plan._launches:
                p = entry[0]
                params = (ctypes.c_void_p * len(p._args))(*[a.ptr for a in p._args])
                direct.append((p._function.ptr, *(p._grid + (1, 1))[:3],
                               *(p._block + (1, 1))[:3], p._shared, params))
        stream = cp.cuda.get_current_stream().ptr
        for f, gx, gy, gz, bx, by, bz, shared, params in direct:
            driver.launchKernel(f, gx, gy, gz, bx, by, bz, shared, stream,
                                ctypes.addressof(params), 0)

    def general_unpacked():   # what run() did before the fast check and the packed launches
        plan._launch = lambda *a: launch_unpacked()
        try:
            plan._run_general(q, k, v, out, None, None, None)
        finally:
            del plan._launch

    empty = cp.RawKernel(EMPTY, "empty")
    return {
        "run(out=)": lambda: plan.run(q, k, v, out=out),
        "run(out=None)": lambda: plan.run(q, k, v),
        "run(out=, scale=)": lambda: plan.run(q, k, v, out=out, scale=0.08838834764831845),
        "fast check only": lambda: plan._layout.fast(q, k, v, out, None, None),
        "packed launches only": launch_packed,
        "cupy.RawKernel launches only (before)": launch_unpacked,
        "general check + packed launches": lambda: plan._run_general(q, k, v, out, None, None,
                                                                     None),
        "general check + cupy.RawKernel (before)": general_unpacked,
        "CuPy Function calls only (no slots, no lock)": function_only,
        "driver.launchKernel direct (variant)": driver_direct,
        "cupy.cuda.runtime.getDevice()": cp.cuda.runtime.getDevice,
        "empty kernel, cupy.RawKernel": lambda: empty((1,), (1,), ()),
    }


def flashinfer_run(inp, w):
    """FlashInfer's tensor-core decode run on the tiny problem (as pagedattn_lab.bench does),
    or the reason it is not there."""
    try:
        import torch  # noqa: PLC0415

        from pagedattn_lab.bench.flashinfer_baseline import (decode_runner,  # noqa: PLC0415
                                                             import_flashinfer)
        return decode_runner(import_flashinfer(), torch, inp, w, 1 / math.sqrt(128), True), None
    except Exception as exc:  # noqa: BLE001 - reported in the results
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def profile(fn, calls=2000, lines=12) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(lines)
    return text.getvalue()


def one_shot_d64(timer, reps):
    w = DecodeWorkload("D64", d64_lengths())
    inp = build_decode_inputs(cp, w)
    q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
    scale = 1 / math.sqrt(w.head_dim)
    plan = BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], 32, 32, 128, 16,
                                     "float16")
    out = cp.empty_like(q)
    kernel = timer.time(lambda: plan.run(q, k, v, out=out, scale=scale), reps=30)
    args = (q, k, v, inp["block_tables"], inp["seq_lens"])
    one_shot = lambda: paged_attention_decode(*args, scale, out=out)  # noqa: E731
    calls = [host_time(cp, one_shot, calls=30) for _ in range(reps)]
    # The same kernel back to back without host work: what a call can come down to.
    runs = [host_time(cp, lambda: plan.run(q, k, v, out=out, scale=scale), calls=30)
            for _ in range(reps)]
    return {"kernel_ms": kernel.median_ms, "one_shot_ms": [c * 1e3 for c in calls],
            "ratio": [c * 1e3 / kernel.median_ms for c in calls],
            "run_back_to_back_ms": [c * 1e3 for c in runs],
            "profile": profile(one_shot, calls=300, lines=25)}


def bench_like_process():
    """The state pagedattn_lab.bench's process is in when it times the one-shot call."""
    import torch  # noqa: PLC0415
    from tqdm.auto import tqdm  # noqa: PLC0415

    from pagedattn_lab.bench.flashinfer_baseline import import_flashinfer  # noqa: PLC0415
    torch.zeros(1, device="cuda")
    try:
        import_flashinfer()
    except Exception as exc:  # noqa: BLE001 - the torch part still counts
        print(f"flashinfer not imported: {exc}")
    bench_like_process.bar = tqdm(total=10, desc="like bench", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--no-d64", action="store_true")
    p.add_argument("--no-flashinfer", action="store_true")
    p.add_argument("--like-bench", action="store_true",
                   help="first import torch and FlashInfer, start CUDA in torch and open a "
                        "tqdm bar, as pagedattn_lab.bench does (is its process slower?)")
    args = p.parse_args(argv)
    if args.like_bench:
        bench_like_process()
    timer = Timer(cp)
    timer.warm_up(0.5)
    w = DecodeWorkload("tiny", (16,), num_heads=8, num_kv_heads=8)
    inp = build_decode_inputs(cp, w)
    plan = BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], 8, 8, 128, 16,
                                     "float16")
    q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
    out = cp.empty_like(q)
    fns = parts(plan, q, k, v, out)
    note = "not run (--no-flashinfer)"
    if not args.no_flashinfer:
        fi, note = flashinfer_run(inp, w)
        if fi is not None:
            fns["flashinfer run (tensor cores)"] = fi
            note = "measured in this process"
    results = {"plan": plan.describe(), "launches": len(plan._launches), "flashinfer": note,
               "us": {name: [] for name in fns}}
    errors = results["errors"] = {}
    for _ in range(args.reps):   # interleaved, so a noisy stretch of the host hits every row
        for name, fn in fns.items():
            if name in errors:
                continue
            try:
                results["us"][name].append(host_time(cp, fn, calls=100) * 1e6)
            except Exception as exc:  # noqa: BLE001 - a variant that fails is reported
                errors[name] = f"{type(exc).__name__}: {exc}"
    print(f"{plan.describe()}\nFlashInfer: {note}\nus per call, {args.reps} reps "
          "(100 back-to-back calls each): median [min .. max]")
    for name, us in results["us"].items():
        if name in errors:
            print(f"  {name:44s} failed: {errors[name]}")
        else:
            print(f"  {name:44s} {statistics.median(us):6.1f}  [{min(us):5.1f} .. {max(us):5.1f}]")
    results["profile"] = profile(fns["run(out=)"])
    print(results["profile"])
    results["tiny_output_finite"] = bool(np.isfinite(cp.asnumpy(plan.run(q, k, v, out=out))).all())
    print(f"tiny run output finite: {results['tiny_output_finite']}")
    save(args.json, results)
    if not args.no_d64:
        results["d64"] = d64 = one_shot_d64(timer, args.reps)
        print(f"one-shot D64: kernel {d64['kernel_ms']:.3f} ms; per call "
              f"{', '.join(f'{x:.3f}' for x in d64['one_shot_ms'])} ms; ratio "
              f"{', '.join(f'{x:.2f}' for x in d64['ratio'])} (target <= 1.3); run() back to "
              f"back {', '.join(f'{x:.3f}' for x in d64['run_back_to_back_ms'])} ms")
        print(d64["profile"])
        save(args.json, results)


def save(path, results):
    if path:
        Path(path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
