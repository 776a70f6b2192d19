"""The prefill benchmark's results (`python -m pagedattn_lab.bench.prefill`, one
`<date>_<gpu>_prefill.json` per run under benchmarks/results/) as TFLOP/s per workload, and a
bar chart of them (lesson 10)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from .bench_plots import RESULTS_DIR

PREFILL_GLOB = "*_prefill.json"


def load_prefill_results(path=RESULTS_DIR) -> dict:
    """The newest prefill JSON under `path` (a file or a folder), with "file" added.
    Raises FileNotFoundError when there is none (a fresh clone has the committed one)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob(PREFILL_GLOB))
    if not files:
        raise FileNotFoundError(f"path: no {PREFILL_GLOB} under {path}")
    doc = json.loads(files[-1].read_text(encoding="utf-8"))
    doc["file"] = files[-1].name
    return doc


def tflops_by_workload(doc: dict) -> dict[str, dict[str, float]]:
    """{workload name: {implementation: median TFLOP/s}}; failed entries are left out."""
    return {row["name"]: {label: entry["tflops"] for label, entry in row["results"].items()
                          if "tflops" in entry}
            for row in doc["rows"]}


def plot_tflops_bars(bars: list[tuple[str, float]], *, title: str, target: float | None = None,
                     target_label: str = "target"):
    """Horizontal bars of TFLOP/s, in the given order, each annotated with its value; an
    optional dashed line at `target`. Bars carry gids "bar:<label>". Returns the Figure."""
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.45 * len(bars)))
    for i, (label, value) in enumerate(bars):
        ax.barh(i, value, color="#2f7ed8" if label.startswith("ours") else "#999999",
                gid=f"bar:{label}")
        ax.text(value, i, f" {value:.0f}", va="center", fontsize=8)
    if target is not None:
        ax.axvline(target, color="#c0392b", ls="--", lw=1.2, label=f"{target_label}: {target:.0f}")
        ax.legend(fontsize=8, loc="center right")
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([label for label, _ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("TFLOP/s (higher is better)")
    ax.set_title(title, fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig
