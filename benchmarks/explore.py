"""Time variants of the tensor-core decode kernel on the GPU in one process, next to
FlashInfer's tensor-core decode on the same pages (tuning runs; the results go to NOTES.md).

    python3 benchmarks/explore.py [--rows D64-gqa4,...] [--reps 15] [--json out.json]
                                  [--final | --balanced] [--fi-dims 128,256]
                                  [--no-flashinfer] [--no-quant] [--no-host]

A variant is one compiled shape of kernels/decode_tc.cu (warps per block, warps per token
slice (D_SPLIT), tokens per K/V tile, tiles in flight, warp pipelines: -D options through
`decode_plan.tc_config`) and the split-K rule (blocks per SM, or one/two waves of resident
blocks); "planner" is what `BatchDecodeWrapper.plan` picks. ROWS are the tuning sweep, FINAL
(--final) the report's rows with a few alternates. Each variant's output is compared with
the row's first; compressed-page variants (int8 / fp8 codes, static or per-token scales)
with the fp16 kernel run on the dequantized cache. Kernels are compiled in a thread pool
while FlashInfer builds its own in the background; every line is printed as soon as it is
measured. Then the host rows: `run()` on a tiny plan, the one-shot call on D64 against its
kernel, and a profile of that call.
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
from pagedattn_lab import decode_work as dw  # noqa: E402
from pagedattn_lab.bench.timing import Timer, copy_bandwidth, host_time  # noqa: E402
from pagedattn_lab.bench.workloads import build_decode_inputs, decode_workloads  # noqa: E402
from pagedattn_lab.kernels import kernel as load_kernel  # noqa: E402
from pagedattn_lab.wrappers import BatchDecodeWrapper  # noqa: E402

# name -> kernel shape (tc_config keywords) and split: "split" is blocks per SM for the
# TC_BLOCKS_PER_SM rule (8 also allows 128 partitions), or "w1"/"w2": partitions that fill
# that many waves of resident blocks (TC_WAVES) -- one work item per block ("items"); or
# "r1", "r2", "r0.5": decode_mma.cu's balanced ranges (stream-K), that many per resident
# block slot (TC_RANGES_PER_SLOT); "quant": 0, 1 (int8), 2 (fp8); "tok": per-token.
def shape(warps, tile, stages, d_split=1, mb=1, split=4, quant=0, tok=False, pipe=False,
          impl="wmma", **mma):
    return dict(warps=warps, tile_t=tile, stages=stages, d_split=d_split, min_blocks=mb,
                split=split, quant=quant, tok=tok, warp_pipe=pipe, impl=impl, mma=mma)


def mshape(warps, tile, stages, d_split=1, mb=1, split=4, quant=0, tok=False, pipe=False,
           **mma):
    """A shape of kernels/decode_mma.cu (mma keywords: s_chains, swizzle, q_regs)."""
    return shape(warps, tile, stages, d_split, mb, split, quant, tok, pipe, impl="mma", **mma)


V = {
    "W4": shape(4, 64, 2),                         # v2's shape (page ids read ahead)
    "W8D2": shape(8, 64, 2, 2, 2),                 # 16 warps per SM, pairs share tokens
    "W4D2T32": shape(4, 32, 2, 2, 4),              # 4 small blocks per SM
    "W4D2T32S3": shape(4, 32, 3, 2, 3),
    "W8D4T32": shape(8, 32, 2, 4, 2),              # 4 warps per 16 tokens, 2 O tiles each
    "W8D4T32mb3": shape(8, 32, 2, 4, 3),           # 24 warps per SM
    "W6D2T48mb3": shape(6, 48, 2, 2, 3),           # 18 warps per SM
    "W8D4T64": shape(8, 64, 2, 4, 2),              # 32 tokens per warp
    "W4P": shape(4, 64, 2, pipe=True),             # warps copy and wait for their own tokens
    "W2PT32S3": shape(2, 32, 3, pipe=True),        # ... 3 blocks per SM
}
for base in ("W4", "W8D2", "W8D4T32"):
    for split in (2, 8, "w1", "w2"):
        V[f"{base}/{split if isinstance(split, str) else 'b' + str(split)}"] = {
            **V[base], "split": split}
for q, qname in ((2, "fp8"), (1, "int8")):
    for tok in (False, True):
        for base, st in (("W4", 3), ("W8D2", 3), ("W8D2", 2), ("W4P", 3)):
            V[f"{qname}{'/tok' if tok else ''} {base}S{st}"] = {**V[base], "stages": st,
                                                              "quant": q, "tok": tok}
V["d256 W4"] = shape(4, 64, 2)
V["d256 W8D4T32"] = shape(8, 32, 2, 4, 2)
V["d256 W4D2T32"] = shape(4, 32, 2, 2, 1)
V["d256 W4D4T16"] = shape(4, 16, 2, 4, 4)
V["d256 W8D4T32S3"] = shape(8, 32, 3, 4, 2)
V["d256 W2P"] = shape(2, 32, 2, pipe=True)

# decode_mma.cu ("M..."): PTX mma.sync, softmax in registers
V["M W4"] = mshape(4, 64, 2)                     # 16 tokens per warp and tile
V["M W4 S3"] = mshape(4, 64, 3)
V["M W4 C2"] = mshape(4, 64, 2, s_chains=2)      # two accumulator chains for S
V["M W4 pad"] = mshape(4, 64, 2, swizzle=False)  # rows padded by 16 bytes, not swizzled
V["M W4 T128"] = mshape(4, 128, 2)               # 32 tokens per warp and tile
V["M W8 T128"] = mshape(8, 128, 2)               # 8 warps, 16 tokens each
V["M W8 T128 S3"] = mshape(8, 128, 3)
V["M W2 T32 S4"] = mshape(2, 32, 4, mb=4)        # small blocks, many per SM
V["M W4 T64 mb3"] = mshape(4, 64, 2, mb=3)
V["M W8D2"] = mshape(8, 64, 2, 2, 2)
V["M W4P"] = mshape(4, 64, 2, pipe=True)          # warps copy and wait for their own tokens
V["M W4P S3"] = mshape(4, 64, 3, pipe=True)
V["M W4P T128"] = mshape(4, 128, 2, pipe=True)
V["M W4P q0 mb3"] = mshape(4, 64, 2, 1, 3, pipe=True, q_regs=False)   # 3 blocks of 4 warps
V["M W4 q0 mb3"] = mshape(4, 64, 2, 1, 3, q_regs=False)
V["M W8D2 S3"] = mshape(8, 64, 3, 2, 2)
V["M d256 W4D2T32 C2"] = mshape(4, 32, 2, 2, s_chains=2)   # 16 k steps: two chains of 8
for base in ("M W4P S3", "M W4 S3"):
    for split in ("b2", "b8", "b16", "w2"):
        V[f"{base}/{split}"] = {**V[base], "split": split if split[0] == "w" else int(split[1:])}
for base in ("M W8D2 S3", "M W4P S3", "M W4P q0 mb3"):
    V[f"{base}/w1"] = {**V[base], "split": "w1"}
V["M W8D2/w2"] = {**V["M W8D2"], "split": "w2"}
for q, qname in ((2, "fp8"), (1, "int8")):
    V[f"M {qname} W4T128 q0 mb3"] = mshape(4, 128, 2, 1, 3, quant=q, q_regs=False)
    V[f"M {qname} W4 q0 mb3"] = mshape(4, 64, 3, 1, 3, quant=q, q_regs=False)
    V[f"M {qname} W4PT128S2"] = mshape(4, 128, 2, quant=q, pipe=True)
for tok in (False, True):   # e4m3 by moving bits instead of the conversion instruction
    t_ = "/tok" if tok else ""
    V[f"M fp8b{t_} W4T128S2"] = mshape(4, 128, 2, quant=2, tok=tok, fp8_bits=True)
    V[f"M fp8b{t_} W4PT128S3"] = mshape(4, 128, 3, quant=2, tok=tok, pipe=True, fp8_bits=True)
V["M fp8b W4T128 q0 mb3"] = mshape(4, 128, 2, 1, 3, quant=2, q_regs=False, fp8_bits=True)
V["M d256 W4D2T32S3"] = mshape(4, 32, 3, 2)
V["M d256 W4D2T32S4"] = mshape(4, 32, 4, 2)
V["M d256 W8D2T64S3"] = mshape(8, 64, 3, 2)
V["M d256 W4D2T32 mb2"] = mshape(4, 32, 2, 2, 2)
for base in ("M W4", "M W8 T128", "M W8D2"):
    V[f"{base}/w1"] = {**V[base], "split": "w1"}
    V[f"{base}/b8"] = {**V[base], "split": 8}
for q, qname in ((2, "fp8"), (1, "int8")):   # codes converted in registers
    for tok in (False, True):
        for wtag, w_, t_, st, pp in (("W4S2", 4, 64, 2, 0), ("W4S3", 4, 64, 3, 0),
                                     ("W4T128S2", 4, 128, 2, 0), ("W4T128S3", 4, 128, 3, 0),
                                     ("W8T128S3", 8, 128, 3, 0), ("W4PS4", 4, 64, 4, 1),
                                     ("W4PT128S3", 4, 128, 3, 1)):
            V[f"M {qname}{'/tok' if tok else ''} {wtag}"] = mshape(w_, t_, st, quant=q, tok=tok,
                                                                   pipe=bool(pp))
V["M d256 W4D2T32"] = mshape(4, 32, 2, 2)
V["M d256 W4T32"] = mshape(4, 32, 2)              # Q reloaded per tile (q_regs 0 at 256)
V["M d256 W8D2T64"] = mshape(8, 64, 2, 2)
V["M d256 W4D2T64"] = mshape(4, 64, 2, 2)
V["M d256 W8D4T32"] = mshape(8, 32, 2, 4, 2)
# balanced ranges (stream-K) on decode_mma.cu: "/rN" = N ranges per resident block slot
for base in ("M W4P S3", "M W4 S3", "M W4P", "M W8D2 S3", "M W4P q0 mb3", "M d256 W4D2T32",
             "M d256 W4D2T32S3", "M d256 W4T32", "M d256 W8D2T64", "M d256 W4D2T64",
             "M fp8 W4T128S2", "M fp8 W4PT128S3"):
    for r in ("r1", "r2", "r0.5"):
        V[f"{base}/{r}"] = {**V[base], "split": r}
V["M fp8 W4T128 q0 mb3/r1"] = {**V["M fp8 W4T128 q0 mb3"], "split": "r1"}
V["M W4P S3 sm/r1"] = {**mshape(4, 64, 3, pipe=True, separate_merge=True), "split": "r1"}
V["M W8D2 S3 sm/r1"] = {**mshape(8, 64, 3, 2, 2, separate_merge=True), "split": "r1"}
V["M W4P S4/r1"] = {**mshape(4, 64, 4, pipe=True), "split": "r1"}   # one block per SM, 4 stages
V["M W4P S2/r1"] = {**mshape(4, 64, 2, pipe=True), "split": "r1"}
V["M W4P T128 S2/r1"] = {**mshape(4, 128, 2, pipe=True), "split": "r1"}
V["M W8D2 S3/w1"] = {**V["M W8D2 S3"], "split": "w1"}

# the planner's own kernel and split, fp16 and on compressed pages
V["planner"] = {**shape(None, None, None, impl=None), "split": None}
V["planner items"] = {**V["planner"], "split": "items"}   # its kernel, one partition per block
V["planner balanced"] = {**V["planner"], "split": "balanced"}
V["planner wmma"] = {**shape(None, None, None), "split": None}   # lesson 09's kernel
for q, qname in ((2, "fp8"), (1, "int8")):
    V[f"planner wmma {qname}"] = {**V["planner wmma"], "quant": q}
for q, qname in ((2, "fp8"), (1, "int8")):
    for tok in (False, True):
        V[f"planner {qname}{'/tok' if tok else ''}"] = {**V["planner"], "quant": q, "tok": tok}
PLANNER_QUANT = [n for n in V if n.startswith("planner ") and "wmma" not in n
                 and n not in ("planner items", "planner balanced")]
for n in PLANNER_QUANT:   # the compressed-page planner shapes on either work scheme
    for scheme in ("items", "balanced"):
        V[f"{n} {scheme}"] = {**V[n], "split": scheme}
V["W4P/w1"] = {**shape(4, 64, 2, pipe=True), "split": "w1"}
V["W4D2T32/w1"] = {**shape(4, 32, 2, 2, 4), "split": "w1"}
V["W8D4T32mb3/w1"] = {**shape(8, 32, 2, 4, 3), "split": "w1"}
V["W4/w1"] = {**shape(4, 64, 2), "split": "w1"}
V["W4/b4"] = shape(4, 64, 2)
V["W3T48S2mb3"] = shape(3, 48, 2, 1, 3)   # 61 KB: 3 blocks of 3 warps, 78 KB in flight
V["fp8 W4PS4"] = shape(4, 64, 4, pipe=True, quant=2)
for q, qname in ((2, "fp8"), (1, "int8")):
    V[f"{qname} W4PS3"] = shape(4, 64, 3, pipe=True, quant=q)
    V[f"{qname}/tok W4PS3"] = shape(4, 64, 3, pipe=True, quant=q, tok=True)
FINAL = {   # --final: the rows of the report (the planner's choice first), and alternates
    "D64-gqa4": ["planner", "planner wmma", "M W4 S3", "M W4P", "M W4P q0 mb3", "M W4 q0 mb3",
                 "M W4P S3/b2", "M W4P S3/b8", "M W4P S3/b16", "M W4P S3/w2", "M W4 S3/b8",
                 "M W8 T128 S3"]
    + PLANNER_QUANT + ["planner wmma fp8"]
    + [f"M {f} {t}" for f in ("fp8", "int8") for t in ("W4PT128S2", "W4PT128S3", "W4T128 q0 mb3",
                                                     "W4 q0 mb3")]
    + ["M fp8/tok W4PT128S3", "M int8/tok W4PT128S3", "M fp8b W4T128S2", "M fp8b W4PT128S3",
       "M fp8b/tok W4T128S2", "M fp8b/tok W4PT128S3", "M fp8b W4T128 q0 mb3"],
    "D64-mqa16": ["planner", "planner wmma", "M W8D2 S3/w1", "M W4P S3/w1", "M W4P q0 mb3/w1",
                  "M W8D2/w2", "M W4/w1"],
    "1x32k-gqa4": ["planner", "planner wmma", "M W4/w1", "M W8D2/w1", "M W4P q0 mb3/w1"],
    "8x32k-gqa4": ["planner", "planner wmma", "M W4 S3", "M W4/w1", "M W4P", "M W4P q0 mb3",
                   "M W4P S3/b8"]
    + PLANNER_QUANT + ["M fp8 W4PT128S3", "M int8 W4PT128S3", "M fp8b W4T128S2"],
    "D64-gqa8": ["planner", "planner wmma", "M W4 S3", "M W4P", "M W4P q0 mb3", "M W4P S3/b8"],
    "D64-gqa8-p64": ["planner", "planner wmma", "M W4 S3", "M W4P q0 mb3", "M W4P S3/b8",
                     "M W4P S3/b16"],
    "D64-gqa4-d256": ["planner", "planner wmma", "M d256 W4D2T32S3", "M d256 W4D2T32S4",
                      "M d256 W8D2T64S3", "M d256 W8D2T64", "M d256 W4D2T32 mb2",
                      "M d256 W4D2T32 C2"],
    "D64-gqa4-d80": ["planner", "planner wmma"],
    "D64-gqa4-d96": ["planner", "planner wmma"],
}

BALANCED = {   # --balanced: decode_mma.cu's balanced ranges (stream-K) and one item per block
    "D64-gqa4": ["planner", "planner items", "M W4 S3/r1", "planner fp8", "planner fp8 items",
                 "planner int8", "planner fp8/tok"],
    "D64-gqa8": ["planner", "planner items"],
    "D64-gqa8-p64": ["planner", "planner items"],
    "D64-mqa16": ["planner", "planner balanced"],
    "8x32k-gqa4": ["planner", "planner balanced"],
    "1x32k-gqa4": ["planner", "planner balanced"],
    "D64-gqa4-d256": ["planner", "planner items"],
}

FP16_D128 = ["W4", "W8D2", "W4D2T32", "W4D2T32S3", "W8D4T32", "W8D4T32mb3", "W6D2T48mb3",
             "W8D4T64", "W4P", "W2PT32S3"]
SPLITS = [f"{b}/{s}" for b in ("W4", "W8D2", "W8D4T32") for s in ("b2", "b8", "w1", "w2")]
QUANT = [n for n in V if n.startswith(("fp8", "int8"))]
ROWS = {   # row: variants (the first is the reference for the error column), most wanted first
    "D64-gqa4": FP16_D128 + QUANT + ["W8D2/w2", "W8D4T32/w2"],
    "D64-mqa16": FP16_D128 + SPLITS,
    "1x32k-gqa4": FP16_D128 + SPLITS,
    "8x32k-gqa4": FP16_D128 + ["fp8 W8D2S3", "int8/tok W8D2S3", "W8D2/w1", "W8D2/w2"],
    "D64-gqa4-d256": [n for n in V if n.startswith("d256")],
    "D64-gqa8": FP16_D128 + ["W8D2/w2"],
}


def config(w, name):
    """The variant's kernel; a variant without warps is the planner's own shape (with its
    mma keywords, e.g. qk_mma8), its KV heads fused as the planner fuses them unless the
    variant says (mma keyword kv_fuse)."""
    v = V[name]
    mma = dict(v["mma"])
    fuse = mma.pop("kv_fuse", None)
    if fuse is None:
        planner_shape = v["warps"] is None and v["impl"] in (None, "rows")
        fuse = dp.kv_fuse(w.dtype, w.head_dim, w.group, w.num_kv_heads, v["quant"]) \
            if planner_shape else 1
    dims = (w.dtype, w.head_dim, w.group, v["quant"], v["tok"])
    if v["warps"] is None:
        return dp.tc_config(*dims, impl=v["impl"], kv_fuse=fuse, **mma)
    return dp.tc_config(*dims, warps=v["warps"], tile_t=v["tile_t"], stages=v["stages"],
                        d_split=v["d_split"], min_blocks=v["min_blocks"],
                        warp_pipe=v["warp_pipe"], impl=v["impl"], kv_fuse=fuse, **mma)


def compile_all(workloads, names_of):
    """Compile every variant's kernel (NVRTC) in threads; returns the failures by name."""
    jobs = {(w.head_dim, w.group, n): config(w, n) for w in workloads for n in names_of(w)}

    def build(cfg):
        try:
            load_kernel(cfg.source, cfg.function, cfg.options).gpu.compile()
            return None
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc)[-400:]}"
    with ThreadPoolExecutor(max_workers=12) as pool:
        return {k: r for k, r in zip(jobs, pool.map(build, jobs.values())) if r}


def plan(inp, w, name):
    split = V[name]["split"]
    if split is None:   # the planner's own split and kernel
        return plan_with(inp, w, name)
    if split in dw.TC_SCHEMES:   # ... with its work cut that way (items: the planner's rule)
        return plan_with(inp, w, name, split)
    if isinstance(split, str) and split[0] == "r":   # balanced ranges, that many per slot
        saved = dw.TC_RANGES_PER_SLOT
        dw.TC_RANGES_PER_SLOT = float(split[1:])
        try:
            return plan_with(inp, w, name, "balanced")
        finally:
            dw.TC_RANGES_PER_SLOT = saved
    saved = dp.TC_BLOCKS_PER_SM, dp.TC_AUTO_MAX_PARTS, dp.TC_WAVES
    waves = int(split[1:]) if isinstance(split, str) else None
    dp.TC_BLOCKS_PER_SM = 4 if waves else split
    dp.TC_AUTO_MAX_PARTS = 128 if waves or split >= 8 else saved[1]
    dp.TC_WAVES = waves
    try:
        return plan_with(inp, w, name, "items")
    finally:
        dp.TC_BLOCKS_PER_SM, dp.TC_AUTO_MAX_PARTS, dp.TC_WAVES = saved


def plan_with(inp, w, name, scheme=None):
    p = BatchDecodeWrapper().plan(inp["block_tables"], inp["seq_lens"], w.num_heads,
                                  w.num_kv_heads, w.head_dim, w.page_size, w.dtype,
                                  kernel="simt")
    p.kernel, p._launches = "tensor_core", []
    p._plan_tensor_core(cp.asnumpy(inp["seq_lens"]), None, tc=config(w, name), scheme=scheme)
    return p


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


class Say:
    """say(line, **row): print the line with the seconds since the start; a row also goes to
    the JSON file `json_path` (a dict with "rows", not "results": viz.load_bench_results leaves
    it out). The exploration scripts' one logger."""

    def __init__(self, json_path: str | None, kind: str):
        self.start, self.rows, self.json_path, self.kind = time.time(), [], json_path, kind

    def elapsed(self) -> float:
        return time.time() - self.start

    def __call__(self, line: str, **row) -> None:
        print(f"[{self.elapsed():5.1f}s] {line}", flush=True)
        if row:
            self.rows.append(row)
            if self.json_path:
                Path(self.json_path).write_text(json.dumps(
                    {"kind": self.kind, "rows": self.rows}, indent=1))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--final", action="store_true",
                   help="the planner's choices (FINAL) instead of the tuning variants")
    p.add_argument("--balanced", action="store_true",
                   help="balanced ranges against one item per block (BALANCED)")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--json", default=None)
    p.add_argument("--no-flashinfer", action="store_true")
    p.add_argument("--no-quant", action="store_true")
    p.add_argument("--no-host", action="store_true")
    p.add_argument("--fi-dims", default="128")
    args = p.parse_args(argv)
    say = Say(args.json, "decode-tc-explore")

    fi = None if args.no_flashinfer else FlashInfer([int(d) for d in args.fi_dims.split(",")])
    by_name = {w.name: w for w in decode_workloads()}
    rows = FINAL if args.final else BALANCED if args.balanced else ROWS
    if rows is not ROWS and args.rows == ",".join(ROWS):
        args.rows = ",".join(rows)
    workloads = [by_name[n] for n in args.rows.split(",")]
    names_of = lambda w: [n for n in rows[w.name] if not (args.no_quant and V[n]["quant"])]  # noqa
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
            quant, per_token = V[name]["quant"], V[name]["tok"]
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
                say(f"{w.name:<14} {name:<22} {t:7.3f} ms {pct:6.1f}% copy  x{t / t_ref:5.2f} "
                    f"{pl.scheme[:3]} part {pl.part_len:5d} x{pl.max_parts:<3d} grid {pl.grid} "
                    f"smem {cfg.shared // 1024} KB err {err:.1e}",
                    kind="variant", workload=w.name, variant=name, ms=t, pct_copy=pct,
                    part_len=pl.part_len, grid=list(pl.grid), shared=cfg.shared, err=err,
                    bytes=nbytes, scheme=pl.scheme)
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
        fi.thread.join(timeout=max(0.0, 55 - say.elapsed()))
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
        # where the host time goes: the table copy alone, and a profile of the calls
        tables = inp["block_tables"]
        copy_ms = host_time(cp, lambda: (tables.get(), inp["seq_lens"].get()), calls=30) * 1e3
        say(f"one-shot {w.name}: the two device-to-host copies alone {copy_ms:.3f} ms per call")
        import cProfile
        import io
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            paged_attention_decode(*args, scale, out=out)
        cp.cuda.Device().synchronize()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(14)
        print(text.getvalue()[-3500:], flush=True)
        del inp, args
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
