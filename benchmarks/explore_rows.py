"""kernels/decode_mma_rows.cu (tokens as the rows of the tile) against decode_mma.cu (heads as
rows), the SIMT kernel (over codes too) and FlashInfer's tensor-core decode, in one process
on the GPU: explore.py's machinery with this comparison's rows (tuning runs; NOTES.md).

    python3 benchmarks/explore_rows.py [--final | --balanced | --small]
                                       [--rows D64-gqa4,...] [--reps 15] [--json out.json]

ROWS: the tuning sweep of round r5; --final (FINAL): the planner's choice against v4's shapes,
SIMT and FlashInfer; --balanced (BALANCED, round r7): both PTX kernels on balanced ranges and
on one item per block, fp16 and codes, SIMT over codes and FlashInfer; --small (SMALL,
session 8): codes in small tiles on balanced ranges against the planner's (--bulk, bulk
copies of K/V rows, is in commit 0500878 only: measured slower, removed).

Variants: "planner" (what plan picks), "R"/"M" + "bal"/"items" (decode_mma_rows.cu /
decode_mma.cu in the planner's shape for that kernel, on balanced ranges or items), "R ..."
shapes of decode_mma_rows.cu (W warps, P warp pipelines, T tile tokens, S stages, D d_split,
q0: Q^T reloaded per tile, mb min blocks; "/bal": on balanced ranges), with
"fp8"/"int8" codes and "/tok" per-token scales, and "simt fp8..." the SIMT kernel
(kernels/decode.cu) over the same codes. Every compressed variant is compared with the first
variant run on the dequantized cache (err column)."""
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

import explore as ex  # noqa: E402
from pagedattn_lab.wrappers import BatchDecodeWrapper  # noqa: E402

QUANTS = [(qname, q, tok) for qname, q in (("fp8", 2), ("int8", 1)) for tok in (False, True)]
V = ex.V


def rshape(warps, tile, stages, d_split=1, mb=1, split=4, quant=0, tok=False, pipe=False, **kw):
    return ex.shape(warps, tile, stages, d_split, mb, split, quant, tok, pipe, impl="rows", **kw)


R_FP16 = {   # D128 fp16: 68 KB per block at T64 S2, 100 KB at T64 S3, 132 KB at T128 S2
    "R W4 T64 S2": rshape(4, 64, 2),            # one m tile (16 tokens) per warp and tile
    "R W4 T64 S3": rshape(4, 64, 3),
    "R W4P T64 S3": rshape(4, 64, 3, pipe=True),
    "R W2 T64 S3": rshape(2, 64, 3),            # two m tiles per warp and tile
    "R W4 T128": rshape(4, 128, 2),
    "R W8 T128": rshape(8, 128, 2),
    "R W4 T64 mb3": rshape(4, 64, 2, mb=3),
    "R W4 T64 S3 C2": rshape(4, 64, 3, s_chains=2),   # two accumulator chains for S^T
    "R W4 T64 S3/b8": rshape(4, 64, 3, split=8),
    "R W4P T64 S3/b8": rshape(4, 64, 3, pipe=True, split=8),
}
R_QUANT_SHAPES = {   # codes at head_dim 128: 168-178 registers, 128 (no spill) with mb4 at T64
    "W4T128S2": (4, 128, 2, 1, False), "W4T128S2mb3": (4, 128, 2, 3, False),
    "W4T64S3mb4": (4, 64, 3, 4, False), "W4PT128S3": (4, 128, 3, 1, True),
    "W8T128S2mb2": (8, 128, 2, 2, False)}
V.update(R_FP16)
for qname, q, tok in QUANTS:
    t_ = "/tok" if tok else ""
    for tag, (w_, t, st, mb, pp) in R_QUANT_SHAPES.items():
        V[f"R {qname}{t_} {tag}"] = rshape(w_, t, st, mb=mb, quant=q, tok=tok, pipe=pp)
    V[f"simt {qname}{t_}"] = {**V["planner"], "quant": q, "tok": tok, "simt": True}
    for tag in ("W4T128S2mb3", "W4T64S3mb4"):   # partitions for 8 blocks per SM
        V[f"R {qname}{t_} {tag}/b8"] = {**V[f"R {qname}{t_} {tag}"], "split": 8}
    V[f"R {qname}{t_} W4T64S3mb4 C2"] = rshape(4, 64, 3, mb=4, quant=q, tok=tok, s_chains=2)
V["R d256 W2T32"] = rshape(2, 32, 2)          # 64 KB: 3 blocks per SM
V["R d256 W2T32S3"] = rshape(2, 32, 3)
V["R d256 W4D2T32"] = rshape(4, 32, 2, 2)      # pairs share 16 tokens, half of O^T each
V["R d256 W4T64"] = rshape(4, 64, 2)           # 136 KB: one block
V["R mqa W8D2T128"] = rshape(8, 128, 2, 2, 2)
for base in ("R W4 T128", "R W4 T64 S3", "R W4 T64 S2", "R W8 T128", "R mqa W8D2T128"):
    V[f"{base}/w1"] = {**V[base], "split": "w1"}

QROWS = (ex.PLANNER_QUANT
         + [f"R {q}{'/tok' if tok else ''} {tag}" for q, _, tok in QUANTS for tag in R_QUANT_SHAPES]
         + [f"R {q} {tag}/b8" for q in ("fp8", "int8") for tag in ("W4T128S2mb3", "W4T64S3mb4")]
         + [f"R {q} W4T64S3mb4 C2" for q in ("fp8", "int8")]
         + [f"simt {q}{'/tok' if tok else ''}" for q, _, tok in QUANTS])
FP16 = ["planner"] + list(R_FP16)
ROWS = {
    "D64-gqa4": FP16 + QROWS,
    "D64-gqa8": FP16[:7],
    "D64-gqa8-p64": FP16[:7],
    "1x32k-gqa4": ["planner", "M W4/w1", "R W4 T128/w1", "R W4 T64 S3/w1", "R W4 T64 S2/w1",
                   "R W8 T128/w1"],
    "8x32k-gqa4": ["planner", "M W4 S3", "R W4 T64 S2", "R W4 T64 S3", "R W4P T64 S3",
                   "R W4 T128", "planner fp8", "R fp8 W4T128S2mb3", "R fp8 W4T64S3mb4",
                   "simt fp8"],
    "D64-gqa4-d256": ["planner", "M d256 W4D2T32", "R d256 W2T32", "R d256 W2T32S3",
                      "R d256 W4D2T32", "R d256 W4T64"],
    "D64-mqa16": ["planner", "M W8D2 S3/w1", "R W4 T128/w1", "R W8 T128/w1",
                  "R W4 T64 S2/w1", "R mqa W8D2T128/w1"],
}

FINAL = {   # --final: the planner (now "rows" where ROWS_AUTO says) against v4 and SIMT
    "D64-gqa4": ["planner", "M W4P S3/b8", "R W4 T64 S2", "R W4 T64 S3 C2"] + ex.PLANNER_QUANT
    + [f"M {q}{'/tok' if tok else ''} W4T128S2" for q, _, tok in QUANTS]
    + [f"R {q} {tag}" for q in ("fp8", "int8")
       for tag in ("W4T128S2mb3/b8", "W4T64S3mb4/b8", "W4T64S3mb4 C2")]
    + [f"simt {q}{'/tok' if tok else ''}" for q, _, tok in QUANTS],
    "D64-gqa8": ["planner", "M W4P S3/b8", "R W4 T64 S2"],
    "D64-gqa8-p64": ["planner", "M W4P S3/b8", "R W4 T64 S2"],
    "D64-mqa16": ["planner"],
    "1x32k-gqa4": ["planner", "M W4/w1"],
    "8x32k-gqa4": ["planner", "M W4 S3", "planner fp8", "simt fp8"],
    "D64-gqa4-d256": ["planner", "M d256 W4D2T32"],
}

# --balanced: each PTX kernel in its planner shape on either work scheme
for impl, tag in (("rows", "R"), ("mma", "M")):
    for q_, qname, tok in [(0, "", False)] + [(q, f"{n} ", t) for n, q, t in QUANTS]:
        t_ = "/tok " if tok else ""
        qn = f"{qname.strip()}{t_.rstrip()} " if q_ else ""
        for scheme, stag in (("balanced", "bal"), ("items", "items")):
            V[f"{tag} {qn}{stag}"] = {**ex.shape(None, None, None, impl=impl), "split": scheme,
                                      "quant": q_, "tok": tok}
# head sizes 80 / 96 (session 6): more tiles in flight per SM in the same shared memory, since
# T64 S2 keeps one 20-24 KB tile per block in flight (3 blocks: 60-72 KB per SM, 93% of copy
# at 128 with 96 KB): smaller tiles, more stages
V["R W2 T32 S4"] = rshape(2, 32, 4)
V["R W2 T32 S5"] = rshape(2, 32, 5)
V["R W4 T32 S4 D2"] = rshape(4, 32, 4, 2)
V["R W4 T32 S5 D2"] = rshape(4, 32, 5, 2)
for base in ("R W4 T64 S2", "R W4 T64 S3", "R W4 T64 S3 C2", "R d256 W2T32S3",
             "R W2 T32 S4", "R W2 T32 S5", "R W4 T32 S4 D2", "R W4 T32 S5 D2", "R W4P T64 S3",
             "R fp8 W4T128S2", "R fp8 W4PT128S3", "R fp8 W4T128S2mb3"):
    V[f"{base}/bal"] = {**V[base], "split": "balanced"}
for base in ("R bal", "M bal", "R items", "R W4P T64 S3/bal", "R W4 T64 S3/bal"):
    for tag, l1 in (("l1", True), ("cg", False)):   # K/V copies through L1 / the L2 only
        V[f"{base} {tag}"] = {**V[base], "mma": {**V[base]["mma"], "copy_l1": l1, "kv_fuse": 1}}
# two KV heads per block (head_dim 96: 192-dim fused heads of 8 query heads, whole lines)
for w_, t_, s_, d_, mb in ((8, 64, 2, 2, 1), (4, 64, 2, 1, 1), (4, 32, 3, 2, 1), (8, 64, 3, 2, 1),
                          (8, 32, 3, 2, 1), (8, 64, 2, 2, 2), (4, 64, 2, 1, 2), (4, 64, 2, 2, 2),
                          (4, 32, 2, 2, 3)):
    V[f"R fuse W{w_} T{t_} S{s_} D{d_}{f' mb{mb}' if mb > 1 else ''}/bal"] = {
        **rshape(w_, t_, s_, d_, mb), "split": "balanced", "mma": {"kv_fuse": 2}}
# session 8: codes in tiles of 64 tokens (4 warps) or 32 (2 warps), now that a warp's O takes
# its heads' rows only (4 in the head pairs' layout, not 16) and fits a small stage buffer:
# more blocks and more tiles in flight per SM (issue 12's latency-bound fp8 kernel)
SMALL_TILES = {   # warps per SM x tokens in flight per SM, static scales (planner: 12 x 384)
    "W4T64S3mb4": (4, 64, 3, 4),     # 16 x 512
    "W4T64S4mb3": (4, 64, 4, 3),     # 12 x 576
    "W4T64S3mb3": (4, 64, 3, 3),     # 12 x 384 (the planner's, in smaller tiles)
    "W4T64S2mb4": (4, 64, 2, 4),     # 16 x 256
    "W8T128S2mb2": (8, 128, 2, 2),   # 16 x 256
    "W8T128S3mb2": (8, 128, 3, 2),   # 16 x 512
    "W2T32S4mb8": (2, 32, 4, 8)}     # 12 x 576 (6 blocks)
for qname, q, tok in QUANTS:
    for tag, (w_, t, st, mb) in SMALL_TILES.items():
        V[f"R {qname}{'/tok' if tok else ''} {tag}/bal"] = {
            **rshape(w_, t, st, mb=mb, quant=q, tok=tok), "split": "balanced"}
SMALL = {"D64-gqa4": ["planner", "planner fp8", "planner int8"]
         + [f"R {q} {tag}/bal" for q in ("fp8", "int8") for tag in SMALL_TILES]
         + ["planner fp8/tok"] + [f"R fp8/tok {tag}/bal" for tag in list(SMALL_TILES)[:4]]
         + ["planner fp8", "planner"],   # again: the run's spread; fp16 last
         "8x32k-gqa4": ["planner", "planner fp8"] + [f"R fp8 {tag}/bal" for tag in SMALL_TILES]}
CODES = [f"{tag} {q}{'/tok' if tok else ''} {s_}" for q, _, tok in QUANTS
         for tag in ("R", "M") for s_ in ("bal", "items")]
BALANCED = {   # the first variant is the err column's reference
    "D64-gqa4": ["M items", "M bal", "R bal", "R items", "R W4 T64 S2/bal", "R W4 T64 S3/bal",
                 "R W4 T64 S3 C2/bal"] + CODES
    + ["R fp8 W4T128S2/bal", "R fp8 W4PT128S3/bal"]
    + [f"simt {q}{'/tok' if tok else ''}" for q, _, tok in QUANTS],
    "D64-gqa8": ["M items", "M bal", "R bal", "R items"],
    "D64-gqa8-p64": ["M items", "M bal", "R bal", "R items"],
    "D64-gqa4-d256": ["M items", "M bal", "R bal", "R items", "R d256 W2T32S3/bal"],
    "8x32k-gqa4": ["M items", "R items", "R bal", "M fp8 items", "R fp8 items", "R fp8 bal",
                   "simt fp8"],
    "1x32k-gqa4": ["M items", "R items"],
    # head sizes 80 / 96 (issue 10's copy target at 96; NOTES.md "Lines and fused KV heads
    # (session 7)"): at 80 the plan's rows shape copying through L1 ("planner", "R bal l1") against
    # through the L2 only ("R bal cg"), and a shape with more shared memory per SM (less L1);
    # at 96 the same, and two KV heads per block (fused: "R fuse ...", KV_FUSE_AUTO off)
    "D64-gqa4-d80": ["planner", "R bal cg", "R bal l1", "M bal", "R W4 T64 S3/bal l1",
                     "R items l1", "R items cg"],
    "D64-gqa4-d96": ["planner", "R bal l1", "R bal cg", "M bal", "R fuse W8 T64 S2 D2/bal",
                     "R fuse W4 T64 S2 D1/bal", "R fuse W4 T32 S3 D2/bal",
                     "R fuse W8 T64 S3 D2/bal", "R fuse W8 T32 S3 D2/bal", "R items l1",
                     "R fuse W8 T64 S2 D2 mb2/bal", "R fuse W4 T64 S2 D1 mb2/bal",
                     "R fuse W4 T64 S2 D2 mb2/bal", "R fuse W4 T32 S2 D2 mb3/bal"],
}

_plan_with = ex.plan_with


def plan_with(inp, w, name, scheme=None):
    """The SIMT variants: the planner's SIMT kernel reading the codes; the rest: explore's."""
    v = V[name]
    if not v.get("simt"):
        return _plan_with(inp, w, name, scheme)
    p = BatchDecodeWrapper().plan(
        inp["block_tables"], inp["seq_lens"], w.num_heads, w.num_kv_heads, w.head_dim,
        w.page_size, w.dtype, kernel="simt", kv_dtype="int8" if v["quant"] == 1 else "fp8_e4m3",
        scale_scheme="per_token" if v["tok"] else "static")
    p.tc_config = SimpleNamespace(shared=p._launches[0][4])   # the line's smem column
    p.scheme = "simt"
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    rows = (FINAL if "--final" in argv else BALANCED if "--balanced" in argv
            else SMALL if "--small" in argv else ROWS)
    ex.plan_with = plan_with
    ex.FINAL = rows
    real_compile = ex.compile_all
    # SIMT variants have no tc_config to precompile
    ex.compile_all = lambda workloads, names_of: real_compile(
        workloads, lambda w: [n for n in names_of(w) if not V[n].get("simt")])
    if "--rows" not in argv:
        argv += ["--rows", ",".join(rows)]
    ex.main(["--final", "--no-host", "--fi-dims", "128,256"]
            + [a for a in argv if a not in ("--final", "--balanced", "--small")])


if __name__ == "__main__":
    main()
