"""What a kernel with no arithmetic attains on the decode bench's bytes: the ceiling under
issue 10's and issue 12's "% of copy" targets (benchmarks/NOTES.md "Read ceilings (session 9)").

    python3 benchmarks/read_ceiling.py [--reps 25] [--json out.json]

Three readers, CUDA events, L2 flushed, median (pagedattn_lab.bench.timing), each over the
bytes of the K and V of one D64 GQA 32/8 row (149,713 tokens: e4m3 codes at head_dim 128,
fp16 at 96 and 128):
  contiguous  one flat buffer of those bytes, grid-stride 16-byte loads: the rate the size
              allows at all (launch, ramp and tail included, as in every timed decode;
              explore_mqa.py's read-only floor of session 4, with loads in flight per thread);
  one wave    a paged pool, pages in random order, one block per (range, KV head) as the
              decode plans cut the work (the plan's range count: every block resident at
              once), each reading its KV head's rows of its range: the decode kernels' reads
              with none of their arithmetic (K and V here are one pool of twice the tokens,
              so a block reads K rows or V rows where a kernel's block reads both);
  many waves  the same reads cut in 512-token ranges (thousands of blocks).
Each with the work on the grid's x or the KV heads on x (adjacent blocks share pages), at a
few block sizes and loads in flight per thread. Readers are sensitive to how they issue, so
the best of each is a lower bound on what the access pattern allows."""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

from pagedattn_lab.bench.timing import Timer, copy_bandwidth  # noqa: E402
from pagedattn_lab.bench.workloads import d64_lengths  # noqa: E402

READERS_SRC = r"""
// 16 bytes through the L2 only (the decode kernels' K/V copies are cp.async.cg)
__device__ inline void load16(uint4& v, const uint4* a) {
    asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(a));
}
// the loads must not be optimized away: fold them, store only on an impossible value
__device__ inline void keep(const uint4 (&v)[UNROLL], unsigned long long* sink) {
    unsigned acc = 0;
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    if (acc == 0x9e3779b9u) *sink = acc;
}
extern "C" __global__ void read_flat(const uint4* a, long long n16, unsigned long long* sink) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long j0 = blockIdx.x * (long long)blockDim.x + threadIdx.x; j0 < n16;
         j0 += step * UNROLL) {
        uint4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            long long j = j0 + u * step;
            v[u] = make_uint4(0, 0, 0, 0);
            if (j < n16) load16(v[u], a + j);
        }
        keep(v, sink);
    }
}
// Block (range, head) -- or (head, range) with HEADS_ON_X -- reads its KV head's rows of
// tokens [range * range_tokens, ...): row bytes = heads x piece16 x 16, 16 tokens a page,
// pages in the order `pages` gives.
extern "C" __global__ void read_paged(const uint4* pool, const int* pages, int range_tokens,
                                      int tokens, int heads, int piece16,
                                      unsigned long long* sink) {
    const int range = HEADS_ON_X ? blockIdx.y : blockIdx.x;
    const int head = HEADS_ON_X ? blockIdx.x : blockIdx.y;
    const int t0 = range * range_tokens;
    const int total = min(range_tokens, tokens - t0) * piece16;
    for (int j0 = threadIdx.x; j0 < total; j0 += blockDim.x * UNROLL) {
        uint4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int j = j0 + u * blockDim.x, tok = t0 + j / piece16;
            v[u] = make_uint4(0, 0, 0, 0);
            if (j < total)
                load16(v[u], pool + ((long long)(pages[tok >> 4] * 16 + (tok & 15)) * heads
                                     + head) * piece16 + j % piece16);
        }
        keep(v, sink);
    }
}
"""
# (name, bytes of one token's K (or V) row over all KV heads, KV heads, the plan's ranges:
# its grid on the H200, results/2026-12-03_H200_session9_bench*.json and quant.json)
ROWS = [("fp8 e4m3 codes, head_dim 128", 8 * 128, 8, 49),
        ("fp16, head_dim 96, KV heads in pairs", 8 * 96 * 2, 4, 66),
        ("fp16, head_dim 96", 8 * 96 * 2, 8, 49),
        ("fp16, head_dim 128", 8 * 128 * 2, 8, 49)]
UNROLLS, THREADS = (4, 8, 16), (128, 256, 512)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    timer = Timer(cp)
    timer.warm_up(1.0)
    copy = copy_bandwidth(cp, timer)
    sink = cp.zeros(1, cp.uint64)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    modules = {(u, hx): cp.RawModule(code=READERS_SRC,
                                     options=(f"-DUNROLL={u}", f"-DHEADS_ON_X={hx}"))
               for u in UNROLLS for hx in (0, 1)}
    tokens = 2 * sum(d64_lengths())            # K and V rows, in one pool
    pages = -(-tokens // 16)
    page_order = cp.asarray(np.random.default_rng(0).permutation(pages).astype(np.int32))
    results = []

    def measure(row, reader, grid_order, shape, fn, nbytes):
        ms = timer.time(fn, reps=args.reps).median_ms
        share = nbytes / (ms * 1e-3) / copy
        results.append(dict(row=row, reader=reader, order=grid_order, shape=shape, ms=ms,
                            bytes=nbytes, copy_fraction=share))
        print(f"{row:38s} {reader:10s} {grid_order:10s} {shape:16s} {ms:.4f} ms "
              f"{share:6.1%} of copy", flush=True)

    for row, row_bytes, heads, ranges in ROWS:
        nbytes = tokens * row_bytes
        pool = cp.ones(pages * 16 * row_bytes // 4, cp.float32)
        piece16 = row_bytes // heads // 16
        if heads == 8:   # the flat read depends on the bytes only: once per size
            for u in UNROLLS[:2]:
                for blocks, threads in ((sms * 8, 256), (sms * 16, 128)):
                    kern = modules[u, 0].get_function("read_flat")
                    measure(row, "contiguous", "-", f"{blocks}x{threads} u{u}",
                            lambda k=kern, b=blocks, t=threads: k(
                                (b,), (t,), (pool, np.int64(nbytes // 16), sink)), nbytes)
        for label, n_ranges in (("one wave", ranges), ("many waves", -(-tokens // 512))):
            range_tokens = -(-tokens // n_ranges)
            for hx, grid_order in ((0, "work on x"), (1, "heads on x")):
                grid = (heads, n_ranges) if hx else (n_ranges, heads)
                for u, threads in ((u, t) for u in UNROLLS for t in THREADS):
                    kern = modules[u, hx].get_function("read_paged")
                    measure(row, label, grid_order, f"{n_ranges}x{heads} t{threads} u{u}",
                            lambda k=kern, g=grid, t=threads, rt=range_tokens: k(
                                g, (t,), (pool, page_order, np.int32(rt), np.int32(tokens),
                                          np.int32(heads), np.int32(piece16), sink)), nbytes)
        del pool
    print(f"copy {copy / 1e12:.2f} TB/s")
    for row, *_ in ROWS:
        for reader, grid_order in (("contiguous", "-"), ("one wave", "work on x"),
                              ("one wave", "heads on x"), ("many waves", "work on x"),
                              ("many waves", "heads on x")):
            best = [r for r in results
                    if (r["row"], r["reader"], r["order"]) == (row, reader, grid_order)]
            if best:
                b = min(best, key=lambda r: r["ms"])
                print(f"best: {row:38s} {reader:10s} {grid_order:10s} {b['ms']:.4f} ms "
                      f"{b['copy_fraction']:6.1%} ({b['shape']})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            dict(device=cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                 copy_bytes_per_s=copy, results=results), indent=1))


if __name__ == "__main__":
    main()
