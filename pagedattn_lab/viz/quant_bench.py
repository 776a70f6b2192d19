"""The compressed-page decode benchmark's results (`python -m pagedattn_lab.bench.quant`): its
JSON files under `benchmarks/results/` ({"meta": ..., "rows": [...]}, one row per workload,
cache format and scale scheme, with "ours" and any baseline timed in the same process),
loaded and flattened for a lesson's table."""
from __future__ import annotations

import json
from pathlib import Path

from .bench_plots import RESULTS_DIR


def _is_quant_doc(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("rows"), list) and "meta" in data


def load_quant_results(name: str, path=RESULTS_DIR) -> dict | None:
    """The quant JSON `name` under `path` when there is one, else the newest (by file name)
    quant JSON there, else None (an install without the checkout's benchmarks/). Its
    "source" says which file."""
    path = Path(path)
    files = [path / name] if (path / name).is_file() else []
    files += sorted(path.glob("*quant*.json"), reverse=True) if path.is_dir() else []
    for f in files:
        with open(f) as fh:
            data = json.load(fh)
        if _is_quant_doc(data):
            data["source"] = f"benchmarks/results/{f.name}"
            return data
    return None


def quant_rows(doc: dict, *, baseline: str | None = None) -> list[dict]:
    """One record per row of a quant document: {"workload", "kv_dtype" ("float16", "int8",
    "fp8_e4m3"), "scheme" (None for fp16), "ms" (ours), "kernel" (the one the plan ran),
    "of_copy", "vs_fp16" (ours / ours on fp16 pages of the same workload), "baseline_ms"
    (`baseline`'s time, e.g. "flashinfer-cuda-cores", when given and timed, else None)}."""
    out = []
    for row in doc["rows"]:
        ours = row.get("results", {}).get("ours")
        if not ours or ours.get("median_ms") is None:
            continue
        other = row["results"].get(baseline) if baseline else None
        out.append({"workload": row["name"], "kv_dtype": row["kv_dtype"],
                    "scheme": row.get("scheme"), "ms": ours["median_ms"],
                    "kernel": ours.get("kernel"), "of_copy": ours.get("copy_rate_fraction"),
                    "vs_fp16": ours.get("vs_fp16"),
                    "baseline_ms": other.get("median_ms") if other else None})
    return out
