"""Benchmark charts: time bars against the memory-bandwidth floor, and a roofline.

Decode attention reads every cached key and value once and does about one floating-point
operation per byte read, so its speed limit is memory bandwidth, not arithmetic:

    floor time = bytes that must be read / bandwidth

The charts take records from `python -m pagedattn_lab.bench` (JSON files under
`benchmarks/results/`) or, with no GPU results at hand, `recorded_figures()`: measurements
taken on an H100 while the course was written (see the function for the source).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

# Measured on the lent H100 80 GB (HBM3), 2026-11-26: device-to-device copy, bytes read + written.
H100_COPY_BANDWIDTH = 2.99e12
# NVIDIA's datasheet figure for H100 SXM dense fp16/bf16 tensor-core math (no sparsity).
H100_FP16_TENSOR_FLOPS = 989e12

_TIME_KEYS = ("ms", "time_ms", "median_ms")
_LABEL_KEYS = ("label", "name", "kernel", "impl", "method")


def recorded_figures() -> dict:
    """H100 timings recorded 2026-11-26 (one run, see the course's ANCHORS notes), in the
    shape of a `python -m pagedattn_lab.bench` JSON file.

    Decode workload "D64": 64 sequences, lengths uniform in [512, 4096] (seed 0, 149,713
    tokens), 32 heads, head_dim 128, fp16, page size 16: 2.45 GB of K and V. Prefill workload
    "prefill-small": batch 4, 512 tokens, 8 heads, head_dim 64, fp32: a direct port of the
    guide's naive kernel (one thread per query, a 128-float local array), and the course's
    naive and tiled kernels.
    """
    kv_bytes = 2.45e9
    flops = 149_713 * 32 * 128 * 4  # q.k and p.v: 2 multiply-adds per element, per head
    decode = [
        ("floor at copy bandwidth", 0.82),
        ("torch SDPA, dense padded cache", 1.41),
        ("torch gather pages + SDPA", 3.93),
        ("FlexAttention paged, page 16", 1.19),
        ("FlexAttention paged, page 64", 0.98),
        ("FlexAttention paged, page 128", 0.99),
    ]
    prefill_flops = 4 * 4 * 8 * (512 * 513 // 2) * 64
    rows = [{"kernel": name, "workload": "D64", "kind": "decode", "ms": ms,
             "bytes": kv_bytes, "flops": flops} for name, ms in decode]
    rows.append({"kernel": "guide's naive kernel (direct port)", "workload": "prefill-small",
                 "kind": "prefill", "ms": 3.28, "flops": prefill_flops})
    # The course's own prefill kernels on the same workload and GPU (CUDA events, median of
    # 10 after 2 warm-up calls; notebook 04's timing cell), 2026-11-26.
    rows += [{"kernel": kernel, "workload": "prefill-small", "kind": "prefill", "ms": ms,
              "flops": prefill_flops}
             for kernel, ms in (("course naive kernel (prefill_naive.cu)", 3.513),
                                ("course tiled kernel (prefill_tiled.cu)", 0.313))]
    return {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-26",
            "source": "recorded while writing the course (not this machine)",
            "copy_bandwidth_GBps": H100_COPY_BANDWIDTH / 1e9, "results": rows}


# The committed results live beside the package in a checkout (the course installs itself
# editable), whatever folder a notebook runs from.
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def load_bench_results(path=RESULTS_DIR) -> list[dict]:
    """Every bench JSON file under `path` (a file or a folder), parsed; [] when there is none.

    A missing folder is not an error: a fresh checkout has no GPU results yet.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.json")) if path.is_dir() else []
    out = []
    for f in files:
        with open(f) as fh:
            data = json.load(fh)
        if isinstance(data, dict):
            data.setdefault("file", f.name)
        out.append(data)
    return out


def _first(row, keys):
    return next((row[k] for k in keys if row.get(k) is not None), None)


def records(data, *, kind: str | None = None, workload: str | None = None) -> list[dict]:
    """Flatten a bench document (or a list of rows) into uniform records:
    {"label", "kernel", "workload", "kind", "time_ms", "bytes", "flops"} (bytes and flops
    may be None). Rows with an error or no time are left out; `kind` ("decode"/"prefill")
    and `workload` (e.g. "D64") filter."""
    rows = data.get("results", []) if isinstance(data, dict) else list(data)
    out = []
    for row in rows:
        time = _first(row, _TIME_KEYS)
        if time is None or row.get("error"):
            continue
        time = float(time)
        if kind is not None and row.get("kind") != kind:
            continue
        if workload is not None and row.get("workload") != workload:
            continue
        nbytes = row.get("bytes")
        if nbytes is None and row.get("gbps"):
            nbytes = float(row["gbps"]) * 1e9 * time * 1e-3
        flops = row.get("flops")
        if flops is None and row.get("tflops"):
            flops = float(row["tflops"]) * 1e12 * time * 1e-3
        kernel = str(_first(row, _LABEL_KEYS) or "?")
        out.append({"label": kernel, "kernel": kernel, "workload": row.get("workload"),
                    "kind": row.get("kind"), "time_ms": time, "bytes": nbytes, "flops": flops})
    return out


def copy_bandwidth(data) -> float | None:
    """The document's measured copy bandwidth in bytes/s, if it has one."""
    if not isinstance(data, dict):
        return None
    if data.get("copy_bandwidth_GBps"):
        return float(data["copy_bandwidth_GBps"]) * 1e9
    return data.get("copy_bandwidth")


def describe(data) -> str:
    """"<gpu> (<date>)" for a bench document, for titles and printouts."""
    if not isinstance(data, dict):
        return "benchmark"
    where = data.get("gpu") or data.get("device") or "?"
    return f"{where} ({data.get('date', '?')})"


def plot_bench_bars(data, *, kind: str | None = None, workload: str | None = None,
                    bandwidth: float | None = None, title: str | None = None):
    """Horizontal bars of time (ms), fastest first, with the bandwidth floor as a line.

    data: a bench document ({"results": [...], "copy_bandwidth_GBps": ...}) or a list of rows
    with "kernel", "ms" and optionally "bytes" or "gbps". Each bar is annotated with its achieved
    bandwidth as a share of `bandwidth` (default: the document's copy bandwidth).
    """
    rows = sorted(records(data, kind=kind, workload=workload), key=lambda r: r["time_ms"])
    if not rows:
        raise ValueError(f"data: no timed results (kind={kind!r}, workload={workload!r})")
    bandwidth = bandwidth or copy_bandwidth(data)
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.42 * len(rows)))
    times = [r["time_ms"] for r in rows]
    colors = ["#999" if "floor" in r["label"] else "#2f7ed8" for r in rows]
    ax.barh(range(len(rows)), times, color=colors)
    for i, r in enumerate(rows):
        if workload is None and r["workload"]:
            r["label"] = f"{r['label']} [{r['workload']}]"
        note = f"{r['time_ms']:.3g} ms"
        if r["bytes"] and bandwidth:
            achieved = r["bytes"] / (r["time_ms"] * 1e-3)
            note += f"  ({achieved / 1e12:.2f} TB/s, {achieved / bandwidth:.0%})"
        ax.text(r["time_ms"], i, " " + note, va="center", fontsize=8)
    floors = {round(r["bytes"], -6) for r in rows if r["bytes"]}
    if bandwidth and len(floors) == 1:
        floor_ms = floors.pop() / bandwidth * 1e3
        ax.axvline(floor_ms, color="black", ls="--", lw=1, label=f"bandwidth floor {floor_ms:.2f} ms")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(times) * 1.45)
    ax.set_xlabel("time per call (ms, lower is better)")
    ax.set_title(title or f"{workload or kind or 'benchmark'} on {describe(data)}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_roofline(data, *, kind: str | None = None, workload: str | None = None,
                  bandwidth: float | None = None, peak_flops: float = H100_FP16_TENSOR_FLOPS,
                  title: str | None = None):
    """Roofline: attainable FLOP/s = min(peak_flops, intensity x bandwidth), log-log, with a
    point per record that has both "bytes" and "flops". Decode sits far left of the ridge:
    memory bound, so the only way to go faster is to read fewer bytes or read them faster."""
    rows = [r for r in records(data, kind=kind, workload=workload)
            if r["bytes"] and r["flops"] and "floor" not in r["label"]]
    bandwidth = bandwidth or copy_bandwidth(data) or H100_COPY_BANDWIDTH
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.logspace(-1, 4, 200)
    ax.loglog(x, np.minimum(peak_flops, x * bandwidth), color="black", lw=1.5, label="roofline")
    ridge = peak_flops / bandwidth
    ax.axvline(ridge, color="#999", ls=":", lw=1)
    ax.text(ridge * 1.1, peak_flops * 0.02, f"ridge: {ridge:.0f} FLOP/byte", fontsize=8, color="#555")
    for i, r in enumerate(rows):
        intensity = r["flops"] / r["bytes"]
        achieved = r["flops"] / (r["time_ms"] * 1e-3)
        label = r["label"] if workload else f"{r['label']} [{r['workload']}]"
        ax.loglog(intensity, achieved, "o", color=f"C{i % 10}", label=label, gid=f"point:{i}")
    ax.set_xlabel("arithmetic intensity (FLOP per byte read)")
    ax.set_ylabel("FLOP/s")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title or f"Roofline: {bandwidth / 1e12:.2f} TB/s, {peak_flops / 1e12:.0f} TFLOP/s peak",
                 fontsize=10)
    fig.tight_layout()
    return fig


def latest_results(path=RESULTS_DIR) -> dict:
    """The newest bench JSON under `path` (by file name), or `recorded_figures()` when there
    is none. Its "source" says which."""
    docs = load_bench_results(path)
    if docs:
        doc = docs[-1]
        doc.setdefault("source", f"benchmarks/results/{doc.get('file', '?')}")
        return doc
    return recorded_figures()


def plot_bench_file(path=RESULTS_DIR, **kwargs):
    """The bars for the newest bench JSON under `path`, or for `recorded_figures()` when
    there is none (the figure's title names the GPU and date)."""
    return plot_bench_bars(latest_results(path), **kwargs)


def page_size_speeds(data, *, workload_prefix: str = "D64") -> dict:
    """{kernel: {page_size: ms}} for the decode rows of one workload family at several page
    sizes: bench rows named "<prefix>", "<prefix>-p64", ... (the bench's default page size
    is 16), or recorded rows labelled "..., page N"."""
    import re  # noqa: PLC0415

    out: dict = {}
    for r in records(data, kind="decode"):
        name = r["workload"] or ""
        if not name.startswith(workload_prefix) or "floor" in r["label"]:
            continue
        label_page = re.search(r"page (\d+)", r["label"])
        name_page = re.fullmatch(re.escape(workload_prefix) + r"(?:-p(\d+))?", name)
        if label_page:
            kernel, page = r["label"][: label_page.start()].rstrip(", "), int(label_page.group(1))
        elif name_page:
            kernel, page = r["label"], int(name_page.group(1) or 16)
        else:
            continue
        out.setdefault(kernel, {})[page] = r["time_ms"]
    return {k: v for k, v in out.items() if len(v) > 1}
