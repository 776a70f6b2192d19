"""The measurement behind the multi-head kernel choice (`decode_choice.mha_kernel`):
`benchmarks/mha_choice.py`'s JSON, both kernels timed on the same pages per head size and
shape ({"copy_rate", "l2_flush", "rows": [{"name", "head_dim", "batch", "tokens", "best",
"tc_over_simt", ...}]})."""
from __future__ import annotations

from .bench_plots import RESULTS_DIR, load_results_json

MHA_CHOICE_FILE = "2026-12-04_H200_session14_mha_choice_write.json"


def load_mha_choice(name: str = MHA_CHOICE_FILE, path=RESULTS_DIR) -> dict | None:
    """The measurement `name` under `path` (bench_plots.load_results_json)."""
    return load_results_json(name, path)


def mha_choice_grid(doc: dict) -> tuple[list[str], list[int], dict]:
    """(shapes in the file's order, head sizes ascending, {(shape, head_dim): row})."""
    rows = doc["rows"]
    shapes = list(dict.fromkeys(r["name"] for r in rows))
    head_dims = sorted({int(r["head_dim"]) for r in rows})
    return shapes, head_dims, {(r["name"], int(r["head_dim"])): r for r in rows}
