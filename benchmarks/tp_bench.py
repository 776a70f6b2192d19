"""Tensor-parallel decode on GPUs: D64's heads split over R GPUs (NCCL), against one GPU.

The two-GPU run (needs a machine with 2 GPUs, the device tool's `nvidia-h200-x2` kind; from
the repository root, with CuPy and a torch with NCCL installed):

    NCCL_NVLS_ENABLE=0 python benchmarks/tp_bench.py --world 1 2 --out tp_bench.json

The smoke run on one GPU (NCCL with world size 1; what the GPU rounds of 2026-12-02 ran on
an H200, benchmarks/results/2026-12-02_H200_tp_smoke.*):

    python benchmarks/tp_bench.py --world 1 --quick --out tp_smoke.json

For each world size R it launches R processes (`pagedattn_lab.distributed.launch`, rank r on
GPU r) and each rank:
1. checks: seeded GQA cases like tests/test_distributed.py's (fp16, awkward lengths, forked
   sequences sharing pages, NaN in unread slots, the output poisoned), a decode step
   (BatchDecodeWrapper, 3 split-K partitions) and a packed prefill step (BatchPrefillWrapper:
   a new prompt, chunks, decode rows) split over the R GPUs, against the float64 reference,
   and on rank 0 bit for bit against the same step run on one GPU with every head;
2. times D64 (bench.workloads: 64 sequences, 149,713 tokens, 32 heads, d128, fp16, page 16)
   with its 32 KV heads split over the R GPUs, rank 0's tables broadcast each step:
   the attention kernel alone (CUDA events, L2 flushed, median), each phase of a step
   synchronised (broadcast of the tables, plan, attention, all_gather of the outputs), and
   whole steps back to back (what serving sees).
Speed-up of R GPUs = (step time on 1 GPU) / (step time on R GPUs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pagedattn_lab.distributed import launch, step_bytes  # noqa: E402
from pagedattn_lab.distributed.demo import single_process_decode  # noqa: E402

CHECK_CASE = dict(seq_lens=(9, 130, 1, 64, 47, 129, 8, 300), forks=((4, 3), (5, 1), (6, 0)),
                  num_heads=16, num_kv_heads=4, head_dim=128, page_size=16, num_pages=80,
                  dtype="float16", seed=3)


def _check(rank, world):
    """The equality tests on GPUs (decode and packed prefill): no NaN on any rank; on rank 0
    the max error against the float64 reference, and whether the gathered output equals the
    one-GPU step (every head in one process, the same partitions) bit for bit."""
    import cupy as cp

    from pagedattn_lab.distributed.demo import (PREFILL_CASE, single_process_decode,
                                                single_process_prefill, tp_decode_rank,
                                                tp_prefill_rank)
    from pagedattn_lab.reference import reference_decode, reference_prefill_packed
    decode = tp_decode_rank(rank, world, CHECK_CASE, num_splits=3, device="gpu")["out"]
    prefill = tp_prefill_rank(rank, world, PREFILL_CASE, device="gpu")["out"]
    result = {"nan": bool(np.isnan(decode).any() or np.isnan(prefill).any())}
    if rank == 0:
        one = single_process_decode(CHECK_CASE, num_splits=3, xp=cp)
        ref = reference_decode(one["q"], one["k_cache"], one["v_cache"], one["block_tables"],
                               one["seq_lens"])
        pre = single_process_prefill(PREFILL_CASE, xp=cp)
        f32 = [pre[n].astype(np.float32) for n in ("q", "k_cache", "v_cache")]
        pre_ref = reference_prefill_packed(*f32, pre["qo_indptr"], pre["block_tables"],
                                           pre["seq_lens"])
        result.update(max_err_vs_fp64=float(np.abs(decode - ref).max()),
                      bitwise_equal_one_gpu=bool(np.array_equal(decode, one["out"])),
                      prefill_max_err_vs_fp64=float(np.abs(prefill - pre_ref).max()),
                      prefill_bitwise_equal_one_gpu=bool(np.array_equal(prefill, pre["out"])))
    return result


def _d64_shard(cp, heads, num_pages, w, which):
    from pagedattn_lab.bench.workloads import random_normal
    per_head = [random_normal(cp, (num_pages, w.page_size, w.head_dim), w.dtype,
                              seed=10_000 * which + kv)
                for kv in range(heads.kv_start, heads.kv_stop)]
    return cp.ascontiguousarray(cp.stack(per_head, axis=2))


def bench_rank(rank, world, reps=30, steps=50):
    """One rank: the check, then D64's timings (ms)."""
    import torch
    import torch.distributed as dist

    from pagedattn_lab.backend import cupy_module
    from pagedattn_lab.bench.timing import Timer
    from pagedattn_lab.bench.workloads import (DecodeWorkload, d64_lengths, random_normal,
                                               scattered_tables)
    from pagedattn_lab.distributed.decode import PHASES, TPDecode
    cp = cupy_module()
    result = {"rank": rank, "gpu": cp.cuda.runtime.getDeviceProperties(rank)["name"].decode(),
              "torch": torch.__version__, "check": _check(rank, world)}
    w = DecodeWorkload("D64", d64_lengths())
    tables = lens = None
    if rank == 0:                       # rank 0's allocator (here: pages scattered by a seed)
        tables, _ = scattered_tables(w.lens, w.page_size, seed=0)
        lens = np.array(w.lens, np.int32)
    num_pages = sum(-(-n // w.page_size) for n in w.lens)
    tp = TPDecode(w.num_heads, w.num_kv_heads, w.head_dim, w.page_size, w.dtype, w.batch,
                  w.max_pages, device="gpu")
    t, n = (a.get() for a in tp.share_tables(tables, lens))
    h = tp.heads
    k, v = (_d64_shard(cp, h, num_pages, w, which) for which in (1, 2))
    q = cp.ascontiguousarray(random_normal(cp, (w.batch, w.num_heads, w.head_dim), w.dtype,
                                           seed=7)[:, h.q_start:h.q_stop])
    out_local = cp.empty_like(q)
    phases = {p: [] for p in PHASES}
    for i in range(reps + 3):           # the first 3 steps warm up
        out = tp.step(q, k, v, t, n, out_local)
        for p in PHASES:
            if i >= 3:
                phases[p].append(tp.timings[p] * 1e3)
    result["phases_ms"] = {p: statistics.median(x) for p, x in phases.items()}
    timer = Timer(cp)
    result["kernel_ms"] = timer.time(lambda: tp.wrapper.run(q, k, v, out_local),
                                     reps=reps).median_ms
    tp.timed = False
    for _ in range(3):
        tp.step(q, k, v, t, n, out_local)
    cp.cuda.Device().synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        out = tp.step(q, k, v, t, n, out_local)
    cp.cuda.Device().synchronize()
    result["step_ms"] = (time.perf_counter() - t0) * 1e3 / steps
    result["kernel_gbps"] = (w.kv_bytes() / world) / (result["kernel_ms"] * 1e-3) / 1e9
    result["out_d64"] = out.get() if rank == 0 else None
    result["kernel"] = tp.wrapper.describe()
    return result


def summarize(runs: dict) -> list[str]:
    from pagedattn_lab.bench.workloads import d64_lengths
    lines = ["R  decode check(err, bitwise)  kernel ms  bcast ms  plan ms  attend ms  gather ms  "
             "step ms  tokens/s  speed-up"]
    base = runs.get(1, [{}])[0].get("step_ms")
    for world, ranks in sorted(runs.items()):
        r0 = ranks[0]
        ph = r0["phases_ms"]
        slowest = max(r["step_ms"] for r in ranks)
        chk = r0["check"]
        lines.append(f"{world}  {chk['max_err_vs_fp64']:.1e}, {chk['bitwise_equal_one_gpu']}"
                     f"{'  NaN!' if any(r['check']['nan'] for r in ranks) else ''}   "
                     f"{max(r['kernel_ms'] for r in ranks):8.3f}  {ph['broadcast']:8.3f}  "
                     f"{ph['plan']:7.3f}  {ph['attend']:9.3f}  {ph['gather']:9.3f}  "
                     f"{slowest:7.3f}  {64 / slowest * 1e3:8.0f}  "
                     f"{base / slowest if base else float('nan'):8.2f}")
    for world, ranks in sorted(runs.items()):
        chk = ranks[0]["check"]
        lines.append(f"R={world} prefill check: max error vs fp64 "
                     f"{chk['prefill_max_err_vs_fp64']:.1e}, bit for bit as one GPU: "
                     f"{chk['prefill_bitwise_equal_one_gpu']}")
    b = step_bytes(d64_lengths(), 32, 32, 128, 16, max(runs), 2)
    lines.append(f"wire per step (R={max(runs)}): tables {b.tables} B broadcast, output "
                 f"{b.output} B gathered ({b.output_share} B per rank); K/V read per rank "
                 f"{b.kv_read / 1e9:.2f} GB, never sent")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    reps, steps = (5, 10) if args.quick else (30, 50)
    runs = {}
    for world in args.world:
        runs[world] = launch(bench_rank, world, reps=reps, steps=steps, backend="nccl",
                             timeout=args.timeout)
    if 1 in runs:
        for world, ranks in runs.items():   # the same D64 output whatever the split
            if world == 1:
                continue
            diff = np.abs(ranks[0]["out_d64"].astype(np.float32)
                          - runs[1][0]["out_d64"].astype(np.float32)).max()
            ranks[0]["check"]["d64_max_diff_vs_1gpu"] = float(diff)
    lines = summarize(runs)
    lines += [f"D64 output of R={world} against R=1: max |diff| "
              f"{r[0]['check']['d64_max_diff_vs_1gpu']:.1e}"
              for world, r in sorted(runs.items()) if world > 1 and 1 in runs]
    print("\n".join(lines))
    for ranks in runs.values():
        for r in ranks:
            r.pop("out_d64", None)
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "runs": runs,
                                        "summary": lines}, indent=1, default=str))
    ok = all(r["check"].get("bitwise_equal_one_gpu", True) and not r["check"]["nan"]
             and r["check"].get("prefill_bitwise_equal_one_gpu", True)
             and r["check"].get("max_err_vs_fp64", 0) < 2e-3
             and r["check"].get("prefill_max_err_vs_fp64", 0) < 4e-3
             for rs in runs.values() for r in rs)
    print("CHECK", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
