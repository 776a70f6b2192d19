"""The benchmark driver: `python -m pagedattn_lab.bench [--quick] [--out DIR]` (GPU only).

For every workload it builds one set of inputs, runs our kernels (the one the plan picks and
the other one) and each baseline on it (FlashInfer's decode on CUDA cores and on tensor
cores, when it imports; PyTorch's), checks that they agree, times them (CUDA events, warm-up,
L2 flushed before every repetition by a 64 MB write, or with `--l2-flush read` by a read that
leaves no dirty lines: bench.timing, median), and reports time, achieved bandwidth (the fewest
bytes the problem needs / time), that bandwidth as a share of the measured device-to-device
copy rate, and speed-ups. Also: the host time of `BatchDecodeWrapper.run` (100 back-to-back
runs of a tiny problem) and of the one-shot `paged_attention_decode` on D64 (30 back-to-back
calls, against its kernel timed back to back too, with no flush), each the median of 5 such
batches, with the host's 1-minute load average. Prints
the issue's targets against the measured figures. Writes <prefix>.json and <prefix>.png.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

from ..backend import gpu_available, gpu_status
from . import report
from .baselines import DECODE_BASELINES, import_torch, sdpa_prefill
from .flashinfer_baseline import VARIANTS as FLASHINFER_VARIANTS
from .flashinfer_baseline import decode_runner, import_flashinfer, prebuild, skip_reason
from .timing import L2_FLUSH_WHAT, add_l2_flush_argument, host_time, warm_timer
from .workloads import (
    build_decode_inputs,
    build_prefill_inputs,
    decode_workloads,
    prefill_workloads,
)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m pagedattn_lab.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="folder for bench.json/bench.png")
    p.add_argument("--quick", action="store_true", help="a short smoke run (small workloads)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 30; quick 5)")
    p.add_argument("--no-baselines", action="store_true", help="time only the course's kernels")
    p.add_argument("--baselines", default=",".join([*FLASHINFER_VARIANTS, *DECODE_BASELINES,
                                                     "sdpa-prefill"]),
                   help="comma-separated baselines to run (default: all)")
    p.add_argument("--only", default=None, help="comma-separated decode workload names")
    p.add_argument("--no-prefill", action="store_true", help="skip the prefill workloads")
    p.add_argument("--prefix", default="bench", help="file name stem of the JSON and PNG")
    add_l2_flush_argument(p)
    return p.parse_args(argv)


def rel_err(cp, out, ref) -> float:
    a = cp.asarray(out).astype(cp.float32)
    b = cp.asarray(ref).astype(cp.float32)
    return float(cp.linalg.norm(a - b) / cp.linalg.norm(b))


class Bench:
    def __init__(self, cp, torch, args):
        self.cp, self.torch, self.args = cp, torch, args
        self.reps = args.reps or (5 if args.quick else 30)
        self.rows: list[dict] = []
        self.flashinfer = None
        self.timer, self.copy_bw = warm_timer(cp, args.l2_flush)

    def start_flashinfer(self, workloads) -> str:
        """Import FlashInfer and compile its kernels for `workloads`; a note for the JSON."""
        if self.torch is None or not any(self.wanted(n) for n in FLASHINFER_VARIANTS):
            return "not run"
        try:
            self.flashinfer = import_flashinfer()
        except Exception as exc:
            return f"not available: {type(exc).__name__}: {exc}"
        import time  # noqa: PLC0415
        t0 = time.perf_counter()
        failures = prebuild(self.flashinfer, self.torch, workloads)
        note = (f"flashinfer {self.flashinfer.__version__}; kernels ready in "
                f"{time.perf_counter() - t0:.0f} s")
        return note + (f"; prebuild failures: {failures}" if failures else "")

    def record(self, kind, workload, kernel, fn, *, nbytes=None, flops=None, reps=None,
               ref=None, extra=None):
        row = {"kind": kind, "workload": workload.name, "kernel": kernel,
               "shape": workload.describe(), **(extra or {})}
        try:
            out = fn()
            if ref is not None:
                row["rel_err_vs_ours"] = rel_err(self.cp, out, ref)
            t = self.timer.time(fn, reps=reps or self.reps)
            with_launch = self.timer.time(fn, reps=reps or self.reps, warmup=0,
                                          hide_launch=False)
            row.update(ms=t.median_ms, timing=t.as_dict(), ms_with_launch=with_launch.median_ms)
            if nbytes:
                row["bytes"] = nbytes
                row["gbps"] = nbytes / (t.median_ms * 1e-3) / 1e9
                row["pct_copy"] = 100 * nbytes / (t.median_ms * 1e-3) / self.copy_bw
            if flops:
                row["flops"] = flops
                row["tflops"] = flops / (t.median_ms * 1e-3) / 1e12
        except Exception as exc:  # a baseline that does not run here is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}"
        self.rows.append(row)
        return row

    def wanted(self, name: str) -> bool:
        return not self.args.no_baselines and name in self.args.baselines.split(",")

    def decode(self, w, progress):
        from ..attention_decode import paged_attention_decode  # noqa: PLC0415
        from ..wrappers import BatchDecodeWrapper  # noqa: PLC0415
        cp = self.cp
        inp = build_decode_inputs(cp, w)
        scale = 1.0 / math.sqrt(w.head_dim)
        nbytes = w.bytes_moved()
        q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
        chosen = main = ours = None
        for kernel in ("auto", "simt", "tensor_core"):
            plan = BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], w.num_heads,
                                             w.num_kv_heads, w.head_dim, w.page_size, w.dtype,
                                             kernel=kernel)
            if kernel != "auto" and plan.kernel == chosen.kernel:
                continue   # the plan's own choice is timed already
            out = cp.empty_like(q)
            name = "paged-decode" if kernel == "auto" else f"paged-decode ({kernel}, not chosen)"
            row = self.record("decode", w, name,
                              lambda p=plan, o=out: p.run(q, k, v, out=o, scale=scale),
                              nbytes=nbytes, ref=None if kernel == "auto" else ours,
                              extra={"group": w.group, "head_dim": w.head_dim,
                                     "kernel_choice": plan.kernel, "part_len": plan.part_len,
                                     "max_parts": plan.max_parts, "grid": list(plan.grid),
                                     "plan": plan.describe()})
            if kernel == "auto":
                chosen, main, ours = plan, row, out.copy()
                run_chosen = lambda p=plan, o=out: p.run(q, k, v, out=o, scale=scale)  # noqa: E731
        progress.update()
        if w.name == "D64" and "ms" in main:
            self.one_shot(w, inp, main, run_chosen, paged_attention_decode, scale)
        base = {}
        for name, tc in FLASHINFER_VARIANTS.items():
            if self.flashinfer is None or not self.wanted(name):
                continue
            skipped = skip_reason(self.flashinfer, w.head_dim)
            if skipped:
                self.rows.append({"kind": "decode", "workload": w.name, "kernel": name,
                                  "shape": w.describe(), "skipped": skipped})
                continue
            try:
                fn = decode_runner(self.flashinfer, self.torch, inp, w, scale, tc)
            except Exception as exc:
                fn = _raiser(exc)
            row = self.record("decode", w, name, fn, nbytes=nbytes, ref=ours)
            if "ms" in row:
                base[name] = row["ms"]
        for name, builder in DECODE_BASELINES.items():
            if self.torch is None or not self.wanted(name):
                continue
            try:
                fn = builder(self.torch, inp, w, scale)
            except Exception as exc:
                fn = _raiser(exc)
            row = self.record("decode", w, name, fn, nbytes=nbytes, ref=ours)
            if "ms" in row:
                base[name] = row["ms"]
        progress.update()
        if "ms" in main:
            main["speedup"] = {k: v / main["ms"] for k, v in base.items()}
            main["floor_ms"] = nbytes / self.copy_bw * 1e3
        del inp, chosen
        self._free()

    def one_shot(self, w, inp, main, run_chosen, paged_attention_decode, scale):
        """The one-shot call's wall time per call (host work included), back to back (the median
        of 5 batches of 30 calls), against the plan's kernel timed as those calls run it: back
        to back, no L2 flush. The row's flushed time (`kernel_ms_flushed`) also pays the write
        flush's dirty lines (7-10 us on the H200), which calls back to back do not: against it
        the ratio read ~1.5% low."""
        out = self.cp.empty_like(inp["q"])
        args = (inp["q"], inp["k_cache"], inp["v_cache"], inp["block_tables"], inp["seq_lens"])
        per_call = host_time(self.cp, lambda: paged_attention_decode(*args, scale, out=out),
                             calls=30, batches=5)
        kernel_ms = self.timer.time(run_chosen, reps=self.reps, flush=False).median_ms
        self.rows.append({
            "kind": "host", "workload": w.name, "kernel": "paged_attention_decode (one-shot)",
            "shape": w.describe(), "wall_ms_per_call": per_call * 1e3, "kernel_ms": kernel_ms,
            "kernel_ms_flushed": main["ms"], "ratio_to_kernel": per_call * 1e3 / kernel_ms,
            "host_load_1min": os.getloadavg()[0]})

    def host_overhead(self):
        """run() of a tiny plan, 100 times back to back: the host's time per run (the median of 5
        batches)."""
        from ..wrappers import BatchDecodeWrapper  # noqa: PLC0415
        from .workloads import DecodeWorkload  # noqa: PLC0415
        w = DecodeWorkload("tiny", (16,), num_heads=8, num_kv_heads=8)
        inp = build_decode_inputs(self.cp, w)
        plan = BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], 8, 8, 128, 16,
                                         "float16")
        q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
        out = self.cp.empty_like(q)
        runs = {"BatchDecodeWrapper.run": lambda: plan.run(q, k, v, out=out)}
        if self.flashinfer is not None and self.wanted("flashinfer-tensor-cores"):
            try:
                runs["flashinfer run (tensor cores)"] = decode_runner(
                    self.flashinfer, self.torch, inp, w, 1 / math.sqrt(128), True)
            except Exception as exc:
                print(f"flashinfer host-overhead row failed: {exc}", file=sys.stderr)
        for name, fn in runs.items():
            per_run = host_time(self.cp, fn, calls=100, batches=5)
            self.rows.append({"kind": "host", "workload": "tiny", "kernel": name,
                              "shape": w.describe(), "wall_us_per_run": per_run * 1e6,
                              "host_load_1min": os.getloadavg()[0]})

    def prefill(self, w, progress):
        from ..attention_prefill import plan_prefill  # noqa: PLC0415
        cp = self.cp
        inp = build_prefill_inputs(cp, w)
        scale = 1.0 / math.sqrt(w.head_dim)
        tiled = plan_prefill(**inp, scale=scale, kernel="tiled")
        ours = tiled().copy()
        t_row = self.record("prefill", w, "prefill-tiled", tiled, flops=w.flops())
        progress.update()
        naive = plan_prefill(**inp, scale=scale, kernel="naive")
        n_row = self.record("prefill", w, "prefill-naive", naive, flops=w.flops(), ref=ours,
                            reps=3)
        progress.update()
        base = {"prefill-naive": n_row.get("ms")}
        if self.torch is not None and self.wanted("sdpa-prefill"):
            try:
                fn = sdpa_prefill(self.torch, inp, w, scale)
            except Exception as exc:
                fn = _raiser(exc)
            s_row = self.record("prefill", w, "torch-sdpa", fn, flops=w.flops(), ref=ours)
            base["torch-sdpa"] = s_row.get("ms")
        progress.update()
        if "ms" in t_row:
            t_row["speedup"] = {k: v / t_row["ms"] for k, v in base.items() if v}
        del inp
        self._free()

    def guarded(self, name, fn, *args):
        """Run one workload; a failure outside the timed rows is recorded, not fatal."""
        try:
            fn(*args)
        except Exception as exc:
            import traceback  # noqa: PLC0415
            traceback.print_exc()
            self.rows.append({"kind": "decode", "workload": name, "kernel": "paged-decode",
                              "error": f"{type(exc).__name__}: {exc}"})
            try:
                self._free()
            except Exception:   # a broken CUDA context: the rows so far are still written
                pass

    def _free(self):
        self.cp.get_default_memory_pool().free_all_blocks()
        if self.torch is not None:
            self.torch.cuda.empty_cache()


def _raiser(exc):
    def fn():
        raise exc
    return fn


def metadata(cp, torch, copy_bw, argv, l2_flush: str = "write") -> dict:
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {
        "gpu": name, "sm_count": int(props["multiProcessorCount"]),
        "l2_bytes": int(props.get("l2CacheSize", 0)),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cupy": cp.__version__, "torch": getattr(torch, "__version__", None),
        "numpy": np.__version__, "python": platform.python_version(),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "copy_bandwidth_GBps": copy_bw / 1e9,
        "command": "python -m pagedattn_lab.bench " + " ".join(argv),
        "timing": f"CUDA events per repetition, warm-up 3, L2 flushed ({L2_FLUSH_WHAT[l2_flush]}) "
                  "before each repetition, host launch time hidden behind a spin kernel (ms; "
                  "ms_with_launch without it), median",
        "l2_flush": l2_flush,
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if not gpu_available():
        print(f"pagedattn_lab.bench needs a CUDA GPU: {gpu_status()}", file=sys.stderr)
        return 2
    import cupy as cp  # noqa: PLC0415
    from tqdm.auto import tqdm  # noqa: PLC0415
    try:
        torch = import_torch()
        torch_error = None
    except Exception as exc:
        torch, torch_error = None, f"{type(exc).__name__}: {exc}"
    bench = Bench(cp, torch, args)
    dws, pws = decode_workloads(args.quick), prefill_workloads(args.quick)
    if args.only:
        dws = [w for w in dws if w.name in args.only.split(",")]
    if args.no_prefill:
        pws = []
    # before anything can break the context
    meta = metadata(cp, torch, bench.copy_bw, argv, args.l2_flush)
    flashinfer_note = bench.start_flashinfer(dws)
    steps = len(dws) * 2 + 3 * len(pws)
    with tqdm(total=steps, desc="bench", file=sys.stderr) as progress:
        bench.guarded("host overhead", bench.host_overhead)
        for w in dws:
            progress.set_postfix_str(w.name)
            bench.guarded(w.name, bench.decode, w, progress)
        for w in pws:
            progress.set_postfix_str(w.name)
            bench.prefill(w, progress)
    meta["flashinfer"] = flashinfer_note
    if torch_error:
        meta["torch_error"] = torch_error
    meta["targets"] = report.targets(bench.rows, bench.copy_bw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / f"{args.prefix}.json", meta, bench.rows)
    try:
        report.write_chart(out / f"{args.prefix}.png", meta, bench.rows)
    except Exception as exc:  # the numbers matter more than the picture
        print(f"chart not written: {exc}", file=sys.stderr)
    print(f"\n{meta['gpu']}: device copy {meta['copy_bandwidth_GBps']:.0f} GB/s "
          f"(read + write); torch {meta['torch']}, cupy {meta['cupy']}")
    print(report.table(bench.rows))
    print()
    print(report.targets_table(meta["targets"]))
    print(f"\nwrote {out / (args.prefix + '.json')} and {out / (args.prefix + '.png')}")
    return 0
