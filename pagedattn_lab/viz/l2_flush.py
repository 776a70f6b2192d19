"""What the benchmark's L2 flush adds to a timing: the same kernels timed after three flushes.

A timer flushes the L2 before each repetition so that the timed kernel finds none of its inputs
cached. Writing a buffer larger than the L2 (as Triton's `do_bench` and NVBench do, and the
course's `Timer` by default) evicts the inputs, but leaves the L2 full of dirty lines (written
data not yet in memory). The L2 writes a dirty line to memory before it reuses its place, so
the timed kernel's reads share the memory with up to an L2's worth of writes. Reading a buffer
larger than the L2 evicts the inputs and leaves only clean lines, which are dropped for free.

The committed measurement (`benchmarks/results/2026-12-04_H200_session12_l2_flush_modes.json`,
H200, one process) timed each row twice after each flush: "write" (64 MB written), "write+read"
(the write, then 64 MB read) and "read" (the read alone). Its "ms" maps a row's name to
{flush: [times in ms]}; "copy" is the run's copy rate in bytes per second.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from ..bench.workloads import decode_workloads
from .bench_plots import RESULTS_DIR, load_results_json

FLUSH_MODES_FILE = "2026-12-04_H200_session12_l2_flush_modes.json"
FLUSHES = ("write", "write+read", "read")

_FORMATS = {"fp8_e4m3:": "fp8 ", "int8:": "int8 "}


def load_flush_modes(name: str = FLUSH_MODES_FILE, path=RESULTS_DIR) -> dict | None:
    """The flush comparison `name` under `path` (bench_plots.load_results_json)."""
    return load_results_json(name, path)


def row_label(name: str) -> str:
    """A row's name as a lesson shows it: a decode bench workload with its heads and head size
    ("D64-gqa4" -> "D64-gqa4 (32/8 heads, d128)"), a compressed row with its format first
    ("fp8_e4m3:D64 GQA 32/8" -> "fp8 D64 GQA 32/8"), any other name as it is."""
    for prefix, shown in _FORMATS.items():
        if name.startswith(prefix):
            return shown + name[len(prefix):]
    workload = next((w for w in decode_workloads() if w.name == name), None)
    if workload is None:
        return name
    return f"{name} ({workload.num_heads}/{workload.num_kv_heads} heads, d{workload.head_dim})"


def flush_rows(doc: dict) -> list[dict]:
    """One record per row, in the file's order: {"row", "write", "write+read", "read" (the
    best time after each flush, ms), "write_back_us" (write minus read, microseconds), "share"
    (that difference as a fraction of the read-flushed time)}."""
    out = []
    for name, times in doc["ms"].items():
        best = {flush: min(times[flush]) for flush in FLUSHES}
        cost_ms = best["write"] - best["read"]
        out.append({"row": row_label(name), **best, "write_back_us": cost_ms * 1e3,
                    "share": cost_ms / best["read"]})
    return out


def plot_flush_cost(doc: dict):
    """Two panels over the rows of `doc`: what the write flush adds to each timing in
    microseconds (left), and that as a share of the row's time with a read flush (right)."""
    rows = flush_rows(doc)
    labels = [f"{r['row']} ({r['read']:.3f} ms)" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.38 * len(rows) + 1.4), sharey=True)
    positions = range(len(rows))
    left.barh(positions, [r["write_back_us"] for r in rows], color="tab:red")
    left.set_yticks(list(positions), labels)
    left.invert_yaxis()
    left.set_xlabel("time added by the write flush (us)")
    left.set_title("about the same on every row", fontsize=10)
    right.barh(positions, [100 * r["share"] for r in rows], color="tab:orange")
    right.set_xlabel("as a share of the row's read-flushed time (%)")
    right.set_title("a large share of a short kernel", fontsize=10)
    fig.suptitle(f"Write flush minus read flush, same kernels, one process ({doc['source']})",
                 fontsize=10)
    fig.tight_layout()
    return fig
