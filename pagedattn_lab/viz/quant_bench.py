"""The compressed-KV decode benchmark's results (`python -m pagedattn_lab.bench.quant`, one
`<date>_<gpu>_quant.json` per run under benchmarks/results/) as a table and a bar chart of
decode time per cache format (lesson 11)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from .bench_plots import RESULTS_DIR

QUANT_GLOB = "*_quant.json"


def load_quant_results(path=RESULTS_DIR) -> dict:
    """The newest compressed-KV bench JSON under `path` (a file or a folder), with "file"
    added. Raises FileNotFoundError when there is none (a fresh clone has the committed one)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob(QUANT_GLOB))
    if not files:
        raise FileNotFoundError(f"path: no {QUANT_GLOB} under {path}")
    doc = json.loads(files[-1].read_text(encoding="utf-8"))
    doc["file"] = files[-1].name
    return doc


def _label(row) -> str:
    return row["kv_dtype"] if row["scheme"] is None else f"{row['kv_dtype']} {row['scheme']}"


def quant_table(doc: dict) -> str:
    """One line per (workload, format, scheme): each implementation's median ms, and for
    ours the share of the copy rate (on the bytes that format moves) and the ratio to fp16."""
    lines = []
    for row in doc["rows"]:
        cells = []
        for name, r in row["results"].items():
            if "median_ms" not in r:
                cells.append(f"{name} failed")
                continue
            cell = f"{name} {r['median_ms']:.3f} ms"
            if "copy_rate_fraction" in r:
                cell += f" ({r['copy_rate_fraction']:.0%} of copy"
                cell += f", x{r['vs_fp16']:.2f})" if r.get("vs_fp16") else ")"
            cells.append(cell)
        lines.append(f"{row['name']:14s} {_label(row):19s} " + " | ".join(cells))
    return "\n".join(lines)


def plot_quant_bars(doc: dict, implementations=("ours", "ours-simt", "flashinfer-cuda-cores")):
    """Decode time per cache format, one panel per workload, one bar per implementation that
    ran; the fp16 time of ours x 0.55 (the issue's target) dashed. Returns the Figure."""
    names = list(dict.fromkeys(r["name"] for r in doc["rows"]))
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in doc["rows"] if r["name"] == name]
        labels = [_label(r) for r in rows]
        shown = [i for i in implementations if any("median_ms" in r["results"].get(i, {})
                                                    for r in rows)]
        width = 0.8 / max(1, len(shown))
        for j, impl in enumerate(shown):
            ms = [r["results"].get(impl, {}).get("median_ms", 0.0) for r in rows]
            ax.bar([i + j * width for i in range(len(rows))], ms, width, label=impl,
                   gid=f"bar:{name}:{impl}")
        fp16 = rows[0]["results"].get("ours", {}).get("median_ms")
        if fp16:
            ax.axhline(0.55 * fp16, ls="--", color="gray", label="0.55 x fp16 (target)")
        ax.set_xticks([i + width * (len(shown) - 1) / 2 for i in range(len(rows))], labels,
                      rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("decode time (ms)")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7)
    meta = doc.get("meta", {})
    fig.suptitle(f"{meta.get('gpu', '?')}, {meta.get('date', '?')} ({doc.get('file', '')})",
                 fontsize=9)
    fig.tight_layout()
    return fig
