"""The README's decode and compressed-pages tables, figure by figure, against the JSON files they
name: each number written is the file's value rounded to the places written (a table once read
0.563 for 0.5625, 0.214 for 0.2135, 0.310 / 0.319 for 0.3095 / 0.3185)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from tests.readme_figures import agree, readme_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DECODE = "2026-12-04_H200_session13_bench.json"      # the decode table's check
QUANT = "2026-12-04_H200_session13_quant.json"        # the compressed table's

# the decode table's rows (by the start of their first cell) and the bench workloads in them
DECODE_ROWS = {
    "D64 (64 seqs": ("D64",), "D64, page 64 / page 128": ("D64-p64", "D64-p128"),
    "8 x 32k, 32/32": ("8x32k",), "256 x 128": ("256x128",), "D64 32/32, head_dim 64": ("D64-d64",),
    "D64 GQA 32/8": ("D64-gqa4",), "D64 GQA 64/8": ("D64-gqa8", "D64-gqa8-p64"),
    "D64 MQA 16/1": ("D64-mqa16",), "8 x 32k, 32/8": ("8x32k-gqa4",),
    "1 x 32k, 32/8": ("1x32k-gqa4",), "D64 32/8, head_dim 256": ("D64-gqa4-d256",),
}
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _check(where: str, cell: str, values: list[float], bad: list[str]):
    found = NUMBER.findall(cell)
    assert len(found) <= len(values), f"{where}: {cell!r} has more figures than {values}"
    bad += [f"{where}: {w} written, {v} in the JSON" for w, v in zip(found, values)
            if not agree(w, v)]


def test_the_decode_table_matches_its_json():
    data = json.loads((RESULTS / DECODE).read_text())
    copy = data["copy_bandwidth_GBps"] * 1e9
    by = {(r["workload"], r["kernel"]): r for r in data["results"] if "ms" in r}
    rows = readme_table("| workload (fp16, page 16, head_dim 128 unless noted)")
    bad: list[str] = []
    seen = set()
    for cells in rows:
        key = next((k for k in DECODE_ROWS if cells[0].startswith(k)), None)
        if key is None:
            continue
        seen.add(key)
        wls = DECODE_ROWS[key]
        ours = [by[(w, "paged-decode")] for w in wls]
        _check(f"{key} floor", cells[1], [r["bytes"] / copy * 1e3 for r in ours], bad)
        _check(f"{key} ours", cells[2], [r["ms"] for r in ours] + [r["pct_copy"] for r in ours],
               bad)
        fi = {}
        for col, kernel in ((3, "flashinfer-cuda-cores"), (4, "flashinfer-tensor-cores")):
            if not cells[col].startswith("fails"):
                _check(f"{key} {kernel}", cells[col], [by[(w, kernel)]["ms"] for w in wls], bad)
            for w in wls:
                if (w, kernel) in by:
                    fi[w] = min(fi.get(w, float("inf")), by[(w, kernel)]["ms"])
        _check(f"{key} ratio", cells[5], [r["ms"] / fi[w] for r, w in zip(ours, wls)], bad)
    assert seen == set(DECODE_ROWS), f"rows not found: {set(DECODE_ROWS) - seen}"
    assert not bad, "\n".join(bad)


def test_the_compressed_table_matches_its_json():
    data = json.loads((RESULTS / QUANT).read_text())
    res = {(r["name"], r["kv_dtype"], r["scheme"]): r["results"] for r in data["rows"]}
    kinds = {"fp16": ("float16", None), "int8, static": ("int8", "static"),
             "int8, per token": ("int8", "per_token"), "fp8, static": ("fp8_e4m3", "static"),
             "fp8, per token": ("fp8_e4m3", "per_token")}
    bad: list[str] = []
    for cells in readme_table("| pages | D64 32/32: ms, % copy, x fp16"):
        if cells[0] not in kinds:
            continue
        for col, name in ((1, "D64 MHA 32/32"), (2, "D64 GQA 32/8")):
            r = res[(name, *kinds[cells[0]])]["ours"]
            # ms, then % copy and x fp16 (the fp16 row's ratio is written "1")
            values = [r["median_ms"], 100 * r["copy_rate_fraction"], r["vs_fp16"]]
            _check(f"{cells[0]} {name}", cells[col], values, bad)
    assert not bad, "\n".join(bad)
