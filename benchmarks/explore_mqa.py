"""D64 MQA 16/1 (the decode row of issue 10 that was behind FlashInfer until session 4): where
its ~39 us went, in one process on the GPU next to FlashInfer's tensor-core decode (tuning runs;
NOTES.md, "MQA 16/1 (session 4)"). explore.py's machinery (variants by name, its plan and launch).

    python3 benchmarks/explore_mqa.py [--reps 15] [--json out.json] [--no-flashinfer]
                                      [--steps variants,timeline,duel] [--variants a|b|N,..]
    python3 benchmarks/explore_mqa.py --ncu      (one launch each, for Nsight Compute)

Steps: "floor": a read-only kernel over the row's K/V pools (what one launch that only reads
those bytes takes: the real floor of a short kernel, launch and ramp included); "variants":
kernel shapes and work splits of decode_mma.cu / decode_mma_rows.cu on D64 MQA 16/1, with
each compiled kernel's registers and the blocks per SM the driver says it holds (occupancy
API, at the variant's dynamic shared memory; "/c100": the maximum shared-memory carveout
asked for); "parts": the planner's kernel on one partition per block of a forced length;
"fixed": 264 equal sequences of L tokens (one unsplit block each, one wave), ours and
FlashInfer's: the per-tile and the fixed per-launch cost; "timeline": %globaltimer marks per
block (-DTIMELINE=1): when each block starts, gets its first tile, ends its tiles and ends;
"probes": the split merge's cost (the separate-merge plan without its merge) and an empty
kernel; "duel": the planner, FlashInfer and alternatives alternated, then D64 GQA 32/8 and
64/8's planner against FlashInfer. --variants a / b: rounds s4a's / s4b's sweeps.
"""
import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402
import numpy as np  # noqa: E402

import explore as ex  # noqa: E402
import explore_rows  # noqa: E402,F401  (its "R ..." variants into ex.V)
from pagedattn_lab import decode_work as dw  # noqa: E402
from pagedattn_lab.bench.timing import Timer, copy_bandwidth  # noqa: E402
from pagedattn_lab.bench.workloads import (DecodeWorkload, build_decode_inputs,  # noqa: E402
                                           decode_workloads)
from pagedattn_lab.wrappers import BatchDecodeWrapper  # noqa: E402

V = ex.V
M, R = ex.mshape, explore_rows.rshape
MQA = {   # name -> variant (explore.V's form); "part": forced tokens per partition (items)
    "M W8D2 S2/w1": {**M(8, 64, 2, 2, 2), "split": "w1"},
    "M W8D2 S3 C2/w1": {**M(8, 64, 3, 2, 2, s_chains=2), "split": "w1"},
    "M W8D2 S3 q0/w1": {**M(8, 64, 3, 2, 2, q_regs=False), "split": "w1"},
    "M W8D2 S3 sm/w1": {**M(8, 64, 3, 2, 2, separate_merge=True), "split": "w1"},
    "M W8D2 S3/w2": {**M(8, 64, 3, 2, 2), "split": "w2"},
    "M W8D2 S3/b4": {**M(8, 64, 3, 2, 2), "split": 4},
    "M W4D2T32 S3 mb3/w1": {**M(4, 32, 3, 2, 3), "split": "w1"},
    "M W4D2T32 S3 mb4/w1": {**M(4, 32, 3, 2, 4), "split": "w1"},
    "M W4D2T32 S2 mb4/w1": {**M(4, 32, 2, 2, 4), "split": "w1"},
    "M W4 S3/w1": {**M(4, 64, 3), "split": "w1"},
    "R W4 T64 S3/w1": {**R(4, 64, 3), "split": "w1"},
    "R W4P T64 S3/w1": {**R(4, 64, 3, pipe=True), "split": "w1"},
    "R W4 T64 S2 mb3/w1": {**R(4, 64, 2, mb=3), "split": "w1"},
}
PLANNER = M(8, 64, 3, 2, 2)   # session 3's MQA shape, with -D options of decode_mma.cu
# ("extra"; the rounds' other flags -- SEG_DIRECT, SLOT_PREFETCH, the merge two parts at a
# time -- were measured, gained nothing over this, and are gone: NOTES.md)
AFTER = ("-DMERGE_AFTER_LOOP=1",)
for tag, items, extra in (("before", (), ()),   # session 3's planner: plain items
                          ("even", ("even",), ()), ("snake", ("snake",), ()),
                          ("even snake", ("even", "snake"), ()),
                          ("after items", (), AFTER),   # the merge after the loop alone
                          ("tl", (), ("-DTIMELINE=1",)),
                          ("tl even snake", ("even", "snake"), ("-DTIMELINE=1",)),
                          ("tl after even snake", ("even", "snake"), ("-DTIMELINE=1",) + AFTER)):
    MQA["before" if tag == "before" else f"M W8D2 S3 {tag}/w1"] = {
        **PLANNER, "split": "w1", "items": items, "extra": extra}
V.update(MQA)
CARVEOUT = ["planner", "M W4D2T32 S3 mb3/w1", "M W4D2T32 S2 mb4/w1", "R W4 T64 S2 mb3/w1"]


def config(w, name, _base=ex.config):
    """explore.config, plus a variant's extra -D options ("extra")."""
    cfg = _base(w, name)
    extra = V[name].get("extra", ())
    return cfg._replace(options=cfg.options + tuple(extra)) if extra else cfg


ex.config = config   # (explore.plan_with and compile_all look it up at call time)
ROUND_A = ["planner", "planner balanced", "M W8D2 S2/w1", "M W8D2 S3 C2/w1", "M W8D2 S3 q0/w1",
           "M W8D2 S3 sm/w1", "M W8D2 S3/w2", "M W8D2 S3/b4", "M W4D2T32 S3 mb3/w1",
           "M W4D2T32 S3 mb4/w1", "M W4D2T32 S2 mb4/w1", "M W4 S3/w1", "R W4 T64 S3/w1",
           "R W4P T64 S3/w1", "R W4 T64 S2 mb3/w1"]   # round s4a's sweep (and 4 flags gone)
ROUND_B = ["before", "M W8D2 S3 even/w1", "M W8D2 S3 snake/w1", "M W8D2 S3 even snake/w1",
           "M W8D2 S3 sm/w1", "before"]   # round s4b's (and 6 variants of flags gone)
# round s4c: the planner (the merge after the loop, equal-tile items, snake order) against
# session 3's planner and the alternatives, then alternated with FlashInfer ("duel")
VARIANTS = ["planner", "before", "M W8D2 S3 after items/w1", "M W8D2 S3 even snake/w1",
            "planner", "before"]
DUEL = ["planner", "flashinfer", "before", "M W8D2 S3 after items/w1"]
OTHER_ROWS = ["D64-gqa4", "D64-gqa8"]   # the planner against FlashInfer: unchanged plans
TIMELINE_VARIANTS = ["M W8D2 S3 tl after even snake/w1"]   # (timeline() only:
# they write through k_scale, which must then be a buffer of [blocks][16] u64)
PARTS = [(1024, ()), (1024, ("even", "snake")), (896, ("even", "snake")),
         (768, ("even", "snake"))]   # round s4a: 384-1280 without the items options
FIXED_LENS = [64, 640]               # round s4a: also 320, 1280

FLOOR_SRC = r"""
extern "C" __global__ void read_all(const uint4* __restrict__ a, const uint4* __restrict__ b,
                                     long long n, unsigned* __restrict__ sink)
{
    unsigned acc = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < 2 * n;
         i += (long long)gridDim.x * blockDim.x) {
        const uint4 x = __ldcs(i < n ? a + i : b + (i - n));
        acc ^= x.x ^ x.y ^ x.z ^ x.w;
    }
    if (acc == 0x12345678u) sink[0] = acc;   // never true on random data: keeps the loads
}
"""


def plan(inp, w, name):
    """explore.plan, with decode_work's items options of the variant ("items": "even",
    "snake"; without the key: none for this script's MQA variants, decode_work's own for
    explore.py's, such as "planner") set while it plans."""
    flags = V[name].get("items", () if name in MQA else None)
    saved = dw.TC_ITEMS_EVEN, dw.TC_ITEMS_SNAKE
    if flags is not None:   # (else decode_work's own)
        dw.TC_ITEMS_EVEN, dw.TC_ITEMS_SNAKE = "even" in flags, "snake" in flags
    try:
        return ex.plan(inp, w, name)
    finally:
        dw.TC_ITEMS_EVEN, dw.TC_ITEMS_SNAKE = saved


def cupy_kernel(p):
    """The planned launch's cupy.RawKernel (rawkernel.PackedLaunch keeps it as .kern)."""
    kern = p._launches[0][0]
    return getattr(kern, "kern", None) or kern.gpu


def occupancy(p):
    """(registers, blocks per SM by the occupancy API at the plan's shared memory)."""
    try:
        kern = cupy_kernel(p)
        regs = kern.attributes.get("num_regs")
        fn = kern.kernel
        try:
            blocks = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                fn.ptr, p.tc_config.threads, p.tc_config.shared)
        except AttributeError:   # the driver API directly
            import ctypes
            n = ctypes.c_int(-1)
            rc = ctypes.CDLL("libcuda.so.1").cuOccupancyMaxActiveBlocksPerMultiprocessor(
                ctypes.byref(n), ctypes.c_void_p(fn.ptr), ctypes.c_int(p.tc_config.threads),
                ctypes.c_size_t(p.tc_config.shared))
            blocks = n.value if rc == 0 else f"CUresult {rc}"
        return regs, blocks
    except Exception as exc:   # noqa: BLE001 - reported, not fatal
        return None, f"{type(exc).__name__}: {exc}"[:120]


def timeline(say, timer, args, w, data, scale, name="M W8D2 S3 tl after even snake/w1"):
    """The planner's shape compiled with -DTIMELINE=1: per block, %globaltimer at entry (0),
    when its first tile has landed (1), after its last tile (2) and at its end (3), its SM,
    whether it merged its sequence and its tiles; timed like the rest (the marks cost a few
    stores), then one launch read back: the spread of each phase over the blocks."""
    p = plan(data, w, name)
    q, k, v = data["q"], data["k_cache"], data["v_cache"]
    out = cp.empty_like(q)
    tl = cp.zeros(p.grid[0] * 16 * 2, cp.float32)   # [block][16] u64 through k_scale
    fn = lambda: ex.launch(p, q, k, v, out, scale, tl, tl)  # noqa: E731
    t = timer.time(fn, reps=args.reps).median_ms
    timer.flush_l2()
    fn()
    cp.cuda.Device().synchronize()
    m = cp.asnumpy(tl.view(cp.uint64)).reshape(-1, 16).astype(np.int64)
    t0 = m[:, 0].min()
    start, first, last, end = (m[:, j] - t0 for j in range(4))
    merged = m[:, 5] == 1
    q_ = lambda x: "/".join(f"{np.percentile(x, pc) / 1e3:.1f}" for pc in (0, 50, 90, 100))  # noqa: E731
    say(f"timeline {w.name}: {t * 1e3:.1f} us timed; one launch, us from the first block's "
        f"start (min/median/p90/max over {len(m)} blocks): start {q_(start)}; first tile "
        f"landed {q_(first)}; last tile done {q_(last)}; end {q_(end)}",
        kind="timeline", workload=w.name, ms=t, marks=m[:, :8].tolist())
    say(f"timeline {w.name}: per block (us): to first tile {q_(first - start)}; tiles "
        f"{q_(last - first)}; end {q_(end - last)}; merging blocks' end "
        f"{q_((end - last)[merged]) if merged.any() else '-'} ({merged.sum()} merged); "
        f"clock64 kcycles to first tile {q_(m[:, 9] - m[:, 8])}")
    sm_end = np.zeros(m[:, 4].max() + 1, np.int64)
    np.maximum.at(sm_end, m[:, 4], end)
    n = min(p.grid[0] // 2, 132)
    same = float(np.mean(m[:n, 4] == m[n:2 * n, 4])) if p.grid[0] >= 2 * n else float("nan")
    say(f"timeline {w.name}: blocks j and j + {n} on one SM: {same:.2f} of them; "
        f"SMs' last block ends {q_(sm_end)}; globaltimer steps seen "
        f"{np.unique(np.diff(np.sort(m[:, 0])))[:6].tolist()} ns")


def duel(say, timer, args, fi, w, inp, ref, scale, rounds=3):
    """DUEL's variants and FlashInfer's tensor-core decode alternated, `rounds` times, on D64
    MQA 16/1; then OTHER_ROWS' planner and FlashInfer twice each (their plans are unchanged)."""
    q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
    fns = {}
    for name in DUEL:
        if name == "flashinfer":
            run = fi.runner(inp, w)
            err = ex.rel(cp.from_dlpack(run()), ref)
            fns[name] = (run, err)
        else:
            p, out = plan(inp, w, name), cp.empty_like(q)
            fn = lambda p=p, out=out: ex.launch(p, q, k, v, out, scale)  # noqa: E731
            fn()
            fns[name] = (fn, ex.rel(out, ref))
    times = {name: [] for name in DUEL}
    for r in range(rounds):
        for name in DUEL:
            times[name].append(timer.time(fns[name][0], reps=args.reps).median_ms)
    for name in DUEL:
        say(f"duel D64-mqa16 {name:<28} {' '.join(f'{t * 1e3:5.1f}' for t in times[name])} us"
            f" (median {np.median(times[name]) * 1e3:.1f}) err {fns[name][1]:.1e}",
            kind="duel", workload=w.name, variant=name, ms=times[name], err=fns[name][1])
    by_name = {x.name: x for x in decode_workloads()}
    for row in OTHER_ROWS:
        wl = by_name[row]
        data = build_decode_inputs(cp, wl)
        pl = BatchDecodeWrapper().plan(data["block_tables"], data["seq_lens"], wl.num_heads,
                                       wl.num_kv_heads, wl.head_dim, wl.page_size, wl.dtype)
        out = cp.empty_like(data["q"])
        s = 1 / math.sqrt(wl.head_dim)
        ours = lambda: pl.run(data["q"], data["k_cache"], data["v_cache"], out=out, scale=s)  # noqa: E731,E501
        theirs = fi.runner(data, wl)
        err = ex.rel(cp.from_dlpack(theirs()), ours())
        t = {"ours": [], "flashinfer": []}
        for r in range(2):
            t["ours"].append(timer.time(ours, reps=args.reps).median_ms)
            t["flashinfer"].append(timer.time(theirs, reps=args.reps).median_ms)
        say(f"duel {row:<10} planner ({pl.tc_config.source}, {pl.scheme}) "
            f"{' '.join(f'{x * 1e3:6.1f}' for x in t['ours'])} us, flashinfer "
            f"{' '.join(f'{x * 1e3:6.1f}' for x in t['flashinfer'])} us, err {err:.1e}",
            kind="duel-row", workload=row, ours_ms=t["ours"], flashinfer_ms=t["flashinfer"],
            err=err)
        del data, pl, out
        cp.get_default_memory_pool().free_all_blocks()


def plan_part(inp, w, name, part_len, flags=()):
    saved = dw.choose_tc_part_len, dw.TC_ITEMS_EVEN, dw.TC_ITEMS_SNAKE
    dw.choose_tc_part_len = lambda *a, **k: part_len
    dw.TC_ITEMS_EVEN, dw.TC_ITEMS_SNAKE = "even" in flags, "snake" in flags
    try:
        return ex.plan_with(inp, w, name, "items")
    finally:
        dw.choose_tc_part_len, dw.TC_ITEMS_EVEN, dw.TC_ITEMS_SNAKE = saved


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-flashinfer", action="store_true")
    ap.add_argument("--steps", default="variants,timeline,duel")
    ap.add_argument("--variants", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--ncu", action="store_true", help="launch a few kernels once each")
    args = ap.parse_args(argv)
    say = ex.Say(args.json, "decode-mqa-explore")

    steps = args.steps.split(",")
    w = {x.name: x for x in decode_workloads()}["D64-mqa16"]
    fi = None if args.no_flashinfer else ex.FlashInfer([128])
    names = ({"a": ROUND_A, "b": ROUND_B}.get(args.variants) or
             (args.variants.split(",") if args.variants else VARIANTS))
    if args.ncu:
        names = ["planner", "R W4 T64 S3/w1"]
    others = [x for x in decode_workloads() if x.name in OTHER_ROWS and "duel" in steps]
    failed = ex.compile_all([w] + others, lambda x: ["planner"] if x is not w else list(
        dict.fromkeys(names + TIMELINE_VARIANTS * ("timeline" in steps))))
    say(f"compiled {len(names)} kernels, failures {failed}")
    inp = build_decode_inputs(cp, w)
    q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
    scale = 1 / math.sqrt(w.head_dim)
    if args.ncu:
        for name in names:
            p = ex.plan(inp, w, name)
            ex.launch(p, q, k, v, cp.empty_like(q), scale)
            cp.cuda.Device().synchronize()
            say(f"ncu: launched {name} grid {p.grid} {p.tc_config.options}")
        if fi is not None:
            fi.thread.join(timeout=60)
        if fi is not None and fi.fi is not None:
            run = fi.runner(inp, w)
            run()
            cp.cuda.Device().synchronize()
            say("ncu: launched flashinfer TC")
        return
    timer = Timer(cp)
    timer.warm_up(0.5)
    copy_bw = copy_bandwidth(cp, timer)
    say(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s", kind="copy", gbps=copy_bw / 1e9)
    floor_ms = w.bytes_moved() / copy_bw * 1e3
    say(f"D64-mqa16: {w.describe()}, {w.bytes_moved() / 1e6:.1f} MB, floor {floor_ms * 1e3:.1f} us")

    if "floor" in steps:   # one launch that only reads the pool's K and V
        kern = cp.RawKernel(FLOOR_SRC, "read_all")
        sink = cp.zeros(1, cp.uint32)
        kv_bytes = w.kv_bytes()
        ka, va = k.reshape(-1).view(cp.uint8), v.reshape(-1).view(cp.uint8)
        for blocks in (264, 528, 1056, 2112):
            fn = lambda blocks=blocks: kern((blocks,), (256,),  # noqa: E731
                                            (ka, va, np.int64(ka.size // 16), sink))
            t = timer.time(fn, reps=args.reps).median_ms
            nbytes = ka.size + va.size
            say(f"read-only K+V pools ({nbytes / 1e6:.1f} MB, one launch) {blocks} blocks: "
                f"{t * 1e3:6.1f} us = {nbytes / t / 1e6:.0f} GB/s", kind="floor",
                blocks=blocks, ms=t, bytes=nbytes)
        say(f"(the row's K+V bytes: {kv_bytes / 1e6:.1f} MB)")

    ref = None
    if "variants" in steps:
        for name in names:
            for carve in ((None, 100) if name in CARVEOUT else (None,)):
                try:
                    p = plan(inp, w, name)
                    if carve is not None:
                        cupy_kernel(p).preferred_shared_memory_carveout = carve
                    regs, occ = occupancy(p)
                    out = cp.empty_like(q)
                    fn = lambda p=p, out=out: ex.launch(p, q, k, v, out, scale)  # noqa: E731
                    fn()
                    err = 0.0 if ref is None else ex.rel(out, ref)
                    ref = out.copy() if ref is None else ref
                    t = timer.time(fn, reps=args.reps).median_ms
                    label = name + ("" if carve is None else f"/c{carve}")
                    cfg = p.tc_config
                    say(f"{label:<24} {t * 1e3:6.1f} us {100 * floor_ms / t:5.1f}% copy "
                        f"{p.scheme[:3]} part {p.part_len:5d} x{p.max_parts:<2d} grid "
                        f"{p.grid[0]:4d} smem {cfg.shared // 1024:3d} KB regs {regs} "
                        f"occ {occ} err {err:.1e}", kind="variant", variant=label, ms=t,
                        grid=list(p.grid), part_len=p.part_len, shared=cfg.shared, regs=regs,
                        occupancy=occ if isinstance(occ, int) else None, err=err)
                    if carve is not None:   # back to the default for later plans
                        try:
                            cupy_kernel(p).preferred_shared_memory_carveout = -1
                        except Exception as exc:   # noqa: BLE001
                            say(f"carveout reset failed: {exc}")
                except Exception as exc:   # noqa: BLE001
                    say(f"{name:<24} failed: {type(exc).__name__}: {str(exc)[-300:]}")

    if "parts" in steps:
        for part, flags in PARTS:
            try:
                p = plan_part(inp, w, "planner", part, flags)
                out = cp.empty_like(q)
                fn = lambda p=p, out=out: ex.launch(p, q, k, v, out, scale)  # noqa: E731
                fn()
                err = 0.0 if ref is None else ex.rel(out, ref)
                t = timer.time(fn, reps=args.reps).median_ms
                say(f"planner part {part:5d} {' '.join(flags):<10}: {t * 1e3:6.1f} us grid "
                    f"{p.grid[0]:4d} x{p.max_parts} err {err:.1e}", kind="part",
                    part_len=part, items=list(flags), ms=t, grid=list(p.grid), err=err)
            except Exception as exc:   # noqa: BLE001
                say(f"part {part} failed: {type(exc).__name__}: {str(exc)[-300:]}")

    if "timeline" in steps:   # where a block's time goes: %globaltimer marks per block
        for wl, data in [(w, inp)]:
            try:
                data = data or build_decode_inputs(cp, wl)
                timeline(say, timer, args, wl, data, scale)
                del data
            except Exception as exc:   # noqa: BLE001
                say(f"timeline {wl.name} failed: {type(exc).__name__}: {str(exc)[-300:]}")

    if "probes" in steps:   # the split merge's cost: the separate-merge plan without its merge
        try:
            p = ex.plan(inp, w, "M W8D2 S3 sm/w1")
            out = cp.empty_like(q)
            s_ = np.float32(scale * ex.dp_log2e())
            kern, grid, block, make_args, shared = p._launches[0]
            fn = lambda: kern(grid, block, make_args(q, k, v, out, s_), shared_mem=shared)  # noqa: E731
            t = timer.time(fn, reps=args.reps).median_ms
            say(f"probe: main kernel of the separate-merge plan, no merge: {t * 1e3:6.1f} us",
                kind="probe", what="no merge", ms=t)
            kern2, grid2, block2, make2, shared2 = p._launches[1]
            fn2 = lambda: kern2(grid2, block2, make2(q, k, v, out, s_), shared_mem=shared2)  # noqa: E731
            t = timer.time(fn2, reps=args.reps).median_ms
            say(f"probe: the merge launch alone ({grid2[0]} blocks): {t * 1e3:6.1f} us",
                kind="probe", what="merge alone", ms=t)
            empty = cp.RawKernel('extern "C" __global__ void empty(int x) {}', "empty")
            for blocks in (1, 264):
                t = timer.time(lambda b=blocks: empty((b,), (256,), (np.int32(0),)),
                               reps=args.reps).median_ms
                say(f"probe: an empty kernel of {blocks} blocks: {t * 1e3:6.1f} us",
                    kind="probe", what=f"empty {blocks}", ms=t)
        except Exception as exc:   # noqa: BLE001
            say(f"probes failed: {type(exc).__name__}: {str(exc)[-300:]}")

    fixed = []
    if "fixed" in steps:   # 264 equal unsplit sequences: one block each, one wave
        for n in FIXED_LENS:
            wf = DecodeWorkload(f"264x{n}", (n,) * 264, num_heads=16, num_kv_heads=1)
            try:
                fin = build_decode_inputs(cp, wf)
                p = ex.plan(fin, wf, "planner")
                out = cp.empty_like(fin["q"])
                fn = lambda p=p, out=out, fin=fin: ex.launch(  # noqa: E731
                    p, fin["q"], fin["k_cache"], fin["v_cache"], out, scale)
                fn()
                t = timer.time(fn, reps=args.reps).median_ms
                say(f"fixed {wf.name:<9} ours {t * 1e3:6.1f} us grid {p.grid[0]} "
                    f"{p.scheme[:3]} part {p.part_len} ({wf.kv_bytes() / 1e6:.1f} MB)",
                    kind="fixed", workload=wf.name, ms=t, tokens=n, grid=list(p.grid))
                fixed.append((wf, fin))
            except Exception as exc:   # noqa: BLE001
                say(f"fixed {n} failed: {type(exc).__name__}: {str(exc)[-300:]}")

    if fi is not None:   # FlashInfer last (its JIT build ran in the background)
        fi.thread.join(timeout=max(0.0, 50 - say.elapsed()))
        if fi.fi is None:
            say(f"flashinfer TC not ready: {fi.error}")
        elif "duel" in steps:
            duel(say, timer, args, fi, w, inp, ref, scale)
        else:
            for wl, data, r in [(w, inp, ref)] + [(wf, fin, None) for wf, fin in fixed]:
                try:
                    run = fi.runner(data, wl)
                    got = run()
                    err = ex.rel(cp.from_dlpack(got), r) if r is not None else 0.0
                    t = timer.time(run, reps=args.reps).median_ms
                    say(f"flashinfer TC {wl.name:<10} {t * 1e3:6.1f} us err {err:.1e}",
                        kind="flashinfer", workload=wl.name, ms=t, err=err)
                except Exception as exc:   # noqa: BLE001
                    say(f"flashinfer {wl.name} failed: {exc}")


if __name__ == "__main__":
    main()
