"""decode_mma.cu's merge after the tile loop (tc_config's merge_after_loop, the MQA 16/1
planner's: a split sequence's last block merges it with every load in flight) and the
automatic items plan (equal-tile parts, snake order) once each at a small size on the GPU,
for compute-sanitizer (memcheck, racecheck, synccheck):

    compute-sanitizer --tool racecheck --error-exitcode 9 python3 benchmarks/sanitize_mqa.py [--all]

sanitize_tc.py's run_case: every array its own cudaMalloc, outputs poisoned with NaN, two
launches (the merge counters reset), each result checked against the float64 reference
(exit status 1 on a mismatch). Run from the repository root.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sanitize_tc import run_case  # noqa: E402 - benchmarks/ is the script's folder

MQA_LENS = [900, 17, 1, 300, 640, 2000]
CASES = [   # name, lens, page, heads, kv, head_dim, splits, shape, kv_dtype, scheme, ranges
    ("mma MQA16 planner (merge after the loop, equal items, snake)", MQA_LENS, 16, 16, 1, 128,
     None, {}),
    ("mma MQA16 merge in the loop", MQA_LENS, 16, 16, 1, 128, None, {"merge_after_loop": False}),
    ("mma MQA16 balanced 9 ranges", [900, 17, 1], 16, 16, 1, 128, None, {}, None, None, 9),
    ("mma MQA16 page 7 split 12", [900, 17, 1], 7, 16, 1, 128, 12, {}),
    # the MQA cases above alone unless --all: the shapes below are the CPU tests' (the merge
    # after the loop is the MQA 16/1 shape's only)
    ("mma GQA4 W4 warp pipelines S3 merge after the loop split 3", [300, 17, 1], 7, 8, 2, 128,
     3, {"warps": 4, "tile_t": 64, "stages": 3, "warp_pipe": True, "impl": "mma",
         "merge_after_loop": True}),
    ("mma group 40 d64 merge after the loop split 2", [90, 5], 16, 40, 1, 64, 2,
     {"impl": "mma", "merge_after_loop": True}),
    ("mma GQA4 d256 pairs merge after the loop split 2", [120, 5], 16, 8, 2, 256, 2,
     {"impl": "mma", "merge_after_loop": True}),
]


def main():
    rng = np.random.default_rng(12)
    cases = CASES if sys.argv[1:] == ["--all"] else CASES[:4]
    ok = all([run_case(rng, *c) for c in cases])
    print("all results match the reference" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
