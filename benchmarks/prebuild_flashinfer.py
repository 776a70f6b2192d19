"""Compile every FlashInfer kernel the benchmarks will ask for, on tiny inputs, so that the
JIT builds (about a minute, CPU-bound) overlap the untimed GPU checks instead of the timed
benchmarks. `.ci/gpu_check.sh` runs this in the background during its test phase; the
benchmarks then find the modules in FlashInfer's cache.

    python3 benchmarks/prebuild_flashinfer.py     # prints one line per module group
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> int:
    try:
        import cupy as cp
        import numpy as np
        import torch

        from pagedattn_lab.bench import prefill, quant
        from pagedattn_lab.bench.flashinfer_baseline import import_flashinfer, prebuild
        from pagedattn_lab.bench.workloads import decode_workloads
        flashinfer = import_flashinfer()
    except Exception as exc:  # noqa: BLE001 - nothing to build; the benchmarks say why
        print(f"prebuild: FlashInfer not available: {type(exc).__name__}: {exc}")
        return 0
    t0 = time.perf_counter()
    # head_dim 80 and 96: FlashInfer 0.6.6's kernels fail there (an illegal address that takes
    # the CUDA context along), so those rows run in processes of their own and build there.
    decode = [w for w in decode_workloads() if w.head_dim not in (80, 96)]
    rng = np.random.default_rng(0)

    def prefill_module(head_dim):
        tiny = prefill.PrefillWorkload(f"tiny d{head_dim}", (40,), (40,), 2, 1, head_dim)
        try:
            prefill.flashinfer_prefill(cp, tiny, prefill.build(cp, tiny, rng))()
            return None
        except Exception as exc:  # noqa: BLE001 - the timed row reports it again
            return f"prefill d{head_dim}: {type(exc).__name__}: {exc}"[:300]

    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = {"decode": pool.submit(prebuild, flashinfer, torch, decode),
                "prefill": pool.submit(lambda: [e for e in map(prefill_module, (64, 128)) if e])}
        fp8 = quant.prebuild_flashinfer(cp, ["fp8_e4m3"], quant.workloads()[0].head_dim)
        for name, job in jobs.items():
            print(f"prebuild {name}: failures {job.result()}")
        for (kv_dtype, tensor_cores), job in fp8.items():
            print(f"prebuild {kv_dtype} decode (tensor cores {tensor_cores}): {job.result()}")
    torch.cuda.synchronize()
    print(f"prebuild: done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
