"""The decode kernels of this tree against another version's, in one process, on the same pages,
alternating: the A/B of a kernel change (benchmarks/NOTES.md, "The end of a block (session 11)").

    mkdir -p .stage/old && git archive <rev> pagedattn_lab/kernels | tar -x -C .stage/old
    python3 benchmarks/ab_kernels.py --old .stage/old/pagedattn_lab/kernels [--rows ...]
                                     [--rounds 4] [--reps 30] [--json ab.json]

Both sides plan with this tree's `BatchDecodeWrapper` (the same plan unless a change alters the
blocks resident per SM, which the plan reads from the kernel); the old side's kernels are compiled
from the old folder's sources, so a change may touch kernel text only. Each row: the two outputs
compared (max |difference|; the same kernel code gives 0), then `--rounds` alternations of old and
new (CUDA events, L2 flushed, median of `--reps`: pagedattn_lab.bench.timing), then the new side
run again (the merge counters must be back to 0: the repeat gives the same output); the new side's
share of the copy rate counts the benches' bytes (DecodeWorkload.bytes_moved,
bench.quant.bytes_read), so it reads as theirs. Rows: the decode bench's tensor-core rows and MHA
D64 (pagedattn_lab.bench.workloads) and the compressed rows of pagedattn_lab.bench.quant (`--rows`
picks by name; "fp8_e4m3:D64 GQA 32/8:static" for a compressed one). Every line is printed as it is
measured. The order flips every round (old, new; then new, old): with a fixed order an A/A run
(both sides this tree, `--old pagedattn_lab/kernels`) read steady offsets of up to 0.4 us on the
tensor-core rows and 0.9 us on the SIMT rows, which an even number of rounds now spreads over both
sides; that A/A run is the floor under any verdict of "level".
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

from pagedattn_lab import kernels as pk  # noqa: E402
from pagedattn_lab import wrappers as pw  # noqa: E402
from pagedattn_lab.bench import quant as bq  # noqa: E402
from pagedattn_lab.bench.timing import add_l2_flush_argument, warm_timer  # noqa: E402
from pagedattn_lab.bench.workloads import build_decode_inputs, decode_workloads  # noqa: E402
from pagedattn_lab.rawkernel import RawKernel  # noqa: E402

DECODE_ROWS = ("D64", "D64-gqa4", "D64-gqa8", "D64-gqa8-p64", "D64-mqa16", "8x32k-gqa4",
               "1x32k-gqa4", "D64-gqa4-d256", "D64-gqa4-d80", "D64-gqa4-d96")
QUANT_ROWS = ("fp8_e4m3:D64 GQA 32/8:static", "int8:D64 GQA 32/8:static",
              "fp8_e4m3:D64 GQA 32/8:per_token", "fp8_e4m3:D64 MHA 32/32:static")


class Kernels:
    """The kernels of both sides: "new" through pagedattn_lab.kernels, "old" compiled from the
    old folder's text (kernels.expanded_source on that folder)."""

    def __init__(self, old_dir: Path):
        self.old_dir = old_dir
        self.built = {}

    def get(self, side: str, filename: str, name: str, options=()):
        key = (side, filename, name, tuple(options))
        if key not in self.built:
            self.built[key] = (pk.kernel(filename, name, tuple(options)) if side == "new" else
                               RawKernel(pk.expanded_source(filename, self.old_dir), name,
                                         options=tuple(options)))
        return self.built[key]

    def plan(self, side: str, make):
        """make() (a plan) with `side`'s kernels: the wrappers' loader swapped for the call."""
        saved = pw.load_kernel
        pw.load_kernel = lambda filename, name, options=(): self.get(side, filename, name, options)
        try:
            return make()
        finally:
            pw.load_kernel = saved


def compare(timer, name, runs, nbytes, copy_rate, args) -> dict:
    first = {side: cp.asarray(fn()).astype(cp.float32) for side, fn in runs.items()}
    diff = float(cp.max(cp.abs(first["old"] - first["new"])))
    times = {"old": [], "new": []}
    for r in range(args.rounds):
        for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
            times[side].append(timer.time(runs[side], reps=args.reps).median_ms)
    repeat = float(cp.max(cp.abs(cp.asarray(runs["new"]()).astype(cp.float32) - first["new"])))
    best = {side: min(t) for side, t in times.items()}
    row = dict(name=name, ms=times, max_abs_diff=diff, new_repeat_diff=repeat,
               gain_us=(best["old"] - best["new"]) * 1e3,
               new_copy_fraction=nbytes / (best["new"] * 1e-3) / copy_rate)
    print(f"{name:44s} old {' '.join(f'{x:.4f}' for x in times['old'])}  new "
          f"{' '.join(f'{x:.4f}' for x in times['new'])}  gain {row['gain_us']:+.1f} us  "
          f"new {row['new_copy_fraction']:.1%} of copy  diff {diff:.1e}  repeat {repeat:.1e}",
          flush=True)
    return row


def decode_row(timer, kernels, w, copy_rate, args) -> dict:
    inp = build_decode_inputs(cp, w, seed=0)
    runs, kernel = {}, None
    for side in ("old", "new"):
        wrapper = kernels.plan(side, lambda: pw.BatchDecodeWrapper().plan(
            inp["block_tables"], inp["seq_lens"], w.num_heads, w.num_kv_heads, w.head_dim,
            w.page_size, w.dtype))
        out = cp.empty_like(inp["q"])
        runs[side] = lambda wrapper=wrapper, out=out: wrapper.run(
            inp["q"], inp["k_cache"], inp["v_cache"], out=out)
        kernel = wrapper.kernel
    return compare(timer, f"{w.name} [{kernel}]", runs, w.bytes_moved(), copy_rate, args)


def quant_row(timer, kernels, spec, copy_rate, args) -> dict:
    kv_dtype, wname, scheme = spec.split(":")
    w = next(q for q in bq.workloads() if q.name == wname)
    d = bq.build(cp, w, kv_dtype, scheme, seed=1)
    runs = {side: kernels.plan(side, lambda: bq.ours(cp, w, d, kv_dtype, scheme))
            for side in ("old", "new")}
    return compare(timer, f"{spec} [{runs['new'].kernel}]", runs,
                   bq.bytes_read(w, kv_dtype, scheme), copy_rate, args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True,
                        help="a folder holding the other version's kernels/*.cu and *.cuh")
    parser.add_argument("--rows", default=",".join(DECODE_ROWS + QUANT_ROWS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--json", type=Path)
    add_l2_flush_argument(parser)
    args = parser.parse_args(argv)
    if not (args.old / "decode_mma_rows.cu").is_file():
        parser.error(f"--old: {args.old} holds no decode_mma_rows.cu")
    if args.rounds < 1 or args.reps < 1:
        parser.error("--rounds and --reps: at least 1")
    wanted = args.rows.split(",")
    unknown = [r for r in wanted if r not in DECODE_ROWS + QUANT_ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; have {list(DECODE_ROWS + QUANT_ROWS)}")
    t0 = time.time()
    kernels = Kernels(args.old)
    timer, copy_rate = warm_timer(cp, args.l2_flush)
    print(f"copy rate {copy_rate / 1e12:.2f} TB/s (read + write)", flush=True)
    rows = []
    workloads = {w.name: w for w in decode_workloads()}
    for name in wanted:
        row = (decode_row(timer, kernels, workloads[name], copy_rate, args)
               if name in workloads else quant_row(timer, kernels, name, copy_rate, args))
        rows.append(row)
        cp.get_default_memory_pool().free_all_blocks()
        if args.json:   # after every row: a time limit keeps them
            args.json.write_text(json.dumps(dict(copy_rate=copy_rate, l2_flush=args.l2_flush,
                                                 rows=rows), indent=1))
    print(f"done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
