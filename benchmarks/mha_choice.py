"""Multi-head decode (one query head per KV head, fp16) on the SIMT kernel and on the tensor
cores, over head sizes, lengths and batch sizes: the measurement behind
`decode_choice.MHA_TC_MIN_HEAD_DIM` / `MHA_TC_MIN_MEAN_LEN` (benchmarks/NOTES.md, "Multi-head
decode on tensor cores (session 14)").

    python3 benchmarks/mha_choice.py [--rounds 2] [--reps 20] [--json mha.json] [--l2-flush read]
                                     [--dtype float16|bfloat16]

Every row plans both kernels with `BatchDecodeWrapper` (`kernel="simt"`, `kernel="tensor_core"`)
on the same pages (pagedattn_lab.bench.workloads: scattered pages, random normal data), compares
their outputs, then times them alternating (CUDA events, L2 flushed, median of `--reps`; the
order flips every round), and prints the best of each and the tensor cores' time over SIMT's.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

from pagedattn_lab import wrappers as pw  # noqa: E402
from pagedattn_lab.bench.timing import add_l2_flush_argument, warm_timer  # noqa: E402
from pagedattn_lab.bench.workloads import (DecodeWorkload, build_decode_inputs,  # noqa: E402
                                           d64_lengths)

HEAD_DIMS = (32, 64, 80, 96, 112, 128, 192, 256)


def shapes() -> list[tuple[str, tuple[int, ...]]]:
    """(name, lengths): ~150k tokens at several lengths, D64's mixed lengths, and small batches."""
    fixed = [(256, 128), (600, 256), (300, 512), (146, 1024), (73, 2048), (36, 4096),
             (8, 32768), (128, 512), (64, 1024), (8, 8192), (32, 256), (32, 1024), (2, 16384),
             (4, 2048), (16, 512), (1, 32768)]
    return [(f"{b}x{n}", (n,) * b) for b, n in fixed] + [("D64", d64_lengths())]


def bf16_bits(x):
    """fp16 or fp32 CuPy data as bfloat16 bits (uint16, round to nearest even), the form the
    wrappers take bfloat16 in on the GPU (CuPy has no bfloat16)."""
    u = x.astype(cp.float32).view(cp.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(cp.uint16)


def as_float32(x, dtype: str):
    """Outputs as float32 for comparing the two kernels (bfloat16 bits shifted back)."""
    if dtype == "bfloat16":
        return (x.astype(cp.uint32) << 16).view(cp.float32)
    return x.astype(cp.float32)


def row(timer, w: DecodeWorkload, copy_rate: float, args) -> dict:
    inp = build_decode_inputs(cp, w, seed=0)   # fp16; the same bytes per element as bf16
    if args.dtype == "bfloat16":
        inp.update({name: bf16_bits(inp[name]) for name in ("q", "k_cache", "v_cache")})
    runs, kernels = {}, {}
    for kernel in ("simt", "tensor_core"):
        wrapper = pw.BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], w.num_heads,
                                               w.num_kv_heads, w.head_dim, w.page_size,
                                               args.dtype, kernel=kernel)
        out = cp.empty_like(inp["q"])
        runs[kernel] = lambda wrapper=wrapper, out=out: wrapper.run(
            inp["q"], inp["k_cache"], inp["v_cache"], out=out)
        kernels[kernel] = wrapper.describe().splitlines()[0]
    first = {k: as_float32(cp.asarray(fn()), args.dtype) for k, fn in runs.items()}
    diff = float(cp.max(cp.abs(first["simt"] - first["tensor_core"])))
    # outputs of two summation orders, rounded to fp16 (bf16: 8 bits of mantissa, not 11)
    agree = diff < (2e-3 if args.dtype == "float16" else 2e-2)
    times = {k: [] for k in runs}
    for r in range(args.rounds):
        for k in ("simt", "tensor_core") if r % 2 == 0 else ("tensor_core", "simt"):
            times[k].append(timer.time(runs[k], reps=args.reps).median_ms)
    best = {k: min(t) for k, t in times.items()}
    rec = dict(name=w.name, dtype=args.dtype, head_dim=w.head_dim, batch=w.batch, tokens=sum(w.lens),
               mean_len=sum(w.lens) / w.batch, ms=times, best=best, max_abs_diff=diff, outputs_agree=agree,
               tc_over_simt=best["tensor_core"] / best["simt"],
               simt_copy_fraction=w.bytes_moved() / (best["simt"] * 1e-3) / copy_rate,
               plans=kernels)
    print(f"{w.name:14s} d{w.head_dim:<4d} simt {best['simt']:.4f}  tc {best['tensor_core']:.4f}"
          f"  tc/simt {rec['tc_over_simt']:.3f}  simt {rec['simt_copy_fraction']:.0%} of copy"
          f"  diff {diff:.1e}{'' if agree else '  OUTPUTS DIFFER: the times mean nothing'}",
          flush=True)
    return rec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)))
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    add_l2_flush_argument(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.reps < 1:
        parser.error("--rounds and --reps: at least 1")
    t0 = time.time()
    timer, copy_rate = warm_timer(cp, args.l2_flush)
    print(f"copy rate {copy_rate / 1e12:.2f} TB/s (read + write); L2 flush: {args.l2_flush}; "
          f"{args.dtype} pages", flush=True)
    rows = []
    for head_dim in (int(d) for d in args.head_dims.split(",")):
        for name, lens in shapes():
            w = DecodeWorkload(name, lens, num_heads=32, num_kv_heads=32, head_dim=head_dim)
            rows.append(row(timer, w, copy_rate, args))
            cp.get_default_memory_pool().free_all_blocks()
            if args.json:   # after every row: a time limit keeps them
                args.json.write_text(json.dumps(dict(copy_rate=copy_rate, dtype=args.dtype,
                                                     l2_flush=args.l2_flush, rows=rows),
                                                indent=1))
    print(f"done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
