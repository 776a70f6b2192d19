"""Launch a few tensor-core decode variants once each on D64 GQA 32/8, for Nsight Compute:

    ncu --kernel-name regex:paged_decode_ --launch-count 4 --section SpeedOfLight \
        --section SchedulerStats --section WarpStateStats python3 benchmarks/ncu_tc.py W4 "M W4P S3"

--workload NAME (first) takes another row of the bench than D64-gqa4 (e.g. D64-gqa4-d96).

Variant names are those of benchmarks/explore.py and explore_rows.py (paged_decode_tc: lesson
09's WMMA source; "M ...": paged_decode_mma; "R ...": paged_decode_mma_rows). Run from the
repository root.
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

import explore  # noqa: E402
import explore_rows  # noqa: E402,F401 - its variants ("R ...") join explore.V
from pagedattn_lab.bench.workloads import build_decode_inputs, decode_workloads  # noqa: E402


def main(names, workload="D64-gqa4"):
    w = {w.name: w for w in decode_workloads()}[workload]
    inp = build_decode_inputs(cp, w)
    q, k, v = inp["q"], inp["k_cache"], inp["v_cache"]
    for name in names:
        p = explore.plan(inp, w, name)
        quant, per_token = explore.V[name]["quant"], explore.V[name]["tok"]
        if quant:   # a variant over codes ("planner fp8", "R int8 bal"): quantized caches
            import torch
            kc, ks, _ = explore.quantize(torch, k, quant, per_token)
            vc, vs, _ = explore.quantize(torch, v, quant, per_token)
            explore.launch(p, q, kc, vc, cp.empty_like(q), 1 / math.sqrt(w.head_dim), ks, vs)
        else:
            explore.launch(p, q, k, v, cp.empty_like(q), 1 / math.sqrt(w.head_dim))
        cp.cuda.Device().synchronize()
        print(name, p.tc_config.options, flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    workload = "D64-gqa4"
    if args[:1] == ["--workload"]:
        workload, args = args[1], args[2:]
    main(args or ["W4", "W8D2"], workload)
