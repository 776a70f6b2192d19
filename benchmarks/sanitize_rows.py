"""kernels/decode_mma_rows.cu (tokens as the rows of the tile) once per shape and cache format
at a small size on the GPU, for compute-sanitizer (memcheck, racecheck, synccheck):

    compute-sanitizer --tool racecheck --error-exitcode 9 \
        python3 benchmarks/sanitize_rows.py [--balanced | --qk8]

sanitize_tc.py's harness (each array its own cudaMalloc, outputs poisoned with NaN, launched
twice so the merge counters must reset, checked against the float64 reference; exit status 1
on a mismatch). --balanced: only the balanced-range cases (segments across sequences: one-token
sequences in a row, ranges ending mid-page, more ranges than tiles), the fused KV heads, small
tiles of codes, the merge after the tile loop and in it. Run from the repository root. --qk8:
only the cases of S on 8-bit tensor cores from the K codes (-DQK_MMA8) and of its head pairs'
layout alone (-DHEAD_PAIRS).
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sanitize_tc import run_case  # noqa: E402 - benchmarks/ is the script's folder


def main():
    rng = np.random.default_rng(12)
    rows = {"impl": "rows"}
    cases = [   # name, lens, page, heads, kv, head_dim, splits, shape, kv_dtype, scheme
        ("rows default GQA4 d128 split 3", [300, 17, 1], 16, 8, 2, 128, 3, rows),
        ("rows MQA16 (two n tiles) d128 auto split", [900, 17, 1], 16, 16, 1, 128, None, rows),
        ("rows GQA4 d256 page 7 split 2", [120, 5], 7, 8, 2, 256, 2, rows),
        ("rows GQA4 d96 page 7 split 3", [300, 17, 1], 7, 8, 2, 96, 3, rows),
        ("rows short items W4P S3 GQA8 d80 split 2", [200, 9], 16, 16, 2, 80, 2,
         {**rows, "warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True}),
        ("rows W4 warp pipelines S3 GQA8 d128 page 7", [300, 17, 1], 7, 16, 2, 128, 3,
         {**rows, "warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True}),
        ("rows W8D2 T128 GQA4 d128 split 2", [300, 9], 16, 8, 2, 128, 2,
         {**rows, "warps": 8, "tile_t": 128, "stages": 2, "d_split": 2}),
        ("rows W2 T64 (two m tiles) MHA d64", [200, 9], 16, 4, 4, 64, 2,
         {**rows, "warps": 2, "tile_t": 64, "stages": 3}),
        ("rows heads on x GQA4 d64 page 7 split 3", [300, 17, 1], 7, 8, 2, 64, 3,
         {**rows, "heads_on_x": True}),
    ]
    for kv_dtype in ("int8", "fp8_e4m3"):
        for scheme in ("static", "per_token"):
            cases.append((f"rows {kv_dtype} {scheme} GQA4 d128 planner shape page 7 split 3",
                          [300, 17, 1], 7, 8, 2, 128, 3, rows, kv_dtype, scheme))
            cases.append((f"rows {kv_dtype} {scheme} MQA16 d256 W4P S3 split 2", [120, 5], 16,
                          16, 1, 256, 2, {**rows, "warps": 4, "tile_t": 64, "stages": 3,
                                          "warp_pipe": True}, kv_dtype, scheme))
    ones = [1] * 9 + [50, 1, 1, 1, 30]   # one-tile segments in a row: Q buffers rotate
    bal = [   # ... the same with balanced ranges (the last field: how many), planner's first
        ("rows balanced planner GQA4 d128 7 ranges", [300, 17, 1, 1, 1, 64, 129], 16, 8, 2,
         128, None, rows, None, None, 7),
        ("rows balanced fp8_e4m3 static planner shape d128 page 7", [300, 17, 1, 129, 1], 7, 8,
         2, 128, None, rows, "fp8_e4m3", "static", 4),
        ("rows balanced GQA4 d256 pairs 4 ranges page 7", [120, 5, 33], 7, 8, 2, 256, None, rows,
         None, None, 4),
        ("rows balanced W4 S3 block pipeline GQA4 d128 page 7", [300, 17, 1, 64, 129], 7, 8, 2,
         128, None, {**rows, "warps": 4, "tile_t": 64, "stages": 3}, None, None, 5),
        ("rows balanced int8 per_token planner shape d128 page 7", [300, 17, 1, 129, 1], 7, 8,
         2, 128, None, rows, "int8", "per_token", 4),
        ("rows balanced group 16 (two n tiles) d128 9 ranges", [900, 17, 1], 16, 16, 1, 128,
         None, rows, None, None, 9),
        ("rows balanced W1 T16 S3 one-token sequences d64", ones, 16, 8, 2, 64, None,
         {**rows, "warps": 1, "tile_t": 16, "stages": 3}, None, None, 4),
        ("rows balanced W2P T32 S4 one-token sequences d64", ones, 16, 8, 2, 64, None,
         {**rows, "warps": 2, "tile_t": 32, "stages": 4, "warp_pipe": True}, None, None, 3),
        ("rows balanced fp8 per-token d256 W4P S3", [120, 5, 1, 64], 16, 8, 2, 256, None,
         {**rows, "warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True}, "fp8_e4m3",
         "per_token", 3),
        ("rows balanced more ranges than tiles d128", [300, 1, 70], 16, 8, 2, 128, None, rows,
         None, None, 100),
        ("rows balanced planner GQA4 d80 page 7", [300, 17, 1, 129, 1], 7, 8, 2, 80, None, rows,
         None, None, 5),
        ("rows balanced planner GQA4 d96 6 ranges", [300, 17, 1, 64, 129], 16, 8, 2, 96, None,
         rows, None, None, 6),
        ("rows fused KV heads GQA4 d96 page 7 split 3", [300, 17, 1], 7, 8, 2, 96, 3,
         {**rows, "kv_fuse": 2}),
        ("rows fused KV heads balanced GQA2 d96 5 ranges", [300, 17, 1, 64, 129], 16, 8, 4, 96,
         None, {**rows, "kv_fuse": 2}, None, None, 5),
        # small tiles of codes (the warps' O in a 16 KB / 8 KB stage buffer: head pairs' rows)
        ("rows balanced fp8_e4m3 static W4 T64 S3 mb4 page 7", [300, 17, 1, 129, 1], 7, 8, 2,
         128, None, {**rows, "warps": 4, "tile_t": 64, "stages": 3, "min_blocks": 4},
         "fp8_e4m3", "static", 5),
        ("rows balanced int8 per_token W2 T32 S4 GQA3", [300, 17, 1, 64, 33], 16, 6, 2, 128, None,
         {**rows, "warps": 2, "tile_t": 32, "stages": 4}, "int8", "per_token", 4),
        # the split sequences' last block merging after its tile loop, and in it
        ("rows balanced merge after the loop GQA8 d128 page 7", [300, 17, 1, 129, 1], 7, 16, 2,
         128, None, {**rows, "merge_after_loop": True}, None, None, 5),
        ("rows balanced merge after the loop fp8_e4m3 static", [300, 17, 1, 129, 1], 16, 8, 2,
         128, None, {**rows, "merge_after_loop": True}, "fp8_e4m3", "static", 4),
        ("rows merge after the loop fused d96 split 3", [300, 17, 1], 7, 8, 2, 96, 3,
         {**rows, "kv_fuse": 2, "merge_after_loop": True}),
        ("rows balanced merge in the loop GQA4 d128", [300, 17, 1, 129, 1], 16, 8, 2, 128, None,
         {**rows, "merge_after_loop": False}, None, None, 4),
    ]
    qk8 = {**rows, "qk_mma8": True}
    qk8_cases = [   # groups up to 4; items and balanced ranges
        ("rows qk8 int8 static GQA4 d128 page 7 split 3", [300, 17, 1], 7, 8, 2, 128, 3, qk8,
         "int8", "static"),
        ("rows qk8 fp8_e4m3 per_token GQA4 d128 split 2", [300, 17, 1], 16, 8, 2, 128, 2, qk8,
         "fp8_e4m3", "per_token"),
        ("rows qk8 int8 per_token GQA2 W4P S3 two chains", [200, 9, 64], 7, 4, 2, 128, 2,
         {**qk8, "warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True, "s_chains": 2},
         "int8", "per_token"),
        ("rows balanced qk8 int8 static planner shape page 7", [300, 17, 1, 129, 1], 7, 8, 2,
         128, None, qk8, "int8", "static", 4),
        ("rows balanced qk8 fp8_e4m3 static planner shape", [300, 17, 1, 129, 1], 16, 8, 2,
         128, None, qk8, "fp8_e4m3", "static", 5),
        ("rows balanced head pairs fp8_e4m3 static planner shape page 7", [300, 17, 1, 129, 1],
         7, 8, 2, 128, None, {**rows, "head_pairs": True}, "fp8_e4m3", "static", 4),
        ("rows head pairs fp8_e4m3 per_token GQA3 split 2", [200, 9, 1], 16, 6, 2, 128, 2,
         {**rows, "head_pairs": True}, "fp8_e4m3", "per_token"),
    ]
    todo = {"--balanced": bal, "--qk8": qk8_cases}.get(" ".join(sys.argv[1:]),
                                                       cases + bal + qk8_cases)
    ok = all([run_case(rng, *c) for c in todo])
    print("all results match the reference" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
