"""The roofline of one benchmark run: where each kernel sits between memory and arithmetic.

A kernel cannot finish before its memory has delivered the bytes it needs, nor before its
arithmetic units have done the floating-point operations it needs. With the arithmetic
intensity I = FLOP / byte, the best rate it can reach is

    attainable FLOP/s = min(peak FLOP/s of the units it runs on, I x memory bandwidth)

Two choices keep the picture honest:
* the memory roof is the device-to-device copy rate measured in the same run: a yardstick,
  not a ceiling (a copy reads and writes; a kernel that only reads can edge past it);
* each kernel gets the roof of the units its arithmetic can use. The course's kernels do
  fp32 multiply-adds on CUDA cores, so their roof is the CUDA-core FP32 peak; only kernels
  that use tensor cores are held against a tensor-core peak.

Each record's FLOPs and bytes come from its workload (`costs.workload_cost`).
"""
from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from .bench_plots import copy_bandwidth, describe, records
from .costs import workload_cost

# -- which units a kernel's arithmetic runs on, and their peak rates -------------------------

UNITS = {
    "cuda-fp32": "CUDA cores, FP32",
    "tensor-fp16": "tensor cores, FP16",
    "tensor-3xtf32": "tensor cores, 3xTF32",
}

# Kernel name -> the units its arithmetic can use, first match wins. The course's kernels
# (and FlashInfer's CUDA-core decode) do fp32 FMAs on CUDA cores. torch SDPA (its flash and
# memory-efficient backends), FlexAttention (Triton's tl.dot) and FlashInfer's tensor-core
# path multiply on tensor cores: fp16 MMAs on fp16 data; on fp32 data the memory-efficient
# backend splits each product into three TF32 MMAs (CUTLASS's 3xTF32, fp32 accuracy).
_KERNEL_UNITS = (
    (re.compile(r"paged-decode|prefill-(naive|tiled)|^course |^guide's"), "cuda"),
    (re.compile(r"flashinfer.*(tensor|\btc\b)", re.I), "tensor"),
    (re.compile(r"flashinfer", re.I), "cuda"),
    (re.compile(r"sdpa|flex", re.I), "tensor"),
)

# The package's decode plan picks its kernel ("simt" or "tensor_core") and the bench records
# the choice beside the kernel's name, which does not say it.
_CHOICE_UNITS = {"simt": "cuda", "tensor_core": "tensor"}


def kernel_units(kernel: str, dtype: str, choice: str | None = None) -> str | None:
    """The key in UNITS whose peak bounds `kernel` on `dtype` data; None when unknown.
    choice: the record's "kernel_choice", when it has one, decides over the name."""
    units = _CHOICE_UNITS.get(choice) or next(
        (units for pattern, units in _KERNEL_UNITS if pattern.search(kernel)), None)
    if units == "cuda":
        return "cuda-fp32"
    if units == "tensor":
        return {"float16": "tensor-fp16", "bfloat16": "tensor-fp16",
                "float32": "tensor-3xtf32"}.get(dtype)
    return None


# Datasheet peaks, dense (no sparsity), FLOP/s. H100 SXM and H200 are the same GH100 chip:
# FP32 = 132 SMs x 128 lanes x 2 FLOP x 1.98 GHz = 66.9 TFLOP/s. 3xTF32 takes three TF32
# MMAs per product, so it runs at a third of the TF32 rate.
_GH100_SXM = {"cuda-fp32": 66.9e12, "tensor-fp16": 989.4e12, "tensor-tf32": 494.7e12}
_DATASHEETS = (
    (("H100", "PCIe"), {"cuda-fp32": 51.2e12, "tensor-fp16": 756.5e12, "tensor-tf32": 378.0e12}),
    (("H100",), _GH100_SXM),
    (("H200",), _GH100_SXM),
    (("A100",), {"cuda-fp32": 19.5e12, "tensor-fp16": 312.0e12, "tensor-tf32": 156.0e12}),
)


def peak_flops(gpu: str) -> dict:
    """{units: datasheet peak FLOP/s} for a GPU name; {} for a GPU not in the table."""
    for needles, peaks in _DATASHEETS:
        if all(n.lower() in (gpu or "").lower() for n in needles):
            return {"cuda-fp32": peaks["cuda-fp32"], "tensor-fp16": peaks["tensor-fp16"],
                    "tensor-3xtf32": peaks["tensor-tf32"] / 3}
    return {}


# -- the points and the picture -----------------------------------------------------------

def roofline_points(data, *, kind: str | None = None, workload=None) -> list[dict]:
    """One point per timed record of a bench document: {"kernel", "workload", "units",
    "intensity" (FLOP/byte), "flops_per_s" (achieved), "roof" (attainable FLOP/s for its
    units at its intensity; None for unknown units or GPU)}. `workload`: a name or a list."""
    wanted = {workload} if isinstance(workload, str) else set(workload) if workload else None
    bandwidth = copy_bandwidth(data)
    peaks = peak_flops(data.get("gpu", "") if isinstance(data, dict) else "")
    out = []
    for r in records(data, kind=kind):
        if wanted is not None and r["workload"] not in wanted:
            continue
        cost = workload_cost(r)
        if cost is None:
            continue
        units = kernel_units(r["kernel"], cost.dtype, r.get("kernel_choice"))
        roof = None
        if units in peaks and bandwidth:
            roof = min(peaks[units], cost.intensity * bandwidth)
        out.append({"kernel": r["kernel"], "workload": r["workload"], "units": units,
                    "intensity": cost.intensity, "flops_per_s": cost.flops / (r["time_ms"] * 1e-3),
                    "roof": roof})
    return out


_UNIT_STYLE = {"cuda-fp32": ("#c0392b", "--"), "tensor-fp16": ("#1f4e99", "-."),
               "tensor-3xtf32": ("#7d3c98", ":")}
_MARKERS = "osD^v<>pXh"


def plot_roofline(data, *, kind: str | None = None, workload=None,
                  bandwidth: float | None = None, title: str | None = None):
    """Log-log roofline of a bench document: the memory roof at the run's copy rate, a
    compute roof for each kind of unit the plotted kernels use (labelled, datasheet peaks),
    and a point per kernel and workload (colour: kernel, marker: workload)."""
    points = roofline_points(data, kind=kind, workload=workload)
    if not points:
        raise ValueError(f"data: no record with a known workload shape (kind={kind!r}, "
                         f"workload={workload!r})")
    bandwidth = bandwidth or copy_bandwidth(data)
    if not bandwidth:
        raise ValueError("data: has no copy_bandwidth_GBps; pass bandwidth= (bytes/s)")
    peaks = peak_flops(data.get("gpu", "") if isinstance(data, dict) else "")
    used = [u for u in UNITS if any(p["units"] == u for p in points) and u in peaks]
    ridges = [peaks[u] / bandwidth for u in used]
    lo = min(p["intensity"] for p in points) / 4
    hi = max([p["intensity"] for p in points] + ridges) * 4
    x = np.logspace(np.log10(lo), np.log10(hi), 300)

    fig, ax = plt.subplots(figsize=(10, 5))
    x_mem = x[x <= max(ridges)] if ridges else x
    ax.loglog(x_mem, x_mem * bandwidth, color="black", lw=1.5, gid="roof:memory",
              label=f"memory: copy rate of this run, {bandwidth / 1e12:.2f} TB/s (a yardstick)")
    for u in used:
        color, ls = _UNIT_STYLE[u]
        ridge = peaks[u] / bandwidth
        ax.loglog([ridge, hi], [peaks[u], peaks[u]], color=color, ls=ls, lw=1.5, gid=f"roof:{u}",
                  label=f"{UNITS[u]}: peak {peaks[u] / 1e12:.0f} TFLOP/s (datasheet)")
    # One colour (and legend entry) per kernel and units: where the decode plan picks SIMT
    # for one workload and tensor cores for another, its two picks read as two kernels.
    series = list(dict.fromkeys((p["kernel"], p["units"]) for p in points))
    workloads = list(dict.fromkeys(p["workload"] for p in points))
    for i, p in enumerate(points):
        ax.loglog(p["intensity"], p["flops_per_s"], ls="none",
                  marker=_MARKERS[workloads.index(p["workload"]) % len(_MARKERS)],
                  color=f"C{series.index((p['kernel'], p['units'])) % 10}", ms=7, alpha=0.85,
                  markeredgecolor="black", markeredgewidth=0.5, gid=f"point:{i}")
    roofs = ax.legend(loc="upper left", fontsize=7, title="roofs", title_fontsize=7)
    ax.add_artist(roofs)
    handles = [Line2D([], [], ls="none", marker="o", color=f"C{i % 10}", markeredgecolor="black",
                      markeredgewidth=0.5, label=_series_label(k, u, points))
               for i, (k, u) in enumerate(series)]
    handles += [Line2D([], [], ls="none", marker=_MARKERS[i % len(_MARKERS)], color="white",
                       markeredgecolor="black", label=f"workload {w}")
                for i, w in enumerate(workloads)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
              title="kernel [units its arithmetic can use]", title_fontsize=7, frameon=False)
    if not peaks:
        ax.text(0.5, 0.02, "no datasheet peak known for this GPU: only the memory roof is drawn",
                transform=ax.transAxes, ha="center", fontsize=8, color="#555")
    top = max([p["flops_per_s"] for p in points] + [peaks[u] for u in used]
              + [min(x[-1] * bandwidth, 1e12)])
    ax.set_ylim(min(p["flops_per_s"] for p in points) / 6, top * 6)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (FLOP per byte the workload must move)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(title or f"Roofline, {describe(data)}", fontsize=10)
    fig.tight_layout()
    return fig


def _series_label(kernel: str, units: str | None, points) -> str:
    """`kernel [units]`; a kernel drawn with more than one kind of units also names the
    workloads of this entry (the plan's pick differs between them)."""
    label = f"{kernel} [{UNITS.get(units, 'units unknown')}]"
    if len({p["units"] for p in points if p["kernel"] == kernel}) == 1:
        return label
    on = dict.fromkeys(p["workload"] for p in points
                       if p["kernel"] == kernel and p["units"] == units)
    return f"{label} on {', '.join(on)}"
