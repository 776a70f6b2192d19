"""The figures the charts fall back on when no bench JSON is at hand: timings recorded on an
H100 while the course was written, in the shape of a `python -m pagedattn_lab.bench` file."""
from __future__ import annotations


def recorded_figures() -> dict:
    """H100 timings recorded 2026-11-26 while the course was written (not by the bench), in
    the shape of a `python -m pagedattn_lab.bench` JSON file, with that session's own copy
    rate (2.99 TB/s, bytes read + written).

    Decode workload "D64": 64 sequences, lengths uniform in [512, 4096] (seed 0, 149,713
    tokens), 32 heads, head_dim 128, fp16, page size 16: 2.45 GB of K and V. Prefill workload
    "prefill-small": batch 4, 512 tokens, 8 heads, head_dim 64, fp32: a direct port of the
    guide's naive kernel (one thread per query, a 128-float local array), and the course's
    naive and tiled kernels.
    """
    d64 = "64 seqs, 149713 tokens, 32/32 heads, d128, page {}, float16"
    decode = [
        ("torch SDPA, dense padded cache", 16, 1.41),
        ("torch gather pages + SDPA", 16, 3.93),
        ("FlexAttention paged", 16, 1.19),
        ("FlexAttention paged", 64, 0.98),
        ("FlexAttention paged", 128, 0.99),
    ]
    rows = [{"kernel": f"{name}, page {page}", "workload": "D64", "kind": "decode", "ms": ms,
             "bytes": 2.45e9, "shape": d64.format(page)} for name, page, ms in decode]
    prefill = "4 x 512 tokens, 8 heads, d64, causal, float32"
    # The guide's kernel ported directly, then the course's own prefill kernels on the same
    # workload and GPU (CUDA events, median of 10 after 2 warm-up calls), 2026-11-26.
    rows += [{"kernel": kernel, "workload": "prefill-small", "kind": "prefill", "ms": ms,
              "shape": prefill}
             for kernel, ms in (("guide's naive kernel (direct port)", 3.28),
                                ("course naive kernel (prefill_naive.cu)", 3.513),
                                ("course tiled kernel (prefill_tiled.cu)", 0.313))]
    return {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-26",
            "source": "recorded while writing the course (not this machine)",
            "copy_bandwidth_GBps": 2990.0, "results": rows}
